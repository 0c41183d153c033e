"""Privacy benchmark: Custos's analyzer against plain Presidio on labelled customer-service messages.

The dataset is generated, seeded, with presidio-evaluator's sentence faker (Faker underneath) from CRM
templates written here, with varied formats (spaced and dashed card numbers, international and national
phone numbers, lower-case names). Every name comes from presidio-evaluator's FakeNameGenerator records,
never from Faker's name lists, which Custos's PERSON recognizer uses (``custos.privacy.names``); recall on
names none of whose words is in those lists is reported separately. A small hand-written set of
real-looking messages is scored beside it.

Matching rules: a labelled value is found when predicted spans cover at least half of its characters; it
leaks when it appears verbatim in the text the model would get (ignoring case, spaces and punctuation); a
predicted span is correct when it overlaps a labelled one. Types are not compared: a card number masked as
a bank number is still masked.

The red-team set (``custos.bench.redteam``: obfuscated identifiers, six European languages, negatives) is
scored in the same run, by default on its held-out half, with stricter rules (see ``score_redteam``): a
value leaks when any one of its letters or digits reaches the model.
"""

from __future__ import annotations

import random
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from custos.bench import redteam
from custos.bench.redteam import RedTeamSample
from custos.privacy.errors import UnsupportedLanguage
from custos.privacy.names import faker_name_lists

#: Goals the benchmark reports next to its measurements.
STRUCTURED = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "CUSTOMER_ID",
    "ACCOUNT_ID",
    "ORDER_ID",
)
GOALS = {
    "structured_recall": 0.995,
    "structured_precision": 0.95,
    "structured_leak_rate": 0.0,
    "person_recall": 0.90,
    "overall_f2": 0.90,
    "f2_margin_over_presidio": 0.15,
    "p50_ms_500_chars": 10.0,
}

TEMPLATES = (
    "Hi, this is {{person}}. My card {{credit_card}} was charged twice for order #{{order_id}}.",
    "hello, {{person}} here - please update my email to {{email}} and call me on {{phone}}.",
    "Customer no. {{customer_id}}: {{person}} reports the parcel never reached {{address}}.",
    "My account number is {{account_id}} and my IBAN is {{iban}}, please refund there.",
    "I am {{person}}, born {{dob}}, and I need to verify my identity. SSN {{ssn}}.",
    "Ticket {{ticket_id}} - {{person}} cannot log in from {{ip_address}} since yesterday.",
    "please cancel order {{order_id}}, wrong size. thanks, {{person}}",
    "Can you send the invoice for order no. {{order_id}} to {{email}}? Regards, {{person}}",
    "My new address is {{address}}. Phone {{phone}}. Customer ID {{customer_id}}.",
    "{{person}} called from {{phone}} about a declined card ending {{credit_card}}.",
    "The charge on {{credit_card}} is not mine!! my name is {{person}}, acct {{account_id}}",
    "Date of birth {{dob}}, name {{person}}, email {{email}} - please reopen case {{ticket_id}}.",
    "Hi team, {{person}} and {{other_person}} share account {{account_id}}; add {{email}} as contact.",
    "Refund to IBAN {{iban}} please, reference {{ticket_id}}. Kind regards {{person}}",
    "ship it to {{address}} instead, my number is {{phone}}",
    "I (SSN {{ssn}}) want to dispute the fee. Contact me at {{email}} or {{phone}}.",
    "Why was member {{customer_id}} charged? The card is {{credit_card}}, holder {{person}}.",
    "Our login alerts show {{ip_address}}; user {{person}}, customer number {{customer_id}}.",
    "Dear support, order #{{order_id}} to {{address}} is late. {{person}}, {{phone}}",
    "dob: {{dob}}; ssn: {{ssn}}; name: {{person}}; mail: {{email}}",
)


@dataclass(frozen=True)
class Label:
    """A labelled value in a message."""

    entity_type: str
    start: int
    end: int


@dataclass(frozen=True)
class Sample:
    """One message and its labels."""

    text: str
    labels: tuple[Label, ...]


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    digits = [int(d) for d in prefix] + [rng.randrange(10) for _ in range(length - len(prefix) - 1)]
    total = 0
    for index, digit in enumerate(reversed(digits)):
        doubled = digit * 2 if index % 2 == 0 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16)])
    number = _luhn_complete(prefix, length, rng)
    style = rng.choice(["spaced", "dashed", "plain"])
    if length == 15:
        groups = [number[:4], number[4:10], number[10:]]
    else:
        groups = [number[i : i + 4] for i in range(0, 16, 4)]
    return {"spaced": " ".join(groups), "dashed": "-".join(groups), "plain": number}[style]


def _phone(rng: random.Random) -> str:
    import phonenumbers

    region = rng.choice(["US", "US", "GB", "DE", "CA", "IN"])
    kind = rng.choice([phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE])
    example = phonenumbers.example_number_for_type(region, kind)
    assert example is not None
    for _ in range(20):
        national = str(example.national_number)
        tail = "".join(str(rng.randrange(10)) for _ in range(4))
        number = phonenumbers.parse(f"+{example.country_code}{national[:-4]}{tail}", None)
        if phonenumbers.is_valid_number(number):
            break
    fmt = rng.choice(
        [phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164]
        + ([phonenumbers.PhoneNumberFormat.NATIONAL] if region in ("US", "CA") else [])
    )
    return phonenumbers.format_number(number, fmt)


def _dob(rng: random.Random) -> str:
    year, month, day = rng.randrange(1940, 2005), rng.randrange(1, 13), rng.randrange(1, 29)
    months = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
              "October", "November", "December"]  # fmt: skip
    return rng.choice(
        [
            f"{month:02d}/{day:02d}/{year}",
            f"{year}-{month:02d}-{day:02d}",
            f"{day} {months[month - 1]} {year}",
            f"{months[month - 1]} {day}, {year}",
        ]
    )


