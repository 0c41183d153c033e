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


POLISH = (
    "Dzień dobry, nazywam się Jan Kowalski i moje zamówienie jeszcze nie dotarło. Proszę o pomoc, "
    "ponieważ czekam już ponad dwa tygodnie."
)
GERMAN = "Hallo, mein Name ist Hans Müller und meine Bestellung ist leider noch nicht angekommen."


def test_language_policy(analyzer: AnalyzerEngine) -> None:
    detector = LanguageDetector()
    assert detector("Hello, my order has not arrived yet and I would like to know where it is.")[0] == "en"  # type: ignore[index]
    assert detector("hi") is None
    refusing = Pseudonymizer(analyzer, language_detector=detector, language_policy="refuse")
    with pytest.raises(UnsupportedLanguage):
        refusing.analyze([POLISH])
    english = refusing.analyze(["Hello, my name is John Smith and my parcel has not arrived yet."])
    assert english.detected_language == "en" and english.language == "en" and not english.patterns_only
    # German has a pipeline: served under either policy, never refused.
    german = refusing.analyze([GERMAN])
    assert german.language == german.detected_language == "de" and german.pipeline == "de:patterns"
    assert german.entity_types() == {"PERSON"}
    patterns = Pseudonymizer(analyzer, language_detector=detector, language_policy="patterns")
    analysis = patterns.analyze([POLISH + " jan@example.pl"])
    assert analysis.patterns_only and analysis.detected_language == "pl"
    assert analysis.language == "en" and analysis.pipeline == "en:patterns-only"
    assert analysis.entity_types() == {"EMAIL_ADDRESS"}  # no NER or name rules on Polish text


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
        "Vancouver office: (604) 682-3000, Toronto 416 979 3000",
        "guernsey 01481 717000 or jersey 01534 440000",
        "12+49 30 901820 and +49 30 901820 5",  # digits next to international numbers
        "+1 212 555 0187, +44 20 7946 0958/+44 20 7946 0959",
        "Ring +44 7700 900461 or 07700 900462.",
    ],
)
@pytest.mark.parametrize(
    "regions", [("US", "UK", "DE", "FE", "IL", "IN", "CA", "BR"), ("CA", "US"), ("GB", "GG", "JE")]
)
def test_candidate_phone_recognizer_finds_what_presidios_finds(text: str, regions: tuple[str, ...]) -> None:
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    from custos.privacy.recognizers import CandidatePhoneRecognizer

    reference = PhoneRecognizer(supported_regions=regions).analyze(text, ["PHONE_NUMBER"])
    ours = CandidatePhoneRecognizer(supported_regions=regions).analyze(text, ["PHONE_NUMBER"])
    assert sorted((r.start, r.end, r.score) for r in ours) == sorted(
        (r.start, r.end, r.score) for r in reference
    )


@pytest.mark.parametrize(
    ("regions", "matched"),
    [
        (("US", "CA", "GB"), ["US", "GB"]),  # CA reads national numbers exactly like US
        (("CA", "US"), ["CA"]),
        (("GB", "GG"), ["GB", "GG"]),  # same calling code, other national prefix rules
        (("UK", "DE"), ["DE"]),  # UK is no phonenumbers region
        (("UK",), ["UK"]),
    ],
)
def test_phone_regions_that_parse_alike_are_matched_once(
    regions: tuple[str, ...], matched: list[str]
) -> None:
    from custos.privacy.recognizers import CandidatePhoneRecognizer

    assert CandidatePhoneRecognizer(supported_regions=regions)._regions() == matched


