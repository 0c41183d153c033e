"""CRM recognizers and configuration: dates of birth, street addresses, labels, lists, thresholds, regions,
and the language policy."""

from __future__ import annotations

import pytest
from presidio_analyzer import AnalyzerEngine

from custos.privacy.analyzer import build_analyzer
from custos.privacy.errors import UnsupportedEntity, UnsupportedLanguage
from custos.privacy.language import LanguageDetector
from custos.privacy.pseudonymize import Pseudonymizer


def found(pseudonymizer: Pseudonymizer, text: str) -> list[tuple[str, str]]:
    result = pseudonymizer.pseudonymize([text])
    return [(f.entity_type, text[f.start : f.end]) for f in result.findings]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I was born on 12/03/1985 in Ohio.", ("DATE_OF_BIRTH", "12/03/1985")),
        ("DOB: 1985-03-12", ("DATE_OF_BIRTH", "1985-03-12")),
        ("date of birth 3 March 1985, thanks", ("DATE_OF_BIRTH", "3 March 1985")),
        ("my birthday is March 3, 1985", ("DATE_OF_BIRTH", "March 3, 1985")),
        ("Ship it to 221B Baker Street please.", ("STREET_ADDRESS", "221B Baker Street")),
        (
            "send to 1600 Pennsylvania Ave NW, Suite 5 today",
            ("STREET_ADDRESS", "1600 Pennsylvania Ave NW, Suite 5"),
        ),
        ("new address: 42 main st. apt 4", ("STREET_ADDRESS", "42 main st. apt 4")),
        ("My account number is 77467446 and", ("ACCOUNT_ID", "77467446")),
        ("Customer ID: C-88412 wrote", ("CUSTOMER_ID", "C-88412")),
    ],
)
def test_crm_true_positives(pseudonymizer: Pseudonymizer, text: str, expected: tuple[str, str]) -> None:
    assert expected in found(pseudonymizer, text)


@pytest.mark.parametrize(
    "text",
    [
        "The parcel was delivered 12/03/2024.",  # a date, not a birth date
        "I bought 3 items and 2 days later one broke.",
        "My account is closed since Monday.",
        "Call us at (212) 555-0187 any time.",  # US number: not a UK NHS number
    ],
)
def test_known_false_positives_stay_off(pseudonymizer: Pseudonymizer, text: str) -> None:
    assert all(
        entity not in ("DATE_OF_BIRTH", "STREET_ADDRESS", "ACCOUNT_ID", "UK_NHS")
        for entity, _ in found(pseudonymizer, text)
    )


def test_allow_list_thresholds_and_unknown_types(analyzer: AnalyzerEngine) -> None:
    text = "Acme Support: call Maria Garcia in Berlin."
    plain = Pseudonymizer(analyzer)
    assert ("PERSON", "Maria Garcia") in found(plain, text)
    assert ("LOCATION", "Berlin") in found(plain, text)
    allowed = Pseudonymizer(analyzer, allow_list=["maria  GARCIA"])
    assert ("PERSON", "Maria Garcia") not in found(allowed, text)
    strict = Pseudonymizer(analyzer, entity_thresholds={"LOCATION": 0.95})
    assert ("LOCATION", "Berlin") not in found(strict, text)
    assert ("PERSON", "Maria Garcia") in found(strict, text)
    with pytest.raises(UnsupportedEntity):
        Pseudonymizer(analyzer, entity_thresholds={"NOT_A_TYPE": 0.5})
    with pytest.raises(ValueError, match="LOCATION"):
        Pseudonymizer(analyzer, entity_thresholds={"LOCATION": 1.5})


