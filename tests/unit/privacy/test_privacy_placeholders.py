"""PlaceholderMap, restore and overlap resolution, without spaCy (a fake analyzer returns fixed results)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence

import pytest
from presidio_analyzer import AnalysisExplanation, RecognizerResult

from custos.privacy.errors import PrivacyError
from custos.privacy.pseudonymize import (
    PLACEHOLDER_PATTERN,
    Finding,
    PlaceholderMap,
    Pseudonymizer,
    merge_overlaps,
    neutralize_placeholders,
    normalize_value,
    restore,
)

# --- PlaceholderMap -----------------------------------------------------------------------------------------


def test_numbering_per_entity_type() -> None:
    mapping = PlaceholderMap()
    assert mapping.placeholder_for("PERSON", "John Smith") == "<PERSON_1>"
    assert mapping.placeholder_for("PERSON", "Maria Garcia") == "<PERSON_2>"
    assert mapping.placeholder_for("EMAIL_ADDRESS", "a@example.com") == "<EMAIL_ADDRESS_1>"
    assert mapping.placeholder_for("PERSON", "John Smith") == "<PERSON_1>"
    assert len(mapping) == 3
    assert list(mapping.placeholders()) == ["<PERSON_1>", "<PERSON_2>", "<EMAIL_ADDRESS_1>"]


@pytest.mark.parametrize(
    ("entity_type", "first", "second", "same"),
    [
        pytest.param("PERSON", "John Smith", "john smith", True, id="case"),
        pytest.param("PERSON", "John Smith", "  John \t Smith\n", True, id="whitespace"),
        pytest.param("PERSON", "John Smith", "JOHN SMITH", True, id="upper"),
        pytest.param("PERSON", "Jürgen", "JÜRGEN", True, id="unicode-case"),
        pytest.param("PERSON", "\uff2a\uff4f\uff48\uff4e", "John", True, id="nfkc-fullwidth"),
        pytest.param("PERSON", "John Smith", "John Smyth", False, id="different-name"),
        pytest.param("CREDIT_CARD", "4111 1111 1111 1111", "4111-1111-1111-1111", True, id="card-separators"),
        pytest.param("PHONE_NUMBER", "(212) 555-0187", "212.555.0187", True, id="phone-separators"),
        pytest.param("IBAN_CODE", "DE89 3704 0044 0532 0130 00", "de89370400440532013000", True, id="iban"),
        pytest.param("US_SSN", "536-22-1234", "536 22 1234", True, id="ssn"),
        pytest.param("PERSON", "J-1", "J1", False, id="separators-only-stripped-for-numbers"),
    ],
)
def test_normalisation(entity_type: str, first: str, second: str, same: bool) -> None:
    mapping = PlaceholderMap()
    a = mapping.placeholder_for(entity_type, first)
    b = mapping.placeholder_for(entity_type, second)
    assert (a == b) is same
    assert (normalize_value(entity_type, first) == normalize_value(entity_type, second)) is same
    assert mapping.value_of(a) == first  # the first spelling is what restore returns


def test_same_value_under_two_types_gets_two_placeholders() -> None:
    mapping = PlaceholderMap()
    assert mapping.placeholder_for("PERSON", "Paris") != mapping.placeholder_for("LOCATION", "Paris")


@pytest.mark.parametrize(
    ("entity_type", "value"),
    [("person", "x"), ("PERSON>", "x"), ("", "x"), ("1ABC", "x"), ("PERSON", ""), ("PERSON", "  ")],
)
def test_placeholder_for_rejects_bad_input(entity_type: str, value: str) -> None:
    with pytest.raises(ValueError):
        PlaceholderMap().placeholder_for(entity_type, value)


def test_map_repr_shows_no_values() -> None:
    mapping = PlaceholderMap()
    mapping.placeholder_for("PERSON", "John Smith")
    assert "John" not in repr(mapping)


def test_map_round_trips_through_dict_and_json() -> None:
    mapping = PlaceholderMap()
    for entity_type, value in [("PERSON", "John"), ("EMAIL_ADDRESS", "j@x.org"), ("PERSON", "Maria")]:
        mapping.placeholder_for(entity_type, value)
    copy = PlaceholderMap.from_dict(json.loads(json.dumps(mapping.to_dict())))

    assert list(copy.placeholders()) == list(mapping.placeholders())
    assert all(copy.value_of(p) == mapping.value_of(p) for p in mapping.placeholders())
    assert copy.placeholder_for("PERSON", "JOHN") == "<PERSON_1>"
    assert copy.placeholder_for("PERSON", "Peter") == "<PERSON_3>"  # numbering continues


def _entries(*triples: tuple[str, str, str]) -> dict[str, object]:
    return {"format": 1, "entries": [{"placeholder": p, "entity_type": t, "value": v} for p, t, v in triples]}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"format": 2, "entries": []}, id="format"),
        pytest.param({"format": 1}, id="no-entries"),
        pytest.param({"format": 1, "entries": ["x"]}, id="entry-not-object"),
        pytest.param(_entries(("<PERSON_2>", "PERSON", "John")), id="gap"),
        pytest.param(
            _entries(("<PERSON_1>", "PERSON", "John"), ("<PERSON_2>", "PERSON", "JOHN")), id="duplicate"
        ),
        pytest.param(_entries(("<EMAIL_ADDRESS_1>", "PERSON", "John")), id="type-mismatch"),
        pytest.param(_entries(("<person_1>", "person", "John")), id="bad-type"),
        pytest.param(
            {"format": 1, "entries": [{"placeholder": "<PERSON_1>", "entity_type": "PERSON"}]}, id="no-value"
        ),
    ],
)
def test_from_dict_rejects_inconsistent_data(data: dict[str, object]) -> None:
    with pytest.raises(PrivacyError) as info:
        PlaceholderMap.from_dict(data)
    assert "John" not in str(info.value)


# --- restore ------------------------------------------------------------------------------------------------


@pytest.fixture
def mapping() -> PlaceholderMap:
    mapping = PlaceholderMap()
    mapping.placeholder_for("PERSON", "John Smith")
    mapping.placeholder_for("EMAIL_ADDRESS", "john@example.com")
    return mapping


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("Hello <PERSON_1>!", "Hello John Smith!", id="known"),
        pytest.param("<PERSON_1><EMAIL_ADDRESS_1>", "John Smithjohn@example.com", id="adjacent"),
        pytest.param("<PERSON_1> and <PERSON_1>", "John Smith and John Smith", id="repeated"),
        pytest.param("Hello <PERSON_2>!", "Hello <PERSON_2>!", id="unknown-number"),
        pytest.param("Hello <LOCATION_1>!", "Hello <LOCATION_1>!", id="unknown-type"),
        pytest.param("<person_1>", "<person_1>", id="lower-case"),
        pytest.param("<PERSON_01>", "<PERSON_01>", id="leading-zero"),
        pytest.param("<PERSON_0>", "<PERSON_0>", id="zero"),
        pytest.param("<PERSON_1", "<PERSON_1", id="unclosed"),
        pytest.param("PERSON_1>", "PERSON_1>", id="unopened"),
        pytest.param("< PERSON_1>", "< PERSON_1>", id="inner-space"),
        pytest.param("<PERSON_1_1>", "<PERSON_1_1>", id="nested-suffix"),
        pytest.param("<PERSON>", "<PERSON>", id="no-number"),
        pytest.param("<<PERSON_1>>", "<John Smith>", id="extra-brackets"),
        pytest.param("\u2039PERSON_1\u203a", "\u2039PERSON_1\u203a", id="neutralised"),
        pytest.param("", "", id="empty"),
    ],
)
def test_restore_replaces_only_exact_known_placeholders(
    mapping: PlaceholderMap, text: str, expected: str
) -> None:
    assert restore(text, mapping) == expected


def test_restore_is_a_single_pass_by_position() -> None:
    # A value that itself looks like a placeholder must not be expanded again.
    mapping = PlaceholderMap()
    outer = mapping.placeholder_for("PERSON", "<SECRET_1>")
    mapping.placeholder_for("SECRET", "the real secret")
    assert restore(f"x {outer} y", mapping) == "x <SECRET_1> y"


def test_placeholder_pattern_matches_what_the_map_issues() -> None:
    mapping = PlaceholderMap()
    for entity_type in ["PERSON", "EMAIL_ADDRESS", "US_SSN", "X_2"]:
        placeholder = mapping.placeholder_for(entity_type, "v")
        assert PLACEHOLDER_PATTERN.fullmatch(placeholder)


@pytest.mark.parametrize(
    ("text", "expected", "count"),
    [
        ("say <PERSON_1> now", "say \u2039PERSON_1\u203a now", 1),
        ("<person_01> <X_9>", "\u2039person_01\u203a \u2039X_9\u203a", 2),
        ("a < b and c > d", "a < b and c > d", 0),
        ("<b>bold</b>", "<b>bold</b>", 0),
        ("<PERSON>", "<PERSON>", 0),
    ],
)
def test_neutralize_placeholders(text: str, expected: str, count: int) -> None:
    neutral, seen = neutralize_placeholders(text)
    assert (neutral, seen) == (expected, count)
    assert len(neutral) == len(text)


# --- overlap resolution, via a fake analyzer --------------------------------------------------------------


def detection(
    entity_type: str, start: int, end: int, score: float, recognizer: str = "R", text: str = "found"
) -> RecognizerResult:
    explanation = AnalysisExplanation(
        recognizer=recognizer,
        original_score=score,
        pattern_name="p",
        pattern=r"secret\d+",
        textual_explanation=text,
    )
    return RecognizerResult(
        entity_type,
        start,
        end,
        score,
        analysis_explanation=explanation,
        recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: recognizer},
    )


class _FakeNlp:
    def process_batch(
        self, texts: Sequence[str], language: str, batch_size: int = 1
    ) -> Iterator[tuple[str, None]]:
        for text in texts:
            yield text, None

    def process_text(self, text: str, language: str) -> None:
        return None


class FakeAnalyzer:
    """Returns fixed detections; just the part of AnalyzerEngine that Pseudonymizer uses."""

    def __init__(self, results: list[RecognizerResult]) -> None:
        self.supported_languages = ["en"]
        self.results = results
        self.nlp_engine = _FakeNlp()

    def get_supported_entities(self, language: str) -> list[str]:
        return ["PERSON", "PHONE_NUMBER", "LOCATION", "CREDIT_CARD"]

    def analyze(self, **kwargs: object) -> list[RecognizerResult]:
        return list(self.results)


TEXT = "0123456789abcdefghij"


@pytest.mark.parametrize(
    ("detections", "expected_spans"),
    [
        pytest.param(
            [detection("PERSON", 0, 10, 0.5), detection("PHONE_NUMBER", 2, 5, 0.9)],
            [(0, 10, "PHONE_NUMBER")],
            id="contained-higher-score-names-the-union",
        ),
        pytest.param(
            [
                detection("LOCATION", 0, 5, 0.85),
                detection("LOCATION", 6, 16, 0.85),
                detection("PERSON", 0, 16, 0.7),
            ],
            [(0, 16, "PERSON")],
            id="name-found-whole-beats-place-fragments",
        ),
        pytest.param(
            [detection("LOCATION", 0, 10, 0.5), detection("PERSON", 2, 5, 0.9)],
            [(0, 10, "LOCATION")],
            id="covering-detection-beats-a-named-entity-fragment",
        ),
        pytest.param(
            [detection("PERSON", 0, 6, 0.85), detection("LOCATION", 4, 10, 0.6)],
            [(0, 10, "PERSON")],
            id="partial-overlap-masks-the-union",
        ),
        pytest.param(
            [detection("PERSON", 0, 4, 0.85), detection("LOCATION", 0, 8, 0.85)],
            [(0, 8, "LOCATION")],
            id="score-tie-longer-wins",
        ),
        pytest.param(
            [detection("PERSON", 0, 4, 0.85), detection("LOCATION", 0, 4, 0.85)],
            [(0, 4, "LOCATION")],
            id="full-tie-alphabetical-type",
        ),
        pytest.param(
            [
                detection("PERSON", 0, 4, 0.5),
                detection("LOCATION", 3, 7, 0.5),
                detection("PERSON", 6, 10, 0.9),
            ],
            [(0, 10, "PERSON")],
            id="chain-of-overlaps",
        ),
        pytest.param(
            [detection("PERSON", 0, 4, 0.5), detection("LOCATION", 4, 8, 0.9)],
            [(0, 4, "PERSON"), (4, 8, "LOCATION")],
            id="touching-spans-stay-apart",
        ),
    ],
)
def test_overlaps_are_merged_deterministically(
    detections: list[RecognizerResult], expected_spans: list[tuple[int, int, str]]
) -> None:
    for order in itertools.permutations(detections):
        spans = merge_overlaps(list(order))
        assert [(s.start, s.end, s.winner.entity_type) for s in spans] == expected_spans


def test_merged_span_is_masked_whole_and_explained() -> None:
    analyzer = FakeAnalyzer(
        [detection("PERSON", 0, 6, 0.85, "Ner"), detection("LOCATION", 4, 10, 0.6, "Geo")]
    )
    result = Pseudonymizer(analyzer).pseudonymize([TEXT])  # type: ignore[arg-type]

    assert result.texts == ["<PERSON_1>abcdefghij"]
    [finding] = result.findings
    assert (finding.start, finding.end, finding.recognizer) == (0, 10, "Ner")
    assert finding.explanation["merged"] == [{"entity_type": "LOCATION", "recognizer": "Geo", "score": 0.6}]
    assert finding.explanation["span_widened_by_overlap"] is True
    assert result.mapping.value_of("<PERSON_1>") == "0123456789"


def test_explanation_never_echoes_the_value_or_the_regex() -> None:
    leaky = detection("PERSON", 10, 16, 0.9, "Leaky", text="Matched 'ABCDEF' in the text")
    result = Pseudonymizer(FakeAnalyzer([leaky])).pseudonymize(["0123456789ABCDEF"])  # type: ignore[arg-type]

    [finding] = result.findings
    dumped = json.dumps(finding.to_audit(), allow_nan=False)
    assert "abcdef" not in dumped.lower()
    assert "secret" not in dumped  # AnalysisExplanation.pattern is not copied
    assert "[redacted]" in dumped


def test_finding_is_hashable_and_to_audit_is_a_copy() -> None:
    finding = Finding(0, "PERSON", 1, 3, 0.9, "R", "<PERSON_1>", {"merged": [{"score": 0.5}]})
    audit = finding.to_audit()
    audit["explanation"]["merged"][0]["score"] = 0.0  # type: ignore[index]
    assert finding.explanation["merged"] == [{"score": 0.5}]
    assert hash(finding) == hash(Finding(0, "PERSON", 1, 3, 0.9, "R", "<PERSON_1>", {}))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), object(), b"bytes"])
def test_to_audit_refuses_non_json_values(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        Finding(0, "PERSON", 1, 3, 0.9, "R", "<PERSON_1>", {"x": bad}).to_audit()