def _reference(rng: random.Random, prefix: str) -> str:
    return rng.choice(
        [
            f"{prefix}-{rng.randrange(10000, 9999999)}",
            str(rng.randrange(10000, 99999999)),
            f"{prefix}{rng.randrange(100000, 999999)}",
        ]
    )


def generate_dataset(count: int, *, seed: int = 7) -> list[Sample]:
    """Generate ``count`` labelled messages, reproducibly for a seed."""
    from faker import Faker
    from faker.providers import BaseProvider
    from presidio_evaluator.data_generator import PresidioSentenceFaker
    from presidio_evaluator.data_generator.faker_extensions.datasets import load_fake_person_df

    rng = random.Random(seed)
    records = load_fake_person_df()
    record_names = sorted(set(records["first_name"] + " " + records["last_name"]))
    fake = Faker("en_US")
    fake.seed_instance(seed)

    class CrmProvider(BaseProvider):
        """Values Faker lacks, in the formats CRM text shows."""

        def credit_card(self) -> str:
            return _card(rng)

        def phone(self) -> str:
            return _phone(rng)

        def dob(self) -> str:
            return _dob(rng)

        def customer_id(self) -> str:
            return _reference(rng, "C")

        def account_id(self) -> str:
            return _reference(rng, "AC")

        def order_id(self) -> str:
            return _reference(rng, "ORD")

        def ticket_id(self) -> str:
            return _reference(rng, "T")

        def iban(self) -> str:
            return str(Faker(rng.choice(["de_DE", "en_GB", "fr_FR", "nl_NL"])).iban())

        def ip_address(self) -> str:
            return str(fake.ipv4_public() if rng.random() < 0.8 else fake.ipv6())

        def email(self) -> str:
            return str(fake.free_email() if rng.random() < 0.5 else fake.company_email())

        def other_person(self) -> str:
            # A second name in one message: also from the records, never from Faker's name lists (which
            # the PERSON recognizer uses).
            return str(rng.choice(record_names))

        def ssn(self) -> str:
            return str(fake.ssn())

        def address(self) -> str:
            street = f"{fake.building_number()} {fake.street_name()}"
            return rng.choice([street, f"{street}, {fake.city()}", f"{street} {fake.secondary_address()}"])

    # presidio-evaluator draws from the global random generators while loading its name records (before
    # its own seeding), so they are seeded here first.
    import numpy

    random.seed(seed)
    numpy.random.seed(seed)
    Faker.seed(seed)
    mapping = {
        "person": "PERSON",
        "other_person": "PERSON",
        "credit_card": "CREDIT_CARD",
        "phone": "PHONE_NUMBER",
        "dob": "DATE_OF_BIRTH",
        "customer_id": "CUSTOMER_ID",
        "account_id": "ACCOUNT_ID",
        "order_id": "ORDER_ID",
        "ticket_id": "TICKET_ID",
        "iban": "IBAN_CODE",
        "address": "STREET_ADDRESS",
        "email": "EMAIL_ADDRESS",
        "ssn": "US_SSN",
        "ip_address": "IP_ADDRESS",
    }
    faker = PresidioSentenceFaker(
        "en_US",
        lower_case_ratio=0.1,
        sentence_templates=list(TEMPLATES),
        entity_providers=[CrmProvider],
        entity_type_mapping=mapping,
        provider_aliases=[("name", "person")],
        random_seed=seed,
    )
    random.seed(seed)
    samples = []
    for generated in _quiet(lambda: faker.generate_new_fake_sentences(count)):
        labels = tuple(
            Label(span.entity_type, span.start_position, span.end_position) for span in generated.spans
        )
        samples.append(Sample(generated.full_text, labels))
    return samples


def _quiet(fn: Callable[[], Any]) -> Any:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn()


def parse_markup(text: str) -> Sample:
    """Parse ``[[TYPE:value]]`` markup into a sample."""
    labels: list[Label] = []
    out: list[str] = []
    cursor = 0
    length = 0
    for match in re.finditer(r"\[\[([A-Z_]+):(.+?)\]\]", text):
        out.append(text[cursor : match.start()])
        length += match.start() - cursor
        value = match.group(2)
        labels.append(Label(match.group(1), length, length + len(value)))
        out.append(value)
        length += len(value)
        cursor = match.end()
    out.append(text[cursor:])
    return Sample("".join(out), tuple(labels))


#: Real-looking messages written by hand (names, numbers and addresses are invented).
HAND_WRITTEN = tuple(
    parse_markup(t)
    for t in (
        "Hi there, I ordered a jacket last week (order [[ORDER_ID:88213-B]]) and it still hasn't arrived. "
        "Can you check? Thanks, [[PERSON:Priya Raman]]",
        "This is the third time I'm writing!!! My card [[CREDIT_CARD:4539 1488 0343 6467]] got charged "
        "twice. Call me: [[PHONE_NUMBER:(415) 555-0132]]",
        "hey its [[PERSON:tom becker]], can u change the delivery address to "
        "[[STREET_ADDRESS:27 Elm Street]] pls",
        "Good morning, I'm writing on behalf of my mother [[PERSON:Margaret O'Connell]] (customer no. "
        "[[CUSTOMER_ID:557120]]). She can't access her account.",
        "Please refund to my IBAN [[IBAN_CODE:DE44 5001 0517 5407 3249 31]], the account holder is "
        "[[PERSON:Jonas Weber]].",
        "My email changed, it's now [[EMAIL_ADDRESS:k.nakamura@mailbox.org]] - the old one is closed.",
        "Re ticket [[TICKET_ID:INC-20931]]: the login from [[IP_ADDRESS:203.0.113.77]] was not me!",
        "I was born on [[DATE_OF_BIRTH:03/14/1979]], and your form says I'm under 18?? Fix it please.",
        "Hello, [[PERSON:Ana Lucia Ferreira]] here. Account [[ACCOUNT_ID:AC-774102]] shows a late fee I "
        "never agreed to.",
        "Can someone call me back on [[PHONE_NUMBER:+44 7700 900461]]? It's about order "
        "[[ORDER_ID:ORD-55120]]. Cheers, [[PERSON:Oliver Grant]]",
        "The SSN on file ([[US_SSN:512-43-9087]]) is wrong, mine ends differently. - "
        "[[PERSON:Dana Whitfield]]",
        "Thanks for the quick help yesterday! Everything works now.",
        "We moved to [[STREET_ADDRESS:1420 Maple Avenue]], [[LOCATION:Portland]]. Please update the billing "
        "address for customer [[CUSTOMER_ID:C-88412]].",
        "Is there a discount for annual plans? Our team has 12 seats.",
        "please stop emailing [[EMAIL_ADDRESS:old.account@example.com]], I unsubscribed twice. "
        "[[PERSON:R. Alvarez]]",
    )
)


