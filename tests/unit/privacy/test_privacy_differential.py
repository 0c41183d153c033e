"""Never weaker than plain Presidio: what plain Presidio masks where it is right, Custos masks too.

Both detectors run on the same text: Custos as the default settings build it (``custos bench privacy`` does
the same), plain Presidio as ``AnalyzerEngine`` defaults on the same spaCy pipeline. For every gold value,
each letter or digit that plain Presidio masks with a type compatible with the value's type (``COMPATIBLE``:
the same type, or the Presidio recognizer Custos replaced, e.g. a URL mask over an identifier inside the URL,
a DATE_TIME mask over a birth date) must be masked by Custos too, and Custos must not refuse a message plain
Presidio serves. What plain Presidio masks outside gold values (its false positives) is not copied.

Texts: the tuning half of the red-team generator (``custos.bench.redteam``), drawn by hypothesis per kind
with a neutral opening and closing around it, and the hand-written messages below. Kinds and messages that
fail today are marked ``xfail(strict=True)`` with the reason, so each flips to a failure once it is fixed and
the mark must go.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from custos.bench import privacy as benchmark
from custos.bench import redteam
from custos.privacy.errors import UnsupportedLanguage

Span = tuple[str, int, int]

_NER = frozenset({"PERSON", "LOCATION"})
#: Gold type -> plain Presidio types whose mask over it counts as right. spaCy's small model mixes up PERSON
#: and LOCATION; either mask protects the value, and Custos has both on. URL and DATE_TIME are off in Custos
#: (noisy on CRM text): its own recognizers must cover what they caught when right, the identifiers a URL
#: carries and birth dates. Types only one side detects (NRP, ORGANIZATION, US_DRIVER_LICENSE, UK_NHS, ...)
#: are not compared.
COMPATIBLE: dict[str, frozenset[str]] = {
    "PERSON": _NER | {"URL"},
    "LOCATION": _NER,
    "STREET_ADDRESS": _NER,
    "EMAIL_ADDRESS": frozenset({"EMAIL_ADDRESS", "URL"}),
    "PHONE_NUMBER": frozenset({"PHONE_NUMBER"}),
    "CREDIT_CARD": frozenset({"CREDIT_CARD"}),
    "IBAN_CODE": frozenset({"IBAN_CODE"}),
    "US_SSN": frozenset({"US_SSN"}),
    "IP_ADDRESS": frozenset({"IP_ADDRESS"}),
    "DATE_OF_BIRTH": frozenset({"DATE_TIME"}),
    "CUSTOMER_ID": frozenset({"URL"}),
    "ACCOUNT_ID": frozenset({"URL"}),
    "ORDER_ID": frozenset({"URL"}),
    "TICKET_ID": frozenset({"URL"}),
}

#: (plain Presidio type, gold type) -> why Custos deliberately does not copy that mask. None so far: with
#: gold values as the judge, Presidio's false positives fall outside them and are never compared.
DELIBERATE_EXCEPTIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Gold:
    entity_type: str
    start: int
    end: int


@dataclass(frozen=True)
class Detectors:
    custos: Callable[[str], Sequence[Span]]
    presidio: Callable[[str], Sequence[Span]]


@pytest.fixture(scope="module")
def detectors() -> Detectors:
    from custos.privacy.analyzer import build_analyzer
    from custos.server.app import build_pseudonymizer
    from custos.server.settings import Settings
    from custos.testing.privacy import no_network

    settings_ = Settings()
    with no_network([]):
        analyzer = build_analyzer(
            spacy_model=settings_.spacy_model,
            entities=settings_.pii_entities,
            phone_regions=settings_.pii_phone_regions,
            deny_lists=settings_.pii_deny_lists,
            crm_references=settings_.pii_crm_references,
        )
        presidio = benchmark.build_plain_presidio(settings_.spacy_model)
    return Detectors(
        custos=benchmark.custos_analyze(build_pseudonymizer(settings_, analyzer)),
        presidio=benchmark.presidio_analyze(presidio),
    )


@dataclass(frozen=True)
class Comparison:
    """Where Custos is weaker than plain Presidio on one text."""

    #: Custos refused the text although plain Presidio masks a gold value in it.
    refused: bool
    #: One line per gold value of which plain Presidio masks, rightly, letters or digits Custos leaves.
    problems: tuple[str, ...]


def compare(text: str, gold: Sequence[Gold], detectors: Detectors) -> Comparison:
    """Compare Custos with plain Presidio on ``text`` by the rules of the module docstring."""
    presidio = list(detectors.presidio(text))
    try:
        custos = list(detectors.custos(text))
    except UnsupportedLanguage:
        rightly = [
            span
            for span in presidio
            for value in gold
            if span[0] in COMPATIBLE.get(value.entity_type, ())
            and span[1] < value.end
            and value.start < span[2]
        ]
        return Comparison(refused=bool(rightly), problems=())
    covered = [False] * len(text)
    for _, start, end in custos:
        for index in range(start, end):
            covered[index] = True
    problems = []
    for value in gold:
        right = COMPATIBLE.get(value.entity_type, frozenset())
        missed: dict[str, list[int]] = {}
        for entity_type, start, end in presidio:
            if entity_type not in right or (entity_type, value.entity_type) in DELIBERATE_EXCEPTIONS:
                continue
            for index in range(max(start, value.start), min(end, value.end)):
                if text[index].isalnum() and not covered[index]:
                    missed.setdefault(entity_type, []).append(index)
        for entity_type, indices in sorted(missed.items()):
            chars = "".join(text[i] for i in sorted(set(indices)))
            problems.append(
                f"{value.entity_type} {text[value.start : value.end]!r}: plain Presidio masks it as "
                f"{entity_type}, Custos leaves {chars!r}"
            )
    return Comparison(refused=False, problems=tuple(problems))


# ---------------------------------------------------------------------------------------------------------
# Generated text: each kind of the tuning half, drawn by hypothesis.

_OPENERS: dict[str, tuple[str, ...]] = {
    "en": ("", "Hello, ", "Good morning. ", "Quick question: "),
    "de": ("", "Hallo, ", "Guten Morgen. ", "Kurze Frage: "),
    "fr": ("", "Bonjour, ", "Bonsoir. ", "Petite question : "),
    "es": ("", "Hola, ", "Buenos días. ", "Una pregunta: "),
    "it": ("", "Ciao, ", "Buongiorno. ", "Una domanda: "),
    "pt": ("", "Olá, ", "Bom dia. ", "Uma pergunta: "),
    "nl": ("", "Hallo, ", "Goedemorgen. ", "Korte vraag: "),
}
_CLOSERS: dict[str, tuple[str, ...]] = {
    "en": ("", " Thanks!", " Best wishes.", "\nSent from my phone"),
    "de": ("", " Danke!", " Mit freundlichen Grüßen.", "\nVon meinem Handy gesendet"),
    "fr": ("", " Merci !", " Bien à vous.", "\nEnvoyé de mon téléphone"),
    "es": ("", " ¡Gracias!", " Un saludo.", "\nEnviado desde mi móvil"),
    "it": ("", " Grazie!", " Cordiali saluti.", "\nInviato dal mio telefono"),
    "pt": ("", " Obrigado!", " Com os melhores cumprimentos.", "\nEnviado do meu telemóvel"),
    "nl": ("", " Bedankt!", " Met vriendelijke groet.", "\nVerzonden vanaf mijn telefoon"),
}

#: Kinds on which Custos masks less than plain Presidio today (tuning half, examples drawn below), and why.
KNOWN_WEAKER: dict[str, str] = {
    "dob_words": 'birth dates in words ("the sixth of October 1998") are missed; Presidio has DATE_TIME',
    "lang_nl": "Dutch town names without a postcode and a lone first name as signature are missed",
    "broken_formatting": "values split by a zero-width space or a line break are cut short (e-mail domains)",
    "lang_pt": 'Portuguese birth dates ("Nasci a 23/06/2003") are missed in short, served messages',
}

#: Languages in which Custos refuses messages plain Presidio serves today, and why.
KNOWN_REFUSED: dict[str, str] = {}

_POSITIVE_KINDS = [kind for kind in redteam.KINDS if not kind.startswith("negative_")]

_HYPOTHESIS = settings(
    max_examples=10,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the first failing example is reported as is
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _param(value: str, known: dict[str, str]) -> object:
    reason = known.get(value)
    if reason is None:
        return value
    return pytest.param(value, marks=pytest.mark.xfail(strict=True, reason=reason))


def _framed(sample: redteam.RedTeamSample, opener: int, closer: int) -> tuple[str, list[Gold]]:
    """The sample's text between a neutral opening and closing of its language, and its gold values."""
    head = _OPENERS[sample.language][opener]
    text = head + sample.text + _CLOSERS[sample.language][closer]
    return text, [Gold(g.entity_type, g.start + len(head), g.end + len(head)) for g in sample.spans]


