"""Structured identifiers found however they are written, masked on exactly their original characters.

One table per kind; each kind has negatives: prose that only looks similar stays unmasked. The values here
are written for these tests (none comes from the red-team generator).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from presidio_analyzer import AnalyzerEngine

from custos.privacy.normalize import normalize
from custos.privacy.pseudonymize import NER_ENTITY_TYPES, Pseudonymizer

_NER_TYPES = NER_ENTITY_TYPES


@pytest.fixture(scope="module")
def pseudonymizer(analyzer: AnalyzerEngine) -> Pseudonymizer:
    """Structured types only: a name the English NER model sees in a foreign sentence would be merged with
    the value and widen its mask, which hides whether the value's own span is exact."""
    structured = [e for e in analyzer.get_supported_entities(language="en") if e not in NER_ENTITY_TYPES]
    return Pseudonymizer(analyzer, entities=structured)


def findings(pseudonymizer: Pseudonymizer, text: str) -> list[tuple[str, str]]:
    result = pseudonymizer.pseudonymize([text])
    return [(f.entity_type, text[f.start : f.end]) for f in result.findings]


def assert_masked_exactly(pseudonymizer: Pseudonymizer, text: str, value: str) -> None:
    """One finding covers exactly ``value``: not a character more, not one less."""
    assert value in text, "test case is malformed"
    found = findings(pseudonymizer, text)
    assert value in [span for _, span in found], found


def assert_no_structured_finding(pseudonymizer: Pseudonymizer, text: str) -> None:
    found = [(entity, span) for entity, span in findings(pseudonymizer, text) if entity not in _NER_TYPES]
    assert found == []


EMAILS = [
    ("write to maria dot rossi at libero dot it please", "maria dot rossi at libero dot it"),
    ("contact: j.smith[at]example[dot]org", "j.smith[at]example[dot]org"),
    ("contact j.smith (at) example (dot) org today", "j.smith (at) example (dot) org"),
    ("mail j.smith{at}example{dot}co.uk", "j.smith{at}example{dot}co.uk"),
    ("JANE.DOE AT EXAMPLE DOT COM is my address", "JANE.DOE AT EXAMPLE DOT COM"),
    ("schreiben Sie an k.weber ät gmx punkt de bitte", "k.weber ät gmx punkt de"),
    ("écrivez à paul point martin arobase orange point fr", "paul point martin arobase orange point fr"),
    ("escriba a ana punto lopez arroba telefonica punto es", "ana punto lopez arroba telefonica punto es"),
    ("scrivete a luca chiocciola libero punto it", "luca chiocciola libero punto it"),
    ("enviem para rui ponto sousa arroba sapo ponto pt", "rui ponto sousa arroba sapo ponto pt"),
    (
        "mail naar joost punt devries apenstaartje ziggo punt nl",
        "joost punt devries apenstaartje ziggo punt nl",
    ),
    ("my mail is jane.doe@exam\u200bple.com thanks", "jane.doe@exam\u200bple.com"),
    ("my mail is jane.\ndoe@example.com thanks", "jane.\ndoe@example.com"),
    ("reply to jane.doe @ example.com", "jane.doe @ example.com"),
]
EMAIL_NEGATIVES = [
    "Are you coming to the dot com bubble talk at noon?",
    "I'm at home today and at the dot matrix museum on Friday.",
    "Look at this point, at last we agree.",
    "Meet me at the station dot five.",
]


@pytest.mark.parametrize(("text", "value"), EMAILS)
def test_email_however_written(pseudonymizer: Pseudonymizer, text: str, value: str) -> None:
    assert_masked_exactly(pseudonymizer, text, value)


@pytest.mark.parametrize("text", EMAIL_NEGATIVES)
def test_email_lookalike_prose_is_left(pseudonymizer: Pseudonymizer, text: str) -> None:
    assert_no_structured_finding(pseudonymizer, text)


