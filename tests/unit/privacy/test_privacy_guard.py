"""Output guard and streaming restore: placeholder variants, new PII, and splits at every position."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from custos.privacy.guard import Detection, OutputGuard
from custos.privacy.pseudonymize import PlaceholderMap
from custos.privacy.streaming import StreamRestorer

_PATTERNS = {
    "EMAIL_ADDRESS": r"[\w.]+@[\w.]+\w",
    "PHONE_NUMBER": r"\+\d[\d ]{8,}\d",
    "CREDIT_CARD": r"\b(?:\d{4}[ -]?){3}\d{4}\b",
    "PERSON": r"Jane Roe|John Smith|Maria Garcia",
}


def regex_detector(text: str) -> Sequence[Detection]:
    return [
        Detection(entity_type, m.start(), m.end(), 0.9, "test-regex")
        for entity_type, pattern in _PATTERNS.items()
        for m in re.finditer(pattern, text)
    ]


@pytest.fixture
def mapping() -> PlaceholderMap:
    mapping = PlaceholderMap()
    mapping.placeholder_for("PERSON", "John Smith")
    mapping.placeholder_for("EMAIL_ADDRESS", "john@example.org")
    mapping.placeholder_for("PHONE_NUMBER", "+1 415 555 0100")
    mapping.placeholder_for("PHONE_NUMBER", "+1 415 555 0199")
    return mapping


@pytest.fixture
def guard() -> OutputGuard:
    return OutputGuard(_PATTERNS, regex_detector)


@pytest.mark.parametrize(
    ("output", "restored", "masked"),
    [
        ("Hi <PERSON_1>.", "Hi John Smith.", "Hi <PERSON_1>."),
        ("Hi <Person_1>.", "Hi John Smith.", "Hi <PERSON_1>."),
        ("Hi <PERSON 1>.", "Hi John Smith.", "Hi <PERSON_1>."),
        ("Hi < person_1 >.", "Hi John Smith.", "Hi <PERSON_1>."),
        ("Hi PERSON_1.", "Hi John Smith.", "Hi <PERSON_1>."),
        ("Hi <PERSON>.", "Hi John Smith.", "Hi <PERSON_1>."),  # one candidate
        ("Mail <email address 1>", "Mail john@example.org", "Mail <EMAIL_ADDRESS_1>"),
        ("Call <PHONE_NUMBER>", "Call <PHONE_NUMBER>", "Call <PHONE_NUMBER>"),  # two candidates
        ("Hi <PERSON_7>.", "Hi <PERSON_7>.", "Hi <PERSON_7>."),  # maps to nothing
        ("Hi <PERSON_01>.", "Hi John Smith.", "Hi <PERSON_1>."),
        ("Use <b>bold</b> and SKU_12.", "Use <b>bold</b> and SKU_12.", "Use <b>bold</b> and SKU_12."),
        (
            "You typed \u2039PERSON_1\u203a",
            "You typed \u2039PERSON_1\u203a",
            "You typed \u2039PERSON_1\u203a",
        ),
    ],
)
def test_placeholder_variants(
    guard: OutputGuard, mapping: PlaceholderMap, output: str, restored: str, masked: str
) -> None:
    assert guard.check(output, mapping, reidentify=True)[0] == restored
    assert guard.check(output, mapping, reidentify=False)[0] == masked


def test_unknown_and_ambiguous_placeholders_are_flagged(guard: OutputGuard, mapping: PlaceholderMap) -> None:
    _, report = guard.check("<PERSON_7> and <PHONE_NUMBER> and <PERSON_1>", mapping, reidentify=True)
    assert report.unknown_placeholders == 1
    assert report.ambiguous_placeholders == 1
    assert report.restored == 1


def test_new_pii_is_masked_and_counted_without_values(guard: OutputGuard, mapping: PlaceholderMap) -> None:
    text, report = guard.check(
        "Jane Roe can be reached at jane@evil.example or +44 20 7946 0958.", mapping, reidentify=True
    )
    assert text == "[PERSON] can be reached at [EMAIL_ADDRESS] or [PHONE_NUMBER]."
    assert dict(report.new_pii) == {"PERSON": 1, "EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}
    audit = repr(report.to_audit())
    for value in ("Jane", "jane@evil", "7946"):
        assert value not in audit


def test_input_values_the_model_writes_are_not_counted_as_new(
    guard: OutputGuard, mapping: PlaceholderMap
) -> None:
    text, report = guard.check("Dear John Smith,", mapping, reidentify=False)
    assert text == "Dear <PERSON_1>,"
    assert report.input_values_echoed == 1
    assert not report.new_pii
    assert guard.check("Dear john  smith,", mapping, reidentify=True)[0] == "Dear john  smith,"


STREAM_TEXTS = [
    "Dear <Person 1>, we wrote to <EMAIL_ADDRESS_1>. Call +44 20 7946 0958 or mail bob@evil.com today.",
    "Jane Roe says hi to PERSON_1 and <PERSON_3>. Card 4111 1111 1111 1111 was declined; <PERSON>.",
    "Short <PERSON_1>",
    "Maria Garcia wrote a very long sentence without any stop that goes on and on past the window "
    "with her card 4111-1111-1111-1111 and then John Smith",
]


@pytest.mark.parametrize("text", STREAM_TEXTS)
@pytest.mark.parametrize("reidentify", [True, False])
def test_stream_equals_whole_at_every_split(
    guard: OutputGuard, mapping: PlaceholderMap, text: str, reidentify: bool
) -> None:
    whole, _ = guard.check(text, mapping, reidentify=reidentify)
    for cut in range(len(text) + 1):
        restorer = StreamRestorer(mapping, guard=guard, reidentify=reidentify, ner_window_chars=40)
        out = restorer.feed(text[:cut]) + restorer.feed(text[cut:]) + restorer.flush()
        assert out == whole, cut


@pytest.mark.parametrize("text", STREAM_TEXTS)
@pytest.mark.parametrize("step", [1, 2, 3, 4, 7])
def test_stream_in_small_chunks_never_leaks(
    guard: OutputGuard, mapping: PlaceholderMap, text: str, step: int
) -> None:
    whole, _ = guard.check(text, mapping, reidentify=True)
    restorer = StreamRestorer(mapping, guard=guard, reidentify=True, ner_window_chars=40)
    sent = [restorer.feed(text[i : i + step]) for i in range(0, len(text), step)]
    sent.append(restorer.flush())
    assert "".join(sent) == whole
    for piece in sent:
        assert not re.search(r"<[A-Za-z_ ]*\d*\Z", piece), piece  # never half a placeholder


def test_stream_releases_text_before_the_end(guard: OutputGuard, mapping: PlaceholderMap) -> None:
    restorer = StreamRestorer(mapping, guard=guard, reidentify=True, ner_window_chars=40)
    first = restorer.feed("Thanks for waiting. We have ")
    assert first == "Thanks for waiting. "
    restorer2 = StreamRestorer(mapping, guard=guard, reidentify=True, ner_window_chars=0)
    assert restorer2.feed("Thanks for waiting. We have ") == "Thanks for waiting. We have "
    assert restorer2.feed("sent it to <PERS") == "sent it to "
    assert restorer2.feed("ON_1> at 4111 ") == "John Smith at "
    assert restorer2.feed("1111 1111 1111") == ""
    assert restorer2.feed(" ok ") == "[CREDIT_CARD] ok "


def test_stream_at_tiny_tokenizer_boundaries(guard: OutputGuard, mapping: PlaceholderMap) -> None:
    from custos.testing.tiny_engine import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    text = STREAM_TEXTS[0] + " " + STREAM_TEXTS[1]
    ids = tokenizer.encode(text, add_special_tokens=False)
    whole, _ = guard.check(text, mapping, reidentify=True)
    restorer = StreamRestorer(mapping, guard=guard, reidentify=True, ner_window_chars=40)
    decoded = ""
    out = []
    for index in range(len(ids)):
        now = tokenizer.decode(ids[: index + 1])
        out.append(restorer.feed(now[len(decoded) :]))
        decoded = now
    out.append(restorer.flush())
    assert decoded == text
    assert "".join(out) == whole


def test_real_analyzer_stream_never_leaks_at_any_split(pseudonymizer: object) -> None:
    from custos.privacy.pseudonymize import Pseudonymizer

    assert isinstance(pseudonymizer, Pseudonymizer)

    def detect(text: str) -> list[Detection]:
        return [
            Detection(s.winner.entity_type, s.start, s.end, float(s.winner.score), "analyzer")
            for s in pseudonymizer.detect(text)
        ]

    guard = OutputGuard(pseudonymizer.entities, detect)
    mapping = PlaceholderMap()
    mapping.placeholder_for("PERSON", "John Smith")
    text = (
        "Thanks <PERSON_1>. I spoke with Maria Garcia and she will mail maria.garcia@example.com "
        "or call +44 20 7946 0958."
    )
    secrets = ("Maria", "Garcia", "maria.garcia@example.com", "7946", "0958")
    outputs = []
    for cut in range(len(text) + 1):
        restorer = StreamRestorer(mapping, guard=guard, reidentify=True, ner_window_chars=120)
        outputs.append("".join([restorer.feed(text[:cut]), restorer.feed(text[cut:]), restorer.flush()]))
    # Token by token (3 characters): without the sentence window "Maria" would leave before "Garcia" came.
    restorer = StreamRestorer(mapping, guard=guard, reidentify=True, ner_window_chars=120)
    outputs.append("".join(restorer.feed(text[i : i + 3]) for i in range(0, len(text), 3)) + restorer.flush())
    for out in outputs:
        assert out.startswith("Thanks John Smith."), out
        for secret in secrets:
            assert secret not in out, out