@pytest.mark.parametrize("kind", [_param(kind, KNOWN_WEAKER) for kind in _POSITIVE_KINDS])
@_HYPOTHESIS
@given(seed=st.integers(min_value=0, max_value=10**6), opener=st.integers(0, 3), closer=st.integers(0, 3))
def test_generated_text_custos_masks_what_presidio_masks_rightly(
    detectors: Detectors, kind: str, seed: int, opener: int, closer: int
) -> None:
    """Per kind; messages Custos refuses are set aside here (the refusal test below covers them)."""
    text, gold = _framed(redteam.make_sample(redteam.TUNING, kind, seed), opener, closer)
    outcome = compare(text, gold, detectors)
    assume(not outcome.refused)
    assert not outcome.problems, f"{text!r}: {list(outcome.problems)}"


@pytest.mark.parametrize("language", [_param(language, KNOWN_REFUSED) for language in redteam.LANGUAGES])
@_HYPOTHESIS
@given(data=st.data(), seed=st.integers(min_value=0, max_value=10**6))
def test_generated_text_custos_serves_what_presidio_serves(
    detectors: Detectors, language: str, data: st.DataObject, seed: int
) -> None:
    """Per language: Custos does not refuse a message in which plain Presidio masks a value."""
    kinds = [kind for kind in _POSITIVE_KINDS if language in redteam.KINDS[kind].languages]
    kind = data.draw(st.sampled_from(kinds), label="kind")
    text, gold = _framed(redteam.make_sample(redteam.TUNING, kind, seed, language=language), 0, 0)
    assert not compare(text, gold, detectors).refused, f"refused: {text!r}"