PHONES = [
    (
        "call me on four one five, five five five, zero one three two",
        "four one five, five five five, zero one three two",
    ),
    ("my number: 415 555 zero one three two.", "415 555 zero one three two"),
    ("phone 415.555.0132 after six", "415.555.0132"),
    ("phone 415/555/0132 after six", "415/555/0132"),
    ("phone 4155550132 after six", "4155550132"),
    (
        "tel plus four four two zero seven nine four six zero nine five eight",
        "plus four four two zero seven nine four six zero nine five eight",
    ),
    (
        "rufen Sie an: null drei null neun null eins acht zwei null",
        "null drei null neun null eins acht zwei null",
    ),
    ("appelez le zéro un quarante deux", None),  # two-digit words are not digits: no phone, no crash
    (
        "llámeme al seis uno dos tres cuatro cinco seis siete ocho",
        "seis uno dos tres cuatro cinco seis siete ocho",
    ),
    ("il mio numero è 06 6982 1234", "06 6982 1234"),
    ("o meu telefone é o 912 345 678", "912 345 678"),
    ("mijn nummer is 06 12345678", "06 12345678"),
    ("appelez-moi au 01 42 68 53 00", "01 42 68 53 00"),
    ("call 415 555\n0132 please", "415 555\n0132"),
]
PHONE_NEGATIVES = [
    "The delivery window is 10:30 to 12:45, and the fee was $12.99.",
    "I have one question and two complaints.",
    "It costs 1.234.567,89 EUR in total.",
    "Firmware 10.2.15 did not fix it.",
]


@pytest.mark.parametrize(("text", "value"), PHONES)
def test_phone_however_written(pseudonymizer: Pseudonymizer, text: str, value: str | None) -> None:
    if value is None:
        assert all(entity != "PHONE_NUMBER" for entity, _ in findings(pseudonymizer, text))
    else:
        assert_masked_exactly(pseudonymizer, text, value)


@pytest.mark.parametrize("text", PHONE_NEGATIVES)
def test_times_prices_and_counts_are_left(pseudonymizer: Pseudonymizer, text: str) -> None:
    assert_no_structured_finding(pseudonymizer, text)


CARDS = [
    ("card 4539.1488.0343.6467 was charged", "4539.1488.0343.6467"),
    ("card 4539 148 803 436 467 was charged", "4539 148 803 436 467"),
    ("card 4539148803436467 was charged", "4539148803436467"),
    ("card 4539 / 1488 / 0343 / 6467 was charged", "4539 / 1488 / 0343 / 6467"),
    ("card 4 5 3 9 1 4 8 8 0 3 4 3 6 4 6 7 was charged", "4 5 3 9 1 4 8 8 0 3 4 3 6 4 6 7"),
    (
        "card four five three nine one four eight eight zero three four three six four six seven",
        "four five three nine one four eight eight zero three four three six four six seven",
    ),
    ("card 4539 1488\n0343 6467 was charged", "4539 1488\n0343 6467"),
    ("amex 3714 496353 98431 declined", "3714 496353 98431"),
]
CARD_NEGATIVES = [
    "The part number 4539 1488 0343 6468 is wrong.",  # fails Luhn
    "Article 4539.1488.0343.6468 does not fit.",
    "Refund IBAN DE89 3704 0044 0532 0130 01 bounced.",  # a failing IBAN holds digits that pass Luhn
]


@pytest.mark.parametrize(("text", "value"), CARDS)
def test_card_in_any_grouping(pseudonymizer: Pseudonymizer, text: str, value: str) -> None:
    assert_masked_exactly(pseudonymizer, text, value)


@pytest.mark.parametrize("text", CARD_NEGATIVES)
def test_numbers_failing_luhn_are_no_card(pseudonymizer: Pseudonymizer, text: str) -> None:
    assert all(entity != "CREDIT_CARD" for entity, _ in findings(pseudonymizer, text))


IBANS = [
    ("refund to de89 3704 0044 0532 0130 00 please", "de89 3704 0044 0532 0130 00"),
    ("refund to DE89370 40044 0532013000 please", "DE89370 40044 0532013000"),
    ("refund to DE89 3704\n0044 0532 0130 00 please", "DE89 3704\n0044 0532 0130 00"),
    ("IBAN: GB29-NWBK-6016-1331-9268-19.", "GB29-NWBK-6016-1331-9268-19"),
    ("compte FR14 2004 1010 0505 0001 3M02 606 merci", "FR14 2004 1010 0505 0001 3M02 606"),
    ("rekening nl91abna0417164300 graag", "nl91abna0417164300"),
    ("cuenta ES91 2100 0418 4502 0005 1332 y ya", "ES91 2100 0418 4502 0005 1332"),
]
IBAN_NEGATIVES = ["IBAN DE89 3704 0044 0532 0130 01 bounced.", "see de44 and 5001 below"]


@pytest.mark.parametrize(("text", "value"), IBANS)
def test_iban_in_any_case_and_grouping(pseudonymizer: Pseudonymizer, text: str, value: str) -> None:
    assert_masked_exactly(pseudonymizer, text, value)


