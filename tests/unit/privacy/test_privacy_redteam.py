"""The red-team generator: labelled, seeded, valid values, names disjoint from the detector's lists."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import phonenumbers
import pytest

from custos.bench import redteam
from custos.bench.redteam import HALVES, HELDOUT, KINDS, TUNING, RedTeamSample
from custos.privacy.names import faker_name_lists

_NAMES = "|".join((*redteam.SLOT_TYPES, *redteam.FILLERS))
_UNFILLED = re.compile(rf"\{{(?:{_NAMES})\d?\}}")


@pytest.fixture(scope="module", params=sorted(HALVES))
def half_samples(request: pytest.FixtureRequest) -> list[RedTeamSample]:
    return redteam.generate(request.param)


def test_each_half_has_over_a_thousand_messages_of_every_kind(half_samples: list[RedTeamSample]) -> None:
    assert len(half_samples) >= 1000
    kinds = Counter(sample.kind for sample in half_samples)
    assert set(kinds) == set(KINDS)
    positive = [kind for kind in KINDS if not kind.startswith("negative_")]
    assert len(positive) >= 15
    assert min(kinds.values()) >= len(half_samples) // len(KINDS)
    languages = Counter(sample.language for sample in half_samples)
    assert set(languages) == set(redteam.LANGUAGES)
    assert min(languages.values()) >= 100


def test_generation_is_deterministic_and_prefixes_are_the_same_messages() -> None:
    first = redteam.generate("heldout", 120)
    assert first == redteam.generate("heldout", 120)
    assert redteam.generate("heldout", 40) == first[:40]
    assert redteam.make_sample(TUNING, "phone_words", 5) == redteam.make_sample(TUNING, "phone_words", 5)
    assert redteam.make_sample(TUNING, "phone_words", 5) != redteam.make_sample(TUNING, "phone_words", 6)


def test_spans_point_at_labelled_values(half_samples: list[RedTeamSample]) -> None:
    for sample in half_samples:
        previous_end = 0
        for span in sample.spans:
            value = sample.text[span.start : span.end]
            assert value and value == value.strip(), (sample.kind, value)
            assert span.entity_type in redteam.ENTITY_TYPES
            assert span.start >= previous_end, "gold spans do not overlap"
            previous_end = span.end
            assert "{" not in value or sample.kind == "email_bracketed"
        assert not _UNFILLED.search(sample.text), sample.text
        if sample.negative:
            assert sample.spans == ()
        else:
            assert sample.spans, sample.text
            assert any(span.kind == sample.kind for span in sample.spans), (sample.kind, sample.text)


def test_checksummed_values_are_valid(half_samples: list[RedTeamSample]) -> None:
    seen: Counter[str] = Counter()
    for sample in half_samples:
        for span in sample.spans:
            value = sample.text[span.start : span.end]
            if span.entity_type == "CREDIT_CARD":
                assert redteam.luhn_valid(value), value
                seen["card"] += 1
            elif span.entity_type == "IBAN_CODE":
                assert redteam.iban_valid(value), value
                seen["iban"] += 1
            elif span.entity_type == "NATIONAL_ID":
                assert _national_id_valid(sample.language, value), (sample.language, value)
                seen["national"] += 1
        if sample.kind == "negative_numbers":
            for number in re.findall(r"\d[\d -]{14,}\d", sample.text):
                assert not redteam.luhn_valid(number), number
                seen["nonluhn"] += 1
    assert min(seen.values()) >= 20 and len(seen) == 4


def test_phone_numbers_are_valid_for_their_region(half_samples: list[RedTeamSample]) -> None:
    regions = {"en": ("US", "GB"), "de": ("DE",), "fr": ("FR",), "es": ("ES",), "it": ("IT",), "pt": ("PT",)}
    regions["nl"] = ("NL",)
    checked = 0
    for sample in half_samples:
        for span in sample.spans:
            if span.entity_type != "PHONE_NUMBER":
                continue
            digits = _phone_digits(sample.language, sample.text[span.start : span.end])
            assert any(_valid_phone(digits, region) for region in regions[sample.language]), digits
            checked += 1
    assert checked >= 150


def test_test_names_are_disjoint_from_the_detector_name_lists() -> None:
    lists = faker_name_lists()
    for half in HALVES.values():
        for name in redteam.person_names(half):
            for word in re.findall(r"[^\W\d_]+", name.casefold()):
                assert word not in lists.first and word not in lists.last, (half.name, name)


def test_halves_differ_in_seed_templates_names_and_places() -> None:
    assert TUNING.seed != HELDOUT.seed
    for language in redteam.LANGUAGES:
        assert not set(TUNING.templates[language]) & set(HELDOUT.templates[language])
        tuning, heldout = TUNING.names[language], HELDOUT.names[language]
        assert not set(tuning.streets) & set(heldout.streets)
        assert not {town for town, _ in tuning.towns} & {town for town, _ in heldout.towns}
    assert not redteam.person_names(TUNING) & redteam.person_names(HELDOUT)
    for kind, by_language in TUNING.negatives.items():
        for language, templates in by_language.items():
            assert not set(templates) & set(HELDOUT.negatives[kind][language])
    assert TUNING.styles.url_shapes != HELDOUT.styles.url_shapes


def test_heldout_half_is_unchanged() -> None:
    """The held-out half is fixed once committed: a change here means the yardstick moved.

    If a dependency update (Faker's IBANs, phonenumbers' example numbers) changes it, update the digest in
    the same commit and say so; never change it together with a detector change.
    """
    samples = redteam.generate("heldout", 400)
    canonical = json.dumps(
        [
            [s.text, s.kind, s.language, [[g.entity_type, g.start, g.end, g.kind] for g in s.spans]]
            for s in samples
        ],
        ensure_ascii=False,
    )
    assert hashlib.sha256(canonical.encode()).hexdigest() == HELDOUT_DIGEST


HELDOUT_DIGEST = "755a3d7080641887c40a342e5e3a3f483c11ed5d2d6bfcf66cbbb3bf5a300d71"


_WORD_DIGITS = {
    word: str(digit) for words in redteam._DIGIT_WORDS.values() for digit, word in enumerate(words)
}


def _phone_digits(language: str, value: str) -> str:
    """Digits of a written phone number, number words read back ("plus", "più", ... become "+")."""
    out = []
    for token in re.findall(r"\+|[^\W\d_]+|\d", value.casefold()):
        if token in ("+", "plus", "más", "più", "mais"):
            out.append("+")
        elif token.isdigit():
            out.append(token)
        else:
            out.append(_WORD_DIGITS[token])
    text = "".join(out)
    return "+" + text[2:] if text.startswith("00") else text


def _valid_phone(digits: str, region: str) -> bool:
    try:
        number = phonenumbers.parse(digits, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number) and (
        digits.startswith("+") or phonenumbers.region_code_for_number(number) == region
    )


def _national_id_valid(language: str, value: str) -> bool:
    compact = re.sub(r"[^0-9A-Za-z]", "", value).upper()
    if language == "es":
        return compact[-1] == "TRWAGMYFPDXBNJZSQVHLCKE"[int(compact[:-1]) % 23]
    if language == "nl":
        digits = [int(c) for c in compact]
        return sum(d * w for d, w in zip(digits[:8], range(9, 1, -1), strict=True)) % 11 == digits[8]
    if language == "fr":
        return 97 - int(compact[:13]) % 97 == int(compact[13:])
    if language == "pt":
        digits = [int(c) for c in compact]
        remainder = sum(d * w for d, w in zip(digits[:8], range(9, 1, -1), strict=True)) % 11
        return digits[8] == (0 if remainder < 2 else 11 - remainder)
    if language == "de":
        product = 10
        for char in compact[:10]:
            product = (((int(char) + product) % 10 or 10) * 2) % 11
        return (11 - product) % 10 == int(compact[10])
    if language == "it":
        return _it_fiscal_code_valid(compact)
    return False


_IT_ODD = [1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24, 23]


def _it_fiscal_code_valid(code: str) -> bool:
    """The check letter of an Italian fiscal code (odd positions by the official table, even by value)."""
    if len(code) != 16:
        return False
    total = 0
    for index, char in enumerate(code[:15]):
        value = int(char) if char.isdigit() else ord(char) - ord("A")
        total += _IT_ODD[value] if index % 2 == 0 else value
    return code[15] == chr(ord("A") + total % 26)