# ---------------------------------------------------------------------------------------------------------
# Hand-written messages (names, numbers and places invented), in ``[[TYPE:value]]`` markup.

HAND_WRITTEN: dict[str, str] = {
    "email_spelled_en": (
        "pls reply to [[EMAIL_ADDRESS:ottoline dot brackwater at gmail dot com]], not the old one"
    ),
    "email_bracketed_en": "Contact: [[EMAIL_ADDRESS:r.quellbrook[at]outlook[dot]com]] (work: none)",
    "email_foreign_en": (
        "Hi, I'm [[PERSON:Ysolde Farquharson]] and my address is [[EMAIL_ADDRESS:ysolde.f@laposte.fr]] - "
        "please use it for the refund."
    ),
    "phone_dots_en": "Call me at [[PHONE_NUMBER:415.555.0187]] or text me.",
    "phone_words_en": "my cell is [[PHONE_NUMBER:four one five, five five five, zero one nine two]]",
    "card_dots_en": "The card [[CREDIT_CARD:4539.1488.0343.6467]] was charged twice.",
    "iban_lower_en": "Refund to [[IBAN_CODE:de89 3704 0044 0532 0130 00]] please.",
    "ssn_spaces_en": "SSN [[US_SSN:512 43 9087]] - please fix the record.",
    "ip_en": "Login alert from [[IP_ADDRESS:203.0.113.77]] at night, not me.",
    "url_en": (
        "Your agent linked me to https://crm.example.com/customer/[[CUSTOMER_ID:4711]]?email="
        "[[EMAIL_ADDRESS:jane.roe@example.org]] - is that safe?"
    ),
    "dob_words_en": "I was born on [[DATE_OF_BIRTH:the third of March 1985]], your form says otherwise.",
    "dob_numeric_en": "Date of birth: [[DATE_OF_BIRTH:03/03/1985]]. Name: [[PERSON:Tobias Wrenfield]].",
    "person_lower_en": "hey its [[PERSON:ambrosine quillfeather]], can you change my delivery slot",
    "address_en": "Please send it to [[STREET_ADDRESS:17 Nutmeg Lane, Dorchester]] instead.",
    "de_message": (
        "Guten Tag, mein Name ist [[PERSON:Wilfried Zaunbrecher]], ich wohne in der "
        "[[STREET_ADDRESS:Amselstraße 12, 79098 Freiburg]] und bin unter [[PHONE_NUMBER:0761 3849201]] "
        "erreichbar."
    ),
    "fr_message": (
        "Bonjour, je suis [[PERSON:Églantine Marchepied]], mon adresse e-mail est "
        "[[EMAIL_ADDRESS:eglantine.marchepied@orange.fr]] et mon téléphone le "
        "[[PHONE_NUMBER:06 48 21 93 07]]."
    ),
    "es_message": (
        "Hola, me llamo [[PERSON:Anselmo Chirivella]] y vivo en [[STREET_ADDRESS:Calle de la Sal 4, 46001 "
        "Valencia]]. Mi móvil es el [[PHONE_NUMBER:612 48 93 70]]."
    ),
    "it_message": (
        "Buongiorno, sono [[PERSON:Ermete Sbrighi]], abito in [[STREET_ADDRESS:Via dei Servi 21, 50122 "
        "Firenze]], cellulare [[PHONE_NUMBER:347 482 9013]]."
    ),
    "pt_message": (
        "Bom dia, o meu nome é [[PERSON:Leocádia Fonsequinha]], moro na [[STREET_ADDRESS:Rua da Prata 88, "
        "1100-420 Lisboa]] e o telemóvel é [[PHONE_NUMBER:912 487 305]]."
    ),
    "nl_message": (
        "Goedendag, ik ben [[PERSON:Gerolt Wassenbergh]], ik woon op [[STREET_ADDRESS:Lijnbaansgracht 14, "
        "1015 GM Amsterdam]], mijn nummer is [[PHONE_NUMBER:06 4829 1037]]."
    ),
}