@pytest.mark.parametrize("text", IBAN_NEGATIVES)
def test_iban_failing_mod_97_is_left(pseudonymizer: Pseudonymizer, text: str) -> None:
    assert all(entity != "IBAN_CODE" for entity, _ in findings(pseudonymizer, text))


NATIONAL_IDS = [
    ("my SSN: 512.43.9087", "512.43.9087"),
    (
        "ssn five one two - four three - nine zero eight seven",
        "five one two - four three - nine zero eight seven",
    ),
    ("Meine Steuer-ID: 86 095 742 719.", "86 095 742 719"),
    ("Steuer-ID 86095742719", "86095742719"),
    ("numéro de sécurité sociale 1 85 05 78 006 084 91", "1 85 05 78 006 084 91"),
    ("sécu 185057800608491 svp", "185057800608491"),
    ("mi DNI es 12345678-z", "12345678-z"),
    ("mi DNI es 12345678 Z, gracias", "12345678 Z"),
    ("codice fiscale rssmra85t10a562s", "rssmra85t10a562s"),
    ("CF: RSSMRA-85T10-A562S", "RSSMRA-85T10-A562S"),
    ("mijn BSN is 111.222.333", "111.222.333"),
    ("o meu NIF é 123 456 789", "123 456 789"),
]
NATIONAL_ID_NEGATIVES = [
    "Artikel 86095742719 passt nicht.",  # an 11-digit number without a label is no Steuer-ID
    "Serial 111222333 is on the box.",  # passes the BSN check, no label
    "sécu 185057800608492 svp",  # wrong key
    "mi DNI es 12345678-A",  # wrong letter
]


@pytest.mark.parametrize(("text", "value"), NATIONAL_IDS)
def test_national_ids_however_written(pseudonymizer: Pseudonymizer, text: str, value: str) -> None:
    assert_masked_exactly(pseudonymizer, text, value)


@pytest.mark.parametrize("text", NATIONAL_ID_NEGATIVES)
def test_national_id_lookalikes_are_left(pseudonymizer: Pseudonymizer, text: str) -> None:
    assert all(entity not in ("NATIONAL_ID", "US_SSN") for entity, _ in findings(pseudonymizer, text))


REFERENCES = [
    ("ord# A-55120 never arrived", "A-55120"),
    ("Kd.-Nr. 4711-0815, bitte prüfen", "4711-0815"),
    ("numéro de commande CMD 88412 : rien", "CMD 88412"),
    ("n.º pedido 2023/55123 sin llegar", "2023/55123"),
    ("ticket#INC 7734 still open", "INC 7734"),
    ("bestelnr 99-1234 is kwijt", "99-1234"),
    ("cust no 981 7064 here", "981 7064"),
    ("order     55120 (extra spaces)", "55120"),
    ("order five five one two zero please", "five five one two zero"),
    ("Kundennummer:\n4711-22 bitte", "4711-22"),
]
REFERENCE_NEGATIVES = [
    "I bought 3 items and the order arrived in 2 days.",
    "It is the best 2020 model.",
    "The accountant 12345 mentioned it.",
    "My account is closed since Monday.",
]


@pytest.mark.parametrize(("text", "value"), REFERENCES)
def test_references_written_loosely(pseudonymizer: Pseudonymizer, text: str, value: str) -> None:
    assert_masked_exactly(pseudonymizer, text, value)


@pytest.mark.parametrize("text", REFERENCE_NEGATIVES)
def test_reference_lookalikes_are_left(pseudonymizer: Pseudonymizer, text: str) -> None:
    assert_no_structured_finding(pseudonymizer, text)


IPS = [
    ("login from 192.168.1.10 last night", "192.168.1.10"),
    ("login from 192 . 168 . 1 . 10 last night", "192 . 168 . 1 . 10"),
    ("login from one nine two dot one six eight dot one dot one zero", None),
]


@pytest.mark.parametrize(("text", "value"), IPS)
def test_ip_addresses(pseudonymizer: Pseudonymizer, text: str, value: str | None) -> None:
    if value is None:
        # "one zero" is 10: the run reads "192.168.1.10" in the normalised text.
        value = text[text.index("one nine") :]
    assert_masked_exactly(pseudonymizer, text, value)