@dataclass
class Tally:
    """Counts for one detector on one dataset."""

    labels: Counter[str] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)
    leaked: Counter[str] = field(default_factory=Counter)
    predicted: Counter[str] = field(default_factory=Counter)
    correct: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    #: CPU time of the analysing thread per message (``time.thread_time``): less moved by other processes.
    cpu_latencies: list[float] = field(default_factory=list)
    #: Labels and found labels by group (see ``score``'s ``group``), e.g. PERSON names absent from name lists.
    group_labels: Counter[str] = field(default_factory=Counter)
    group_found: Counter[str] = field(default_factory=Counter)


Span = tuple[str, int, int]
Analyze = Callable[[str], Sequence[Span]]


def _squash(text: str) -> str:
    return re.sub(r"[\W_]+", "", text).casefold()


def score(
    samples: Iterable[Sample], analyze: Analyze, *, group: Callable[[str, str], str | None] | None = None
) -> Tally:
    """Run ``analyze`` over the samples and count by the matching rules of the module docstring.

    ``group(entity_type, value)`` may name a group for a label; recall is then also counted per group.
    """
    tally = Tally()
    for sample in samples:
        started, cpu_started = time.perf_counter(), time.thread_time()
        spans = list(analyze(sample.text))
        tally.cpu_latencies.append(time.thread_time() - cpu_started)
        tally.latencies.append(time.perf_counter() - started)
        covered = [False] * len(sample.text)
        pieces, cursor = [], 0
        for _, start, end in sorted(spans, key=lambda s: s[1]):
            for index in range(start, end):
                covered[index] = True
            if start >= cursor:
                pieces.append(sample.text[cursor:start])
                pieces.append("<X>")
                cursor = end
        pieces.append(sample.text[cursor:])
        model_input = _squash("".join(pieces))
        for label in sample.labels:
            tally.labels[label.entity_type] += 1
            hit = sum(covered[label.start : label.end]) * 2 >= label.end - label.start
            if hit:
                tally.found[label.entity_type] += 1
            name = group(label.entity_type, sample.text[label.start : label.end]) if group else None
            if name is not None:
                tally.group_labels[name] += 1
                tally.group_found[name] += int(hit)
            value = _squash(sample.text[label.start : label.end])
            if value and value in model_input:
                tally.leaked[label.entity_type] += 1
        for entity_type, start, end in spans:
            tally.predicted[entity_type] += 1
            if any(start < label.end and label.start < end for label in sample.labels):
                tally.correct[entity_type] += 1
    return tally


def f_beta(precision: float, recall: float, beta: float = 2.0) -> float:
    """F-beta; 0 when both are 0."""
    if precision == 0 and recall == 0:
        return 0.0
    return (1 + beta**2) * precision * recall / (beta**2 * precision + recall)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def summary(tally: Tally) -> dict[str, Any]:
    """Overall and per-type precision, recall, F2, leak rate and latency."""
    labels, found = sum(tally.labels.values()), sum(tally.found.values())
    predicted, correct = sum(tally.predicted.values()), sum(tally.correct.values())
    precision = _ratio(correct, predicted) or 0.0
    recall = _ratio(found, labels) or 0.0
    latencies = sorted(tally.latencies)
    structured_labels = sum(tally.labels[t] for t in STRUCTURED)
    per_type = {
        t: {
            "recall": _ratio(tally.found[t], tally.labels[t]),
            "precision": _ratio(tally.correct[t], tally.predicted[t]),
            "leak_rate": _ratio(tally.leaked[t], tally.labels[t]),
            "labels": tally.labels[t],
        }
        for t in sorted(set(tally.labels) | set(tally.predicted))
    }
    return {
        "precision": precision,
        "recall": recall,
        "f2": f_beta(precision, recall),
        "leak_rate": _ratio(sum(tally.leaked.values()), labels) or 0.0,
        "structured_recall": _ratio(sum(tally.found[t] for t in STRUCTURED), structured_labels),
        "structured_precision": _ratio(
            sum(tally.correct[t] for t in STRUCTURED), sum(tally.predicted[t] for t in STRUCTURED)
        ),
        "structured_leak_rate": _ratio(sum(tally.leaked[t] for t in STRUCTURED), structured_labels),
        "per_type": per_type,
        "groups": {
            name: {"labels": count, "recall": _ratio(tally.group_found[name], count)}
            for name, count in sorted(tally.group_labels.items())
        },
        "p50_ms": 1000 * statistics.median(latencies) if latencies else 0.0,
        "cpu_p50_ms": 1000 * statistics.median(tally.cpu_latencies) if tally.cpu_latencies else 0.0,
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0,
        "messages_per_s": len(latencies) / sum(latencies) if latencies else 0.0,
    }