def test_configured_regions_deny_lists_and_references() -> None:
    analyzer = build_analyzer(
        entities=["PHONE_NUMBER", "PERSON"],
        phone_regions=["US"],
        deny_lists={"PERSON": ["Big Joe"]},
        crm_references={"CONTRACT_ID": ["contract", "agreement"]},
    )
    pseudonymizer = Pseudonymizer(analyzer)
    uk_national = "Ring me on 020 7946 0958 please."
    assert found(pseudonymizer, uk_national) == []  # GB is not a configured region
    assert ("PHONE_NUMBER", "+44 20 7946 0958") in found(pseudonymizer, "Ring me on +44 20 7946 0958 please.")
    assert ("PERSON", "big joe") in found(pseudonymizer, "ask for big joe at the desk")
    assert ("CONTRACT_ID", "K-55120") in found(pseudonymizer, "Our agreement no. K-55120 ends soon.")
    with pytest.raises(UnsupportedEntity):
        build_analyzer(crm_references={"lower_case": ["x"]})


GERMAN = "Hallo, mein Name ist Hans Müller und meine Bestellung ist leider noch nicht angekommen."


def test_language_policy(analyzer: AnalyzerEngine) -> None:
    detector = LanguageDetector()
    assert detector("Hello, my order has not arrived yet and I would like to know where it is.")[0] == "en"  # type: ignore[index]
    assert detector("hi") is None
    refusing = Pseudonymizer(analyzer, language_detector=detector, language_policy="refuse")
    with pytest.raises(UnsupportedLanguage):
        refusing.analyze([GERMAN])
    english = refusing.analyze(["Hello, my name is John Smith and my parcel has not arrived yet."])
    assert english.detected_language == "en" and not english.patterns_only
    patterns = Pseudonymizer(analyzer, language_detector=detector, language_policy="patterns")
    analysis = patterns.analyze([GERMAN + " hans@example.de"])
    assert analysis.patterns_only and analysis.detected_language == "de"
    assert analysis.entity_types() == {"EMAIL_ADDRESS"}  # no NER on German text


def test_explanations_carry_the_decision_process_without_values(analyzer: AnalyzerEngine) -> None:
    pseudonymizer = Pseudonymizer(analyzer, entity_thresholds={"PHONE_NUMBER": 0.3})
    text = "My phone number is (212) 555-0187 and my card 4111 1111 1111 1111."
    result = pseudonymizer.pseudonymize([text])
    by_type = {f.entity_type: f.to_audit() for f in result.findings}
    phone = by_type["PHONE_NUMBER"]["explanation"]
    card = by_type["CREDIT_CARD"]["explanation"]
    assert isinstance(phone, dict) and isinstance(card, dict)
    assert phone["threshold"] == 0.3 and card["threshold"] == 0.4
    assert phone["decision"] == card["decision"] == "masked"
    assert {"recognizer", "original_score", "score", "textual_explanation"} <= set(card)
    assert card["validation_result"] is True  # Luhn checksum
    assert phone.get("supportive_context_word") == "phone"  # context word raised the score
    assert phone["score"] > phone["original_score"]
    assert "555-0187" not in repr(by_type) and "4111" not in repr(by_type)


@pytest.mark.parametrize(
    "text",
    [
        "call (415) 555-0132 or +44 20 7946 0958, fax 030 901820",
        "my number: 0171-2345678!",
        "tel.+49(30)901820x",
        "1-800-356-9377 and card 4539 1488 0343 6467",
        "ph 9876543210 / 98765 43210",
        "[+1] 212 555 0187",
        "order 55120, 3 items, no phone here",
    ],
)
def test_candidate_phone_recognizer_finds_what_presidios_finds(text: str) -> None:
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    from custos.privacy.recognizers import CandidatePhoneRecognizer

    regions = ("US", "UK", "DE", "FE", "IL", "IN", "CA", "BR")
    reference = PhoneRecognizer(supported_regions=regions).analyze(text, ["PHONE_NUMBER"])
    ours = CandidatePhoneRecognizer(supported_regions=regions).analyze(text, ["PHONE_NUMBER"])
    assert sorted((r.start, r.end, r.score) for r in ours) == sorted(
        (r.start, r.end, r.score) for r in reference
    )
