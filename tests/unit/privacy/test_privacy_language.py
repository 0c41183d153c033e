"""The language check: clearly English text is recognised without langdetect, everything else goes to it."""

from __future__ import annotations

from typing import Any

import pytest

from custos.privacy.language import SHORTCUT_PROBABILITY, EnglishShortcut, LanguageDetector

ENGLISH = (
    "Hello, I ordered the blue jacket from your shop last week and it has still not arrived. Could you "
    "please tell me where the parcel is? The tracking page shows nothing since Monday and I would like "
    "to know whether it was sent at all."
)
GERMAN = (
    "Hallo, mein Name ist Hans Müller und meine Bestellung ist leider noch nicht angekommen. Können Sie mir "
    "bitte sagen, wo das Paket gerade ist? Die Sendungsverfolgung zeigt seit Montag nichts mehr an."
)
FRENCH = (
    "Bonjour, je m'appelle Marie Dupont et ma commande n'est toujours pas arrivée. Pourriez-vous me dire "
    "où se trouve le colis? Le suivi ne montre plus rien depuis lundi."
)


class _CountingFactory:
    """Stands in for langdetect's factory: counts the detectors made, delegating to the real one."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.created = 0

    def create(self) -> Any:
        self.created += 1
        return self.real.create()


@pytest.fixture
def counted() -> tuple[LanguageDetector, _CountingFactory]:
    detector = LanguageDetector()
    factory = _CountingFactory(detector._factory)
    detector._factory = factory  # type: ignore[assignment]
    return detector, factory


def test_clear_english_is_decided_without_langdetect(
    counted: tuple[LanguageDetector, _CountingFactory],
) -> None:
    detector, factory = counted
    assert detector(ENGLISH) == ("en", SHORTCUT_PROBABILITY)
    assert factory.created == 0


POLISH = (
    "Dzień dobry, nazywam się Jan Kowalski i moje zamówienie jeszcze nie dotarło. Proszę o pomoc, "
    "ponieważ czekam już ponad dwa tygodnie."
)


@pytest.mark.parametrize(
    ("text", "language", "langdetect_runs"),
    [
        # Clear text of a served language: its own function words decide it.
        (GERMAN, "de", 0),
        (FRENCH, "fr", 0),
        # An English greeting and sign-off around a German message: still German.
        ("Hello, please help. " + GERMAN + " Thank you from Hans.", "de", None),
        # French with one English sentence: too few English function words for the English shortcut.
        (FRENCH + " Please call me back.", "fr", None),
        # A language that is not served always goes to langdetect.
        (POLISH, "pl", 1),
    ],
)
def test_other_languages_are_decided_by_function_words_or_langdetect(
    counted: tuple[LanguageDetector, _CountingFactory], text: str, language: str, langdetect_runs: int | None
) -> None:
    detector, factory = counted
    result = detector(text)
    assert result is not None and result[0] == language
    if langdetect_runs is not None:
        assert factory.created == langdetect_runs


def test_shortcut_agrees_with_langdetect_on_english() -> None:
    shortcut = EnglishShortcut()
    plain = LanguageDetector()
    for text in (
        ENGLISH,
        "Hi, this is about my account. The last invoice shows two charges for the same month and I cannot "
        "find out why. Could someone from billing please look into it and call me back?",
    ):
        assert shortcut(text)
        detector = plain._factory.create()
        detector.append(text)
        best = detector.get_probabilities()[0]
        assert best.lang == "en" and best.prob > 0.99


def test_shortcut_needs_enough_english_function_words() -> None:
    shortcut = EnglishShortcut()
    assert not shortcut("the order")  # too few words to judge
    assert not shortcut(GERMAN)
    assert not shortcut(FRENCH)
    # Function words of other languages weigh against it.
    assert not shortcut("the the the the the und der die das ist nicht mit sich auch noch eine")


def test_stop_word_lists_load_without_their_language_packages() -> None:
    """The shortcut reads the stop-word files alone: a language package costs seconds at start."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from custos.privacy.language import _EUROPEAN_LANGUAGES, _OTHER_LANGUAGES, EnglishShortcut\n"
        "EnglishShortcut()\n"
        "languages = {'en', *_EUROPEAN_LANGUAGES, *_OTHER_LANGUAGES}\n"
        "print(sorted(l for l in languages if f'spacy.lang.{l}' in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("language", ["en", "fr", "de", "es", "nl"])
def test_stop_word_lists_are_spacys(language: str) -> None:
    import importlib

    from custos.privacy.language import _stop_words

    expected = importlib.import_module(f"spacy.lang.{language}.stop_words").STOP_WORDS
    assert _stop_words([language]) == set(expected)


def test_clear_text_of_a_served_language_is_decided_without_langdetect(
    counted: tuple[LanguageDetector, _CountingFactory],
) -> None:
    detector, factory = counted
    text = (
        "Sehr geehrte Damen und Herren, ich habe meine Bestellung leider immer noch nicht erhalten. "
        "Können Sie mir bitte sagen, wann das Paket bei mir ankommt? Ich warte schon seit zwei Wochen."
    )
    assert detector(text) == ("de", SHORTCUT_PROBABILITY)
    assert factory.created == 0


@pytest.mark.parametrize(
    "text",
    [
        # Close languages that are not served must not be taken for a served one by the shortcut.
        "Bon dia, em dic Jordi Puig i la meva comanda encara no ha arribat. Podeu ajudar-me, si us plau?",
        "Goeie môre, my naam is Pieter en my bestelling het nog nie aangekom nie. Kan julle my help?",
        GERMAN,
        FRENCH,
    ],
)
def test_served_language_shortcut_agrees_with_langdetect(text: str) -> None:
    with_shortcut = LanguageDetector()
    without = LanguageDetector()
    without._clearly_served = lambda words: None  # type: ignore[method-assign]
    shortcut, plain = with_shortcut(text), without(text)
    assert (shortcut and shortcut[0]) == (plain and plain[0])