#: Hand-written messages on which Custos is weaker than plain Presidio today, and why.
HAND_WRITTEN_WEAKER: dict[str, str] = {
    "dob_words_en": "birth dates in words are missed; plain Presidio's DATE_TIME masks them",
}


@pytest.mark.parametrize("name", [_param(name, HAND_WRITTEN_WEAKER) for name in HAND_WRITTEN])
def test_hand_written_custos_masks_what_presidio_masks_rightly(detectors: Detectors, name: str) -> None:
    sample = benchmark.parse_markup(HAND_WRITTEN[name])
    gold = [Gold(label.entity_type, label.start, label.end) for label in sample.labels]
    outcome = compare(sample.text, gold, detectors)
    assert not outcome.refused, f"refused: {sample.text!r}"
    assert not outcome.problems, f"{sample.text!r}: {list(outcome.problems)}"


# ---------------------------------------------------------------------------------------------------------
# The comparison itself, on fixed spans (so it cannot pass by comparing nothing).


def _fixed(custos: list[Span], presidio: list[Span], *, refuse: bool = False) -> Detectors:
    def custos_fn(text: str) -> list[Span]:
        if refuse:
            raise UnsupportedLanguage("refused")
        return custos

    return Detectors(custos=custos_fn, presidio=lambda text: presidio)


def test_comparison_counts_only_compatible_masks_inside_gold_values() -> None:
    text = "Born 3 March 1985, call 555 0100 now"
    gold = [Gold("DATE_OF_BIRTH", 5, 17), Gold("PHONE_NUMBER", 24, 32)]
    presidio = [("DATE_TIME", 5, 17), ("US_DRIVER_LICENSE", 24, 32), ("PERSON", 33, 36)]
    # Custos masks the phone and nothing of the date: the date counts, the licence and "now" do not.
    problems = compare(text, gold, _fixed([("PHONE_NUMBER", 24, 32)], presidio)).problems
    assert len(problems) == 1 and "DATE_OF_BIRTH" in problems[0] and "'3March1985'" in problems[0]
    assert compare(text, gold, _fixed([("DATE_OF_BIRTH", 5, 17)], presidio)).problems == ()
    # One digit left over is enough; separators are not counted.
    assert compare(text, gold, _fixed([("DATE_OF_BIRTH", 5, 16)], presidio)).problems != ()
    pieces = [("DATE_OF_BIRTH", 5, 6), ("DATE_OF_BIRTH", 7, 17)]
    assert compare(text, gold, _fixed(pieces, presidio)).problems == ()


def test_comparison_reports_a_refusal_only_when_presidio_masks_a_value_rightly() -> None:
    text = "Mein Name ist Wilfried Zaunbrecher."
    gold = [Gold("PERSON", 14, 34)]
    assert compare(text, gold, _fixed([], [("PERSON", 14, 34)], refuse=True)).refused
    assert not compare(text, gold, _fixed([], [("NRP", 14, 22)], refuse=True)).refused
    assert not compare(text, gold, _fixed([("PERSON", 14, 34)], [("PERSON", 14, 34)])).refused