def custos_analyze(pseudonymizer: Any) -> Analyze:
    """Custos: the pseudonymizer's whole analysis (language check, thresholds, allow list, merging)."""

    def analyze(text: str) -> list[Span]:
        analysis = pseudonymizer.analyze([text])
        return [(s.winner.entity_type, s.start, s.end) for s in analysis.spans[0]]

    return analyze


def presidio_analyze(analyzer: Any) -> Analyze:
    """Plain Presidio: every default recognizer, default threshold."""

    def analyze(text: str) -> list[Span]:
        return [(r.entity_type, r.start, r.end) for r in analyzer.analyze(text=text, language="en")]

    return analyze


def build_plain_presidio(spacy_model: str) -> Any:
    """``AnalyzerEngine`` defaults on the same installed spaCy pipeline (offline)."""
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    from custos.privacy.analyzer import OfflineSpacyNlpEngine, make_tldextract_offline, silence_text_logging

    make_tldextract_offline()
    silence_text_logging()
    provider = NlpEngineProvider(
        nlp_engines=(OfflineSpacyNlpEngine,),
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": spacy_model}],
        },
    )
    return AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])


def long_messages(samples: Sequence[Sample], *, chars: int = 500, count: int = 100) -> list[Sample]:
    """Messages of about ``chars`` characters, made by joining generated ones (for the latency goal)."""
    out: list[Sample] = []
    index = 0
    while len(out) < count and samples:
        text, labels = "", list[Label]()
        while len(text) < chars:
            sample = samples[index % len(samples)]
            index += 1
            offset = len(text) + (1 if text else 0)
            text = f"{text} {sample.text}" if text else sample.text
            labels.extend(Label(lb.entity_type, lb.start + offset, lb.end + offset) for lb in sample.labels)
        out.append(Sample(text, tuple(labels)))
    return out


