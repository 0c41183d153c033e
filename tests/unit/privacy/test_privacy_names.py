"""PERSON by name lists and cues: lower-case and cued names are found, ordinary words are not."""

from __future__ import annotations

import pytest

from custos.privacy.names import COMMON_WORDS, NameLists, PersonNameRecognizer, faker_name_lists
from custos.privacy.pseudonymize import Pseudonymizer

LISTS = NameLists(
    first=frozenset({"tom", "ana", "lucia", "martin", "priya", "dana", "oliver"}),
    last=frozenset({"becker", "ferreira", "reid", "whitfield", "grant"}),
)


def names(text: str) -> list[str]:
    results = PersonNameRecognizer(LISTS).analyze(text, ["PERSON"])
    return sorted(text[r.start : r.end] for r in results)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hey its tom becker, can u change the address", ["tom becker"]),
        ("Hello, Ana Lucia Ferreira here.", ["Ana Lucia Ferreira"]),
        ("Ticket 4711 - Martin Beckenbauer cannot log in", ["Martin Beckenbauer"]),  # listed first name
        ("Ticket 4711 - Lukasz Reid cannot log in", ["Lukasz Reid"]),  # listed surname
        ("My name is Zoltan Kiss and I need help", ["Zoltan Kiss"]),  # strong cue, unlisted name
        ("Kind regards, Hudson Caird", ["Hudson Caird"]),
        ("Kind regards Liberal A Aranda", ["Liberal A Aranda"]),  # a middle initial that is also a word
        ("Regards, Dana A. Whitfield", ["Dana A. Whitfield"]),
        ("Cheers, Dana I will call", ["Dana"]),  # "I" before a lower-case word is no initial
        ("Dear Ms. Whitfield, thank you", ["Whitfield"]),
        ("hello, priya here - please call", ["priya"]),  # weak cue and a listed name
        ("date of birth 1990-01-02, name Hudson Caird, email h@c.de", ["Hudson Caird"]),
        ("Hi, I'm Dana Whitfield and I need help", ["Dana Whitfield"]),  # the contraction stays out
        ("Hi, I\u2019m Dana Whitfield and I need help", ["Dana Whitfield"]),  # typographic apostrophe
    ],
)
def test_names_are_found(text: str, expected: list[str]) -> None:
    assert names(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "this is urgent, please help",  # weak cue, no listed name
        "I am writing about my order",
        "Thanks for the quick help yesterday! Everything works now.",
        "Dear customer service, my card was charged twice",
        "the grant was paid into the account",  # a surname that is an ordinary word, lower case
        "Hi team, order 5512 is late",
    ],
)
def test_ordinary_text_has_no_names(text: str) -> None:
    assert names(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "I bought Nike Air Jordan shoes, and Chase Bank declined.",
        "Later today I will call, Grace Period ends soon",
        "Please write to the Victoria Station office.",
    ],
)
def test_product_and_place_names_are_not_names_with_the_real_lists(text: str) -> None:
    results = PersonNameRecognizer(faker_name_lists()).analyze(text, ["PERSON"])
    assert [text[r.start : r.end] for r in results] == []


def test_faker_lists_are_large_and_leave_common_words_out() -> None:
    lists = faker_name_lists()
    assert len(lists.first) > 5000 and len(lists.last) > 5000
    assert {"maria", "john", "jonas"} <= lists.first and {"smith", "garcia", "weber"} <= lists.last
    assert not (lists.first | lists.last) & COMMON_WORDS


def test_analyzer_masks_lower_case_names(pseudonymizer: Pseudonymizer) -> None:
    # spaCy's small model misses both names; the lists and the "user" cue find them.
    result = pseudonymizer.pseudonymize(["ok so jonas weber called again", "user Saraja Trpinc, customer"])
    assert result.texts == ["ok so <PERSON_1> called again", "user <PERSON_2>, customer"]
    assert {f.recognizer for f in result.findings} == {"PersonNameRecognizer"}