BIRTH_DATES = [
    ("I was born on 12/03/1985 in Ohio.", "12/03/1985"),
    ("born 12.03.85, please fix", "12.03.85"),
    ("born on the twelfth of March nineteen eighty-five", "twelfth of March nineteen eighty-five"),
    ("my birthday is March 3rd", "March 3rd"),
    ("born in 1985", "1985"),
    ("geboren am 12.03.1985, bitte", "12.03.1985"),
    ("ich bin am 3. März 1985 geboren", "3. März 1985"),
    ("geboren am zwölften März 1985", "zwölften März 1985"),
    ("née le douze mars 1985 à Lyon", "douze mars 1985"),
    ("nacido el doce de marzo de 1985", "doce de marzo de 1985"),
    ("nací el 3-7-1953 y", "3-7-1953"),
    ("sono nata il nove gennaio 1966", "nove gennaio 1966"),
    ("nasci a 11 de janeiro de 1972", "11 de janeiro de 1972"),
    ("geboren op negen september 1944", "negen september 1944"),
]
BIRTH_DATE_NEGATIVES = [
    "It was delivered on 12 March 2024.",
    "Die Bestellung kam am 12.03.2024 an.",
    "The NATO 2024 summit is over.",
    "Your shop closes at 18:30.",
]


@pytest.mark.parametrize(("text", "value"), BIRTH_DATES)
def test_birth_dates_numeric_and_in_words(pseudonymizer: Pseudonymizer, text: str, value: str) -> None:
    assert ("DATE_OF_BIRTH", value) in findings(pseudonymizer, text)


@pytest.mark.parametrize("text", BIRTH_DATE_NEGATIVES)
def test_other_dates_are_no_birth_dates(pseudonymizer: Pseudonymizer, text: str) -> None:
    assert all(entity != "DATE_OF_BIRTH" for entity, _ in findings(pseudonymizer, text))


URLS = [
    ("see https://crm.example.com/customers/55120 now", "https://crm.example.com/customers/55120"),
    (
        "open shop.example.org/account?id=AC-774102&user=jane%40example.org.",
        "shop.example.org/account?id=AC-774102&user=jane%40example.org",
    ),
    (
        "my profile: https://www.linkedin.com/in/jane-doe-4b1a2c",
        "https://www.linkedin.com/in/jane-doe-4b1a2c",
    ),
    ("(https://x.example.io/u/jdoe)", "https://x.example.io/u/jdoe"),
]
URL_NEGATIVES = [
    "Read https://help.example.com/articles/reset-password first.",
    "Our site www.example.com has the manual.",
]


@pytest.mark.parametrize(("text", "value"), URLS)
def test_urls_that_carry_an_identifier(pseudonymizer: Pseudonymizer, text: str, value: str) -> None:
    assert_masked_exactly(pseudonymizer, text, value)


@pytest.mark.parametrize("text", URL_NEGATIVES)
def test_urls_without_identifier_are_left(pseudonymizer: Pseudonymizer, text: str) -> None:
    assert_no_structured_finding(pseudonymizer, text)


# ---- the normalising pass itself -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("jane at example dot com", "jane@example.com"),
        ("name[at]gmail[dot]com", "name@gmail.com"),
        ("four one one one", "4111"),
        ("4111.1111.1111.1111", "4111-1111-1111-1111"),
        ("call five five five, one two three", "call 555 123"),
        ("x\u200b1\u00ad2", "x12"),
        ("\uff21\uff22\uff11\uff12", "AB12"),
        ("a  b\n\nc", "a b c"),
    ],
)
def test_canonical_forms(text: str, canonical: str) -> None:
    assert normalize(text).text == canonical


@pytest.mark.parametrize(
    "text",
    [
        "12.03.1985",
        "192.168.0.1",
        "1.234.567,00 EUR",
        "one of us",
        "the invoice is due 12 days",
        "1234, 5678",
        "meet at the dot com bubble",
        "+1 212-555-0100",
    ],
)
def test_ordinary_text_keeps_its_form(text: str) -> None:
    assert not normalize(text).changed


_PIECES = st.sampled_from(
    [
        "jane", " at ", " dot ", "com", "[at]", "(dot)", "four", " one ", "5", "55", ".", "-", " ", "\n",
        "\u200b", "\u00ad", "\uff21\uff22", "é", "plus ", "ät", "punkt", ",", "double ", "x", "@", "192",
        "  ",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=40).map("".join))
def test_offset_map_points_into_the_original(text: str) -> None:
    normalized = normalize(text)
    assert len(normalized.starts) == len(normalized.ends) == len(normalized.text)
    previous_end = 0
    for start, end in zip(normalized.starts, normalized.ends, strict=True):
        assert 0 <= start < end <= len(text)
        assert end >= previous_end  # monotone: a span maps to one contiguous original span
        previous_end = end
    if normalized.text:
        first, last = normalized.to_original(0, len(normalized.text))
        assert 0 <= first <= last <= len(text)