def stream_cost(
    pseudonymizer: Any, texts: Sequence[str], *, window: int, token_chars: int = 4
) -> dict[str, Any]:
    """What the streaming guard's hold-back costs: tokens fed before the first text leaves, and guard time.

    Answers are fed in pieces of ``token_chars`` characters (about one token of the bundled model).
    """
    from custos.privacy.guard import Detection, OutputGuard
    from custos.privacy.pseudonymize import PlaceholderMap
    from custos.privacy.streaming import StreamRestorer

    def detect(text: str) -> list[Detection]:
        return [
            Detection(s.winner.entity_type, s.start, s.end, float(s.winner.score), "analyzer")
            for s in pseudonymizer.detect(text)
        ]

    guard = OutputGuard(pseudonymizer.entities, detect)
    first_tokens: list[int] = []
    guard_seconds = 0.0
    for text in texts:
        restorer = StreamRestorer(PlaceholderMap(), guard=guard, reidentify=False, ner_window_chars=window)
        first = None
        started = time.perf_counter()
        for index in range(0, len(text), token_chars):
            if restorer.feed(text[index : index + token_chars]) and first is None:
                first = index // token_chars + 1
        restorer.flush()
        guard_seconds += time.perf_counter() - started
        first_tokens.append(first if first is not None else -(-len(text) // token_chars))
    return {
        "window": window,
        "first_release_token_p50": statistics.median(first_tokens),
        "first_release_token_max": max(first_tokens),
        "guard_ms_per_answer": 1000 * guard_seconds / max(1, len(texts)),
    }


def _fill(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


#: Long messages shaped to make patterns slow (they made some quadratic before), and the benign baseline.
ADVERSARIAL_LONG: Mapping[str, Callable[[int], str]] = {
    "repeated hyphenated words": lambda n: _fill("well-known ", n),
    "label then spaces": lambda n: "order" + " " * (n - 5),
    "spelled separators": lambda n: _fill("a at b dot ", n),
    "digit words": lambda n: _fill("one two ", n),
}


def benign_long(size: int) -> str:
    """Generated messages joined to ``size`` characters: ordinary text with personal data in it."""
    return _fill(" ".join(sample.text for sample in generate_dataset(120, seed=3)) + " ", size)


def _thread_cpu(fn: Callable[[], object]) -> float:
    started = time.thread_time()
    fn()
    return time.thread_time() - started


def long_message_cost(pseudonymizer: Any, *, chars: int = 32_000, rounds: int = 2) -> dict[str, Any]:
    """CPU time of the analysing thread for adversarial long messages beside a benign one, and the ratios.

    Best of ``rounds``, the shapes interleaved; the goal is a ratio of at most 1.5 for every shape.
    """
    benign = benign_long(chars)
    texts = {"benign": benign, **{name: make(chars) for name, make in ADVERSARIAL_LONG.items()}}
    pseudonymizer.analyze([benign])  # warm
    best: dict[str, float] = {}
    for _ in range(max(1, rounds)):
        for name, text in texts.items():
            cost = _thread_cpu(lambda text=text: pseudonymizer.analyze([text]))  # type: ignore[misc]
            best[name] = min(best.get(name, cost), cost)
    return {
        "chars": chars,
        "cpu_s": best,
        "ratio_to_benign": {name: best[name] / best["benign"] for name in ADVERSARIAL_LONG},
    }


def stall_cost(pseudonymizer: Any, short: str, *, chars: int = 32_000, rounds: int = 3) -> dict[str, Any]:
    """Latency of a ~500-character call alone and while a long pathological message is analysed.

    Both through the server's privacy stage (``PrivacyStage.run``: batcher, turns at the analyzer, slices),
    and, as the baseline, with one lock around each call's whole analysis (how calls were served before).
    The short call is sent a moment after the long one started; medians of ``rounds``.
    """
    import threading

    from custos.flows.privacy_step import PrivacyStage

    stage = PrivacyStage(pseudonymizer)
    long = ADVERSARIAL_LONG["spelled separators"](chars)
    lock = threading.Lock()

    def locked(texts: list[str]) -> None:
        with lock:
            pseudonymizer.analyze(texts)

    def served(texts: list[str]) -> None:
        stage.run(texts, "bench")

    def elapsed(fn: Callable[[list[str]], None], texts: list[str]) -> float:
        started = time.perf_counter()
        fn(texts)
        return time.perf_counter() - started

    for _ in range(2):
        served([short])  # warm
    solo = statistics.median(elapsed(served, [short]) for _ in range(7))
    long_alone = elapsed(served, [long])
    results: dict[str, Any] = {"chars": chars, "solo_ms": 1000 * solo, "long_alone_ms": 1000 * long_alone}
    for name, fn in (("served", served), ("one_lock", locked)):
        latencies = []
        for _ in range(max(1, rounds if name == "served" else 1)):
            worker = threading.Thread(target=fn, args=([long],))
            worker.start()
            time.sleep(min(0.3, long_alone / 4))
            latencies.append(elapsed(fn, [short]))
            worker.join()
        results[f"{name}_ms"] = 1000 * statistics.median(latencies)
    results["ratio"] = results["served_ms"] / results["solo_ms"]
    results["bound_ms"] = 2 * results["solo_ms"] + 50
    return results


def person_listing_group(lists: Any) -> Callable[[str, str], str | None]:
    """Group PERSON labels by whether any word of the name is in the recognizer's name lists."""

    def group(entity_type: str, value: str) -> str | None:
        if entity_type != "PERSON":
            return None
        words = re.findall(r"[^\W\d_]+", value.casefold())
        listed = any(word in lists.first or word in lists.last for word in words)
        return "PERSON, a word in the name lists" if listed else "PERSON, no word in the name lists"

    return group


# ---------------------------------------------------------------------------------------------------------
# The red-team set.

#: Goals of issue 14 on the red-team set (ratios in one run).
REDTEAM_GOALS = {
    "verbatim_leak_rate": 0.03,
    "precision": 0.95,
    "person_recall_per_language": 0.85,
    "location_recall_en": 0.85,
}


@dataclass
class RedTeamTally:
    """Counts of one detector on red-team messages.

    Keys: ``"all"``, ``"kind:<kind>"``, ``"lang:<language>"``, ``"type:<entity type>"`` and
    ``"person:<language>"`` (PERSON values of that language).
    """

    values: Counter[str] = field(default_factory=Counter)
    leaked: Counter[str] = field(default_factory=Counter)
    verbatim: Counter[str] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)
    #: Messages, refused messages, negative messages with a false positive; keyed as above.
    messages: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    flagged_negatives: Counter[str] = field(default_factory=Counter)
    #: Masked regions (overlapping detections merged) and those that overlap a gold value.
    predicted: Counter[str] = field(default_factory=Counter)
    correct: Counter[str] = field(default_factory=Counter)


def _merged(spans: Iterable[Span]) -> list[tuple[int, int]]:
    """The masked regions: overlapping detections merged into one."""
    regions: list[tuple[int, int]] = []
    for start, end in sorted((s, e) for _, s, e in spans if e > s):
        if regions and start < regions[-1][1]:
            regions[-1] = (regions[-1][0], max(regions[-1][1], end))
        else:
            regions.append((start, end))
    return regions


def model_input(text: str, spans: Iterable[Span]) -> str:
    """The text as the model would get it: every masked region replaced by one placeholder."""
    pieces, cursor = [], 0
    for start, end in _merged(spans):
        pieces.append(text[cursor:start])
        pieces.append("<X>")
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


def leaked_characters(text: str, start: int, end: int, covered: Sequence[bool]) -> int:
    """How many letters and digits of ``text[start:end]`` are not covered by a masked region."""
    return sum(1 for index in range(start, end) if text[index].isalnum() and not covered[index])


def score_redteam(samples: Iterable[RedTeamSample], analyze: Analyze) -> RedTeamTally:
    """Run ``analyze`` over red-team messages and count by these rules.

    * A gold value **leaks** when any of its letters or digits (``str.isalnum``) lies outside every span the
      detector masked: that character reaches the model. Separators, spaces and zero-width characters
      carry nothing and are not counted. The **leak rate** is leaked values / gold values.
    * It leaks **verbatim** when its letters and digits, case-folded, appear as one run in the text the model
      gets (masked regions replaced by a placeholder): the whole value went through (the issue's goal).
    * It is **found** (recall) when masked spans cover at least half of its characters (the generated set's
      rule).
    * **Precision**: overlapping detections are merged into masked regions; a region is correct when it
      overlaps a gold value. Entity types are not compared (masked is masked). A negative message is
      *flagged* when anything in it is masked.
    * A message the detector refuses (``UnsupportedLanguage``: Custos's language policy) is counted in
      ``refused``; its values and detections are left out of that detector's leak, recall and precision, so
      refusing is never scored as protecting. Plain Presidio refuses nothing.
    """
    tally = RedTeamTally()
    for sample in samples:
        keys = ("all", f"lang:{sample.language}", f"kind:{sample.kind}")
        for key in keys:
            tally.messages[key] += 1
        try:
            spans = list(analyze(sample.text))
        except UnsupportedLanguage:
            for key in keys:
                tally.refused[key] += 1
            continue
        covered = [False] * len(sample.text)
        regions = _merged(spans)
        for start, end in regions:
            for index in range(start, end):
                covered[index] = True
        squashed_input = _squash(model_input(sample.text, spans))
        for gold in sample.spans:
            value_keys = ["all", f"lang:{sample.language}", f"kind:{gold.kind}", f"type:{gold.entity_type}"]
            if gold.entity_type == "PERSON":
                value_keys.append(f"person:{sample.language}")
            if gold.entity_type == "LOCATION":
                value_keys.append(f"location:{sample.language}")
            leaked = leaked_characters(sample.text, gold.start, gold.end, covered) > 0
            value = _squash(sample.text[gold.start : gold.end])
            verbatim = bool(value) and value in squashed_input
            found = sum(covered[gold.start : gold.end]) * 2 >= gold.end - gold.start
            for key in value_keys:
                tally.values[key] += 1
                tally.leaked[key] += int(leaked)
                tally.verbatim[key] += int(verbatim)
                tally.found[key] += int(found)
        for start, end in regions:
            right = any(start < gold.end and gold.start < end for gold in sample.spans)
            for key in ("all", f"lang:{sample.language}"):
                tally.predicted[key] += 1
                tally.correct[key] += int(right)
        if sample.negative and regions:
            for key in keys:
                tally.flagged_negatives[key] += 1
    return tally


def redteam_summary(tally: RedTeamTally) -> dict[str, Any]:
    """Per key: values, leak and verbatim-leak rate, recall, precision, messages, refused, flagged."""
    keys = sorted(set(tally.values) | set(tally.messages) | set(tally.predicted))
    return {
        key: {
            "values": tally.values[key],
            "leak_rate": _ratio(tally.leaked[key], tally.values[key]),
            "verbatim_leak_rate": _ratio(tally.verbatim[key], tally.values[key]),
            "recall": _ratio(tally.found[key], tally.values[key]),
            "precision": _ratio(tally.correct[key], tally.predicted[key]),
            "messages": tally.messages[key],
            "refused": tally.refused[key],
            "flagged_negatives": tally.flagged_negatives[key],
        }
        for key in keys
    }


def run_redteam(
    detectors: Mapping[str, Analyze], *, half: str = "heldout", count: int | None = None
) -> dict[str, Any]:
    """Score each detector on the first ``count`` messages of a red-team half (all kinds, balanced)."""
    samples = redteam.generate(half, count)
    results: dict[str, Any] = {"half": half, "count": len(samples), "seed": redteam.HALVES[half].seed}
    for name, analyze in detectors.items():
        results[name] = redteam_summary(score_redteam(samples, analyze))
    return results


def run(
    pseudonymizer: Any,
    presidio: Any,
    *,
    count: int,
    seed: int = 7,
    long_count: int = 100,
    redteam_half: str = "heldout",
    redteam_count: int | None = None,
    long_chars: int = 32_000,
    long_rounds: int = 2,
) -> dict[str, Any]:
    """Score both detectors on the generated, hand-written, ~500-character and red-team messages.

    ``redteam_count`` messages of the red-team half ``redteam_half`` are scored (the whole half by default;
    0 leaves the red-team set out). Messages of ``long_chars`` characters measure the adversarial/benign
    cost ratio and how long a ~500-character call waits behind one (``long_rounds`` rounds; 0: neither).
    """
    import os

    load_before = os.getloadavg()
    generated = generate_dataset(count, seed=seed)
    group = person_listing_group(faker_name_lists())
    detectors = {"custos": custos_analyze(pseudonymizer), "presidio": presidio_analyze(presidio)}
    results: dict[str, Any] = {"count": len(generated), "seed": seed}
    for name, analyze in detectors.items():
        results[name] = {
            "generated": summary(score(generated, analyze, group=group)),
            "hand_written": summary(score(HAND_WRITTEN, analyze)),
            "long": summary(score(long_messages(generated, count=long_count), analyze)),
        }
    longs = [[sample.text] for sample in long_messages(generated, count=long_count)]
    started = time.perf_counter()
    for index in range(0, len(longs), 8):
        pseudonymizer.analyze_many(longs[index : index + 8])
    results["batched"] = {
        "batch_calls": 8,
        "ms_per_message": 1000 * (time.perf_counter() - started) / max(1, len(longs)),
    }
    if long_rounds:
        results["long_message"] = long_message_cost(pseudonymizer, chars=long_chars, rounds=long_rounds)
        short = long_messages(generated, count=1)[0].text
        results["stall"] = stall_cost(pseudonymizer, short, chars=long_chars, rounds=long_rounds + 1)
    if redteam_count != 0:
        results["redteam"] = run_redteam(detectors, half=redteam_half, count=redteam_count)
    answers = [sample.text for sample in HAND_WRITTEN]
    results["load_average"] = {"before": load_before[0], "after": os.getloadavg()[0], "cpus": os.cpu_count()}
    results["streaming"] = [stream_cost(pseudonymizer, answers, window=w) for w in (0, 120)]
    return results


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(results: dict[str, Any]) -> str:
    """Markdown tables: goals beside measurements, per-type rows, latency."""
    custos, presidio = results["custos"], results["presidio"]
    gen_c, gen_p = custos["generated"], presidio["generated"]
    lines = [
        f"Generated set: {results['count']} messages (seed {results['seed']}); hand-written set: "
        f"{len(HAND_WRITTEN)} messages.",
        "",
        "| goal | target | Custos | plain Presidio | met |",
        "|---|---|---|---|---|",
    ]
    checks = [
        ("structured recall", "≥ 0.995", "structured_recall", lambda v: v >= GOALS["structured_recall"]),
        (
            "structured precision",
            "≥ 0.95",
            "structured_precision",
            lambda v: v >= GOALS["structured_precision"],
        ),
        ("structured leak rate", "0", "structured_leak_rate", lambda v: v <= 0.0),
        ("overall F2", "≥ 0.90", "f2", lambda v: v >= GOALS["overall_f2"]),
    ]
    for label, target, key, ok in checks:
        value = gen_c[key]
        lines.append(
            f"| {label} | {target} | {_fmt(value)} | {_fmt(gen_p[key])} | "
            f"{'yes' if value is not None and ok(value) else 'NO'} |"
        )
    person = gen_c["per_type"].get("PERSON", {}).get("recall")
    lines.append(
        f"| PERSON recall | ≥ 0.90 | {_fmt(person)} | "
        f"{_fmt(gen_p['per_type'].get('PERSON', {}).get('recall'))} "
        f"| {'yes' if person is not None and person >= GOALS['person_recall'] else 'NO'} |"
    )
    margin = gen_c["f2"] - gen_p["f2"]
    lines.append(
        f"| F2 margin over Presidio | ≥ 0.15 | {margin:+.3f} | - | "
        f"{'yes' if margin >= GOALS['f2_margin_over_presidio'] else 'NO'} |"
    )
    p50 = custos["long"]["p50_ms"]
    lines.append(
        f"| analysis p50, ~500-char message | ≤ 10 ms | {p50:.1f} ms | {presidio['long']['p50_ms']:.1f} ms | "
        f"{'yes' if p50 <= GOALS['p50_ms_500_chars'] else 'NO'} |"
    )
    for name, item in gen_c.get("groups", {}).items():
        other = gen_p.get("groups", {}).get(name, {})
        lines.append(
            f"| recall, {name} ({item['labels']} labels) | - | {_fmt(item['recall'])} | "
            f"{_fmt(other.get('recall'))} | - |"
        )
    for set_name in ("generated", "hand_written"):
        c, p = custos[set_name], presidio[set_name]
        lines += [
            "",
            f"**{set_name.replace('_', '-')} set** — overall: Custos P {_fmt(c['precision'])} R "
            f"{_fmt(c['recall'])} F2 {_fmt(c['f2'])} leak {_fmt(c['leak_rate'])}; Presidio P "
            f"{_fmt(p['precision'])} R {_fmt(p['recall'])} F2 {_fmt(p['f2'])} leak {_fmt(p['leak_rate'])}",
            "",
            "| entity type | labels | Custos recall | Custos precision | Custos leak | Presidio recall | "
            "Presidio precision | Presidio leak |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for entity_type in sorted(set(c["per_type"]) | set(p["per_type"])):
            ct, pt = c["per_type"].get(entity_type, {}), p["per_type"].get(entity_type, {})
            labels = ct.get("labels") or pt.get("labels") or 0
            lines.append(
                f"| {entity_type} | {labels} | {_fmt(ct.get('recall'))} | {_fmt(ct.get('precision'))} | "
                f"{_fmt(ct.get('leak_rate'))} | {_fmt(pt.get('recall'))} | {_fmt(pt.get('precision'))} | "
                f"{_fmt(pt.get('leak_rate'))} |"
            )
    lines += ["", "| latency (one thread) | Custos | plain Presidio | ratio |", "|---|---|---|---|"]
    for set_name, label in (("generated", "generated messages"), ("long", "~500-char messages")):
        c, p = custos[set_name], presidio[set_name]
        for key, unit in (
            ("p50_ms", "ms"),
            ("cpu_p50_ms", "ms"),
            ("p99_ms", "ms"),
            ("messages_per_s", "msg/s"),
        ):
            name = {
                "p50_ms": "p50",
                "cpu_p50_ms": "p50, CPU time of the thread",
                "p99_ms": "p99",
                "messages_per_s": "throughput",
            }[key]
            ratio = c[key] / p[key] if p[key] else 0.0
            lines.append(f"| {label} {name} | {c[key]:.1f} {unit} | {p[key]:.1f} {unit} | {ratio:.2f} |")
    if "batched" in results:
        lines.append(
            f"| ~500-char messages, {results['batched']['batch_calls']} calls per batch (analyze_many) | "
            f"{results['batched']['ms_per_message']:.1f} ms/msg | - | - |"
        )
    if "load_average" in results:
        load = results["load_average"]
        lines += [
            "",
            f"Load average (1 min) {load['before']:.1f} before and {load['after']:.1f} after the run, "
            f"on {load['cpus']} CPUs.",
        ]
    if "long_message" in results:
        cost = results["long_message"]
        lines += [
            "",
            f"| {cost['chars']:,}-character message (CPU time of the thread, best of rounds) | Custos | "
            "vs benign | goal ≤ 1.5 |",
            "|---|---|---|---|",
            f"| benign (generated messages joined) | {cost['cpu_s']['benign']:.2f} s | 1.00 | - |",
        ]
        for name, ratio in cost["ratio_to_benign"].items():
            lines.append(
                f"| {name} | {cost['cpu_s'][name]:.2f} s | {ratio:.2f} | {'yes' if ratio <= 1.5 else 'NO'} |"
            )
    if "stall" in results:
        stall = results["stall"]
        met = stall["served_ms"] <= stall["bound_ms"]
        lines += [
            "",
            f"| ~500-char call while a {stall['chars']:,}-char pathological one is analysed | latency | "
            "vs alone |",
            "|---|---|---|",
            f"| alone (median) | {stall['solo_ms']:.0f} ms | 1.00 |",
            f"| concurrent, privacy stage (median) | {stall['served_ms']:.0f} ms | {stall['ratio']:.2f} "
            f"(goal ≤ 2 x alone + 50 ms = {stall['bound_ms']:.0f} ms: {'yes' if met else 'NO'}) |",
            f"| concurrent, one lock per call (before) | {stall['one_lock_ms']:.0f} ms | "
            f"{stall['one_lock_ms'] / stall['solo_ms']:.2f} |",
            f"| the long message alone | {stall['long_alone_ms']:.0f} ms | - |",
        ]
    lines += [
        "",
        "| streaming guard (hand-written answers, 4-char tokens) | first text after (p50 / max tokens) | "
        "guard time per answer |",
        "|---|---|---|",
    ]
    for item in results.get("streaming", []):
        lines.append(
            f"| NER window {item['window']} chars | {item['first_release_token_p50']:.0f} / "
            f"{item['first_release_token_max']} | {item['guard_ms_per_answer']:.1f} ms |"
        )
    if "redteam" in results:
        lines += ["", render_redteam(results["redteam"])]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def render_redteam(results: Mapping[str, Any]) -> str:
    """Markdown tables of the red-team run: goals, per kind, per language, per entity type."""
    custos, presidio = results["custos"], results["presidio"]
    total_c, total_p = custos["all"], presidio["all"]
    lines = [
        f"Red-team set, {results['half']} half: {results['count']} messages (seed {results['seed']}), "
        f"{total_p['values']} labelled values. Leak: any letter or digit of a value reaches the model; "
        "verbatim: all of it does. Values of messages Custos refused are left out of its rates.",
        "",
        "| red-team goal | target | Custos | plain Presidio | met |",
        "|---|---|---|---|---|",
    ]
    verbatim = total_c["verbatim_leak_rate"]
    precision = total_c["precision"]
    goals = [
        ("values leaked verbatim", "≤ 3 %", _pct(verbatim), _pct(total_p["verbatim_leak_rate"]),
         verbatim is not None and verbatim <= REDTEAM_GOALS["verbatim_leak_rate"]),
        ("values leaked (any character)", "≤ plain Presidio", _pct(total_c["leak_rate"]),
         _pct(total_p["leak_rate"]), (total_c["leak_rate"] or 0.0) <= (total_p["leak_rate"] or 0.0)),
        ("precision", "≥ 0.95", _fmt(precision), _fmt(total_p["precision"]),
         precision is not None and precision >= REDTEAM_GOALS["precision"]),
        ("messages refused", "0", str(total_c["refused"]), str(total_p["refused"]), total_c["refused"] == 0),
    ]  # fmt: skip
    for label, target, c_value, p_value, met in goals:
        lines.append(f"| {label} | {target} | {c_value} | {p_value} | {'yes' if met else 'NO'} |")
    for language in redteam.LANGUAGES:
        if language == "en":
            continue
        recall = custos.get(f"person:{language}", {}).get("recall")
        other = presidio.get(f"person:{language}", {}).get("recall")
        met = recall is not None and recall >= REDTEAM_GOALS["person_recall_per_language"]
        verdict = "yes" if met else "NO"
        lines.append(f"| PERSON recall, {language} | ≥ 0.85 | {_fmt(recall)} | {_fmt(other)} | {verdict} |")
    recall = custos.get("location:en", {}).get("recall")
    met = recall is not None and recall >= REDTEAM_GOALS["location_recall_en"]
    lines.append(
        f"| LOCATION recall, en | ≥ 0.85 | {_fmt(recall)} | "
        f"{_fmt(presidio.get('location:en', {}).get('recall'))} | {'yes' if met else 'NO'} |"
    )
    lines += [
        "",
        "| kind | values | Custos leak | Presidio leak | Custos verbatim | Presidio verbatim "
        "| Custos recall | Presidio recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    kinds = [*redteam.KINDS, "plain"]
    for kind in kinds:
        c, p = custos.get(f"kind:{kind}"), presidio.get(f"kind:{kind}")
        if c is None or p is None or kind.startswith("negative_") or not p["values"]:
            continue
        lines.append(
            f"| {kind} | {p['values']} | {_pct(c['leak_rate'])} | {_pct(p['leak_rate'])} | "
            f"{_pct(c['verbatim_leak_rate'])} | {_pct(p['verbatim_leak_rate'])} | {_fmt(c['recall'])} | "
            f"{_fmt(p['recall'])} |"
        )
    lines += [
        "",
        "| negatives | messages | Custos: messages with anything masked "
        "| Presidio: messages with anything masked |",
        "|---|---|---|---|",
    ]
    for kind in redteam.KINDS:
        c, p = custos.get(f"kind:{kind}"), presidio.get(f"kind:{kind}")
        if c is None or p is None or not kind.startswith("negative_"):
            continue
        lines.append(f"| {kind} | {p['messages']} | {c['flagged_negatives']} | {p['flagged_negatives']} |")
    lines += [
        "",
        "| language | messages | Custos refused | values | Custos leak | Presidio leak | Custos verbatim | "
        "Presidio verbatim | Custos precision | Presidio precision | Custos PERSON recall | "
        "Presidio PERSON recall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for language in redteam.LANGUAGES:
        c, p = custos.get(f"lang:{language}"), presidio.get(f"lang:{language}")
        if c is None or p is None:
            continue
        cp, pp = custos.get(f"person:{language}", {}), presidio.get(f"person:{language}", {})
        lines.append(
            f"| {language} | {p['messages']} | {c['refused']} | {p['values']} | {_pct(c['leak_rate'])} | "
            f"{_pct(p['leak_rate'])} | {_pct(c['verbatim_leak_rate'])} | {_pct(p['verbatim_leak_rate'])} | "
            f"{_fmt(c['precision'])} | {_fmt(p['precision'])} | {_fmt(cp.get('recall'))} | "
            f"{_fmt(pp.get('recall'))} |"
        )
    lines += [
        "",
        "| entity type | values | Custos leak | Presidio leak | Custos recall | Presidio recall |",
        "|---|---|---|---|---|---|",
    ]
    for entity_type in redteam.ENTITY_TYPES:
        c, p = custos.get(f"type:{entity_type}"), presidio.get(f"type:{entity_type}")
        if c is None or p is None:
            continue
        lines.append(
            f"| {entity_type} | {p['values']} | {_pct(c['leak_rate'])} | {_pct(p['leak_rate'])} | "
            f"{_fmt(c['recall'])} | {_fmt(p['recall'])} |"
        )
    return "\n".join(lines)