@pytest.mark.parametrize(
    ("text", "other_regions_skipped"),
    [
        ("call +44 20 7946 0958 now", True),  # +country code, nothing else in the window
        ("call 020 7946 0958 now", False),  # national: each region reads it differently
        ("x1+44 20 7946 0958", False),  # a digit in the window before the number
        ("+44 20 7946 0958 / 5", False),  # a digit after it (the window has two characters of margin)
        ("+44 20 7946 0958 0171 2345", False),  # the number is only part of the digit run
    ],
)
def test_international_numbers_are_matched_in_one_region(text: str, other_regions_skipped: bool) -> None:
    import phonenumbers

    from custos.privacy.recognizers import CandidatePhoneRecognizer

    recognizer = CandidatePhoneRecognizer(supported_regions=("US", "GB", "DE"))
    candidate = next(
        c for c in recognizer._CANDIDATE.finditer(text) if sum(ch.isdigit() for ch in c.group()) >= 6
    )
    lo, hi = max(0, candidate.start() - 2), min(len(text), candidate.end() + 2)
    window = text[lo:hi]
    matches = list(phonenumbers.PhoneNumberMatcher(window, "US", leniency=1))
    skipped = recognizer._international_only(window, candidate.start() - lo, candidate.end() - lo, matches)
    assert skipped is other_regions_skipped


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("We moved to 609 Stacey Roads, New Brendaton last week.", "609 Stacey Roads, New Brendaton"),
        ("My address is 12 Elm Grove, Springfield, IL 62704.", "12 Elm Grove, Springfield, IL 62704"),
        ("Send it to 10 Downing Street, London SW1A 2AA please", "10 Downing Street, London SW1A 2AA"),
        ("the box is for 2601 Michael Centers Suite 131", None),  # ambiguous suffix, no address word
        ("ship it to 2601 michael centers suite 131 instead", "2601 michael centers suite 131"),
        ("Please deliver to 5979 Jones Course.", "5979 Jones Course"),
        ("The parcel never reached 07871 Garcia Locks.", "07871 Garcia Locks"),
        ("Invoice for 463 Webb Skyway Apt. 387, thanks", "463 Webb Skyway Apt. 387"),
        ("It went to 7187 Hughes Fords yesterday.", "7187 Hughes Fords"),
        ("Lieferung an Hauptstraße 12 bitte.", "Hauptstraße 12"),
        ("Our office is at Keizersgracht 123, Amsterdam.", "Keizersgracht 123"),
        ("1420 Maple Avenue, Thanks for the help", "1420 Maple Avenue"),  # "Thanks" is no town
        ("I have 2 questions about the way you bill.", None),
        ("We need 2 License Keys and 3 Charging Stations for the office.", None),
        ("Our 24/7 Help Center is open; the 10 Day Pass costs more.", None),
        ("My order 5 Smart Locks arrived broken.", None),
        ("Please add 2 Required Fields to the form.", None),
        ("There are 3 USB Ports on the 2 Docking Station units.", None),
        ("It took 2 Business Days and 3 Support Calls.", None),
        ("Spring 2025 sale: 30 Day Trial for 2 Premium Plans.", None),
        ("Ordered 2 Apple Pencils and 1 Year Warranty Extension.", None),
        ("Call me after 3 PM EST or before 9 am ct, please.", None),
    ],
)
def test_street_addresses(pseudonymizer: Pseudonymizer, text: str, address: str | None) -> None:
    addresses = [value for entity, value in found(pseudonymizer, text) if entity == "STREET_ADDRESS"]
    assert addresses == ([address] if address else [])


def test_context_enhancer_raises_scores_on_the_results_it_is_given(analyzer: AnalyzerEngine) -> None:
    from presidio_analyzer import RecognizerResult

    text = "Ship it to 07871 Garcia Locks please."
    artifacts = analyzer.nlp_engine.process_text(text, "en")
    recognizers = analyzer.registry.get_recognizers("en", entities=["STREET_ADDRESS"])
    results = [r for rec in recognizers for r in rec.analyze(text, ["STREET_ADDRESS"], artifacts)]
    for result in results:
        result.recognition_metadata = {RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: recognizers[0].id}
    before = [r.score for r in results]
    enhanced = analyzer.context_aware_enhancer.enhance_using_context(text, results, artifacts, recognizers)
    assert all(a is b for a, b in zip(enhanced, results, strict=True))  # no copies
    assert any(r.score > old for r, old in zip(results, before, strict=True))  # "ship" raised a score


def test_phone_regions_are_worked_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from custos.privacy.recognizers import CandidatePhoneRecognizer

    recognizer = CandidatePhoneRecognizer(supported_regions=("US", "UK", "DE", "CA"))
    calls: list[int] = []
    original = CandidatePhoneRecognizer._regions

    def counting(self: CandidatePhoneRecognizer) -> list[str]:
        calls.append(1)
        return original(self)

    monkeypatch.setattr(CandidatePhoneRecognizer, "_regions", counting)
    for _ in range(3):
        found = recognizer.analyze("call +1 212 555 0187 or 030 901820", ["PHONE_NUMBER"])
        assert len(found) == 2
    assert len(calls) == 1
    assert recognizer._region_order == ["US", "DE"]  # UK unknown to phonenumbers, CA reads like US
