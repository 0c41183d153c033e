"""Language detection: which language's pipeline analyses a message.

Text in a served language goes to that language's pipeline; text in a language without one is refused or
analysed with pattern recognizers only, never passed silently (``Pseudonymizer`` applies the policy).

Uses langdetect's bundled profiles (no download), loaded in sorted order and with a fixed seed, so the same
text gets the same answer in every process. Texts of fewer than ``DEFAULT_MIN_LETTERS`` letters are judged
by their function words alone, and only when those are decisive.

Names, e-mail domains and addresses say nothing about the language of a message, but langdetect counts
their letters like any others: "dob: ...; name: Astrid M Björgvinsdóttir" reads as Swedish. Its answer is
therefore checked against the function words (spaCy's stop-word lists) of the message: English wins when it
has at least as many as the candidate language; a served language with clearly more function words than
langdetect's choice wins over it (Spanish that langdetect calls Catalan); a language that is not served
and has no function words of its own in the message is no answer at all. Single letters are no evidence.

langdetect's sampling loop is pure Python and costs 2 to 15 ms per 500-character message. Text that is
clearly English is therefore recognised first by its function words: enough words that are English stop
words and a stop word of none of 33 other languages spaCy knows ("the", "please", "from", "would", ...), at
least 8 % of all words, and at most half as many stop words of the common European languages. Text that is
clearly in another served language is recognised the same way, by function words of that language and of
no other served one ("und", "nicht"; "vous", "les"), four times as many as any other served language's or
English's. Only the rest goes to langdetect; on 1,797 benchmark, red-team and test messages both shortcuts
gave langdetect's answer.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

#: Languages served by default: English first (the language of text too short to tell), then the others
#: that have a profile in ``custos.privacy.languages`` (here so that detection imports no analyzer code).
DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "it", "pt", "nl")

#: Fewer letters than this and no language is claimed.
DEFAULT_MIN_LETTERS = 12
# Placeholders, e-mail addresses, URLs, host names ("orange.fr"), spelled-out top-level domains ("dot de"),
# bracketed "at" words, words with digits (an IBAN's "IT60", "12h00") and digits say nothing about the
# language.
_NOISE = re.compile(
    r"<[A-Z_0-9]+>|\S+@\S+|https?://\S+|\b[\w\-]{1,63}(?:\.[\w\-]{1,63}){1,8}\b"
    r"|[\[({]?\b(?i:dot|punkt|point|punto|ponto|punt)\b[\])}]?[ \t]*[A-Za-z]{2,3}\b"
    r"|[\[({][ \t]*(?i:at|arroba|chiocciola|apenstaartje|klammeraffe|arobase)[ \t]*[\])}]"
    r"|\b\w{0,40}\d\w{0,40}|[0-9]+"
)
_WORD = re.compile(r"[^\W\d_]+")

#: spaCy languages with stop-word lists (Latin script) whose stop words do not count as English evidence.
_OTHER_LANGUAGES = [
    "af",
    "ca",
    "cs",
    "da",
    "de",
    "es",
    "et",
    "eu",
    "fi",
    "fr",
    "ga",
    "hr",
    "hu",
    "id",
    "is",
    "it",
    "lb",
    "lt",
    "lv",
    "ms",
    "nb",
    "nl",
    "pl",
    "pt",
    "ro",
    "sk",
    "sl",
    "sq",
    "sv",
    "tl",
    "tr",
    "vi",
    "yo",
]
#: Languages whose stop words (3 letters or more) count against the English shortcut.
_EUROPEAN_LANGUAGES = [
    "cs",
    "da",
    "de",
    "es",
    "fi",
    "fr",
    "hu",
    "it",
    "nb",
    "nl",
    "pl",
    "pt",
    "ro",
    "sv",
    "tr",
]
#: The shortcut's thresholds: English-only stop words, their share of all words, and at most this share of
#: European stop words relative to them.
_MIN_ENGLISH_WORDS = 5
_MIN_ENGLISH_SHARE = 0.08
_MAX_FOREIGN_PER_ENGLISH = 0.5
#: The probability reported for text recognised by the shortcut.
SHORTCUT_PROBABILITY = 1.0


def _stop_words(languages: Iterable[str]) -> set[str]:
    words: set[str] = set()
    for language in languages:
        words |= _language_stop_words(language)
    return words


def language_stop_words(language: str) -> set[str]:
    """The stop words spaCy lists for ``language`` (see ``_language_stop_words``)."""
    return _language_stop_words(language)


def _language_stop_words(language: str) -> set[str]:
    """The stop words spaCy lists for ``language``, read from its ``stop_words.py`` alone.

    Importing ``spacy.lang.<language>.stop_words`` runs the language package first, which compiles its
    tokenizer exceptions (French alone takes seconds); the stop-word module needs none of it.
    """
    import spacy.lang

    path = Path(spacy.lang.__file__).parent / language / "stop_words.py"
    spec = importlib.util.spec_from_file_location(f"_custos_stop_words_{language}", path)
    if spec is None or spec.loader is None:
        return set(importlib.import_module(f"spacy.lang.{language}.stop_words").STOP_WORDS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return set(module.STOP_WORDS)


class EnglishShortcut:
    """Whether a text is clearly English, by its function words (spaCy's stop-word lists)."""

    def __init__(self) -> None:
        english = _stop_words(["en"])
        self._english = frozenset(english - _stop_words(_OTHER_LANGUAGES))
        self._foreign = frozenset(w for w in _stop_words(_EUROPEAN_LANGUAGES) - english if len(w) >= 3)

    def __call__(self, cleaned: str) -> bool:
        """True when ``cleaned`` (text without placeholders, addresses and digits) is clearly English."""
        words = _WORD.findall(cleaned.lower())
        english = sum(word in self._english for word in words)
        if english < _MIN_ENGLISH_WORDS or english < _MIN_ENGLISH_SHARE * len(words):
            return False
        foreign = sum(word in self._foreign for word in words)
        return foreign <= _MAX_FOREIGN_PER_ENGLISH * english


class FunctionWords:
    """Function-word evidence for a language against English, from spaCy's stop-word lists.

    ``own(words, language)`` counts the words that are stop words of ``language`` and not of English;
    ``english(words, language)`` the words that are English stop words and not of ``language``.
    """

    def __init__(self) -> None:
        self._english = frozenset(_language_stop_words("en"))
        self._lists: dict[str, frozenset[str] | None] = {}
        self._lock = threading.Lock()

    def stop_words(self, language: str) -> frozenset[str]:
        """The stop words spaCy lists for ``language`` (empty where it has none)."""
        return self._english if language == "en" else (self._list(language) or frozenset())

    def _list(self, language: str) -> frozenset[str] | None:
        with self._lock:
            if language not in self._lists:
                try:
                    self._lists[language] = frozenset(_language_stop_words(language))
                except (OSError, ImportError, AttributeError):
                    self._lists[language] = None  # spaCy has no stop-word list for it
            return self._lists[language]

    def known(self, language: str) -> bool:
        """Whether spaCy has a stop-word list for ``language``."""
        return language == "en" or self._list(language) is not None

    def own(self, words: Sequence[str], language: str) -> int:
        """Words that are function words of ``language`` and not of English."""
        stop = self._list(language) or frozenset()
        return sum(1 for word in words if word in stop and word not in self._english)

    def english(self, words: Sequence[str], language: str) -> int:
        """Words that are English function words and not of ``language``."""
        stop = self._list(language) or frozenset()
        return sum(1 for word in words if word in self._english and word not in stop)


#: Function words of its own a language needs before a short text (too short for langdetect) is judged
#: to be in it, and how many times the runner-up's they must be.
_MIN_SHORT_TEXT_WORDS = 2
_SHORT_TEXT_MARGIN = 2
#: The served-language shortcut: distinct function words, their share of all words, and how many times the
#: runner-up's (another served language or English) they must be.
_CLEAR_MIN_WORDS = 4
_CLEAR_MIN_SHARE = 0.1
_CLEAR_MARGIN = 4
#: How many more function words another served language needs to override langdetect's served answer.
_OVERRIDE_MARGIN = 2


class LanguageDetector:
    """Callable ``text -> (language, probability) | None``; profiles load once, here, not at import.

    ``languages`` are the ones short texts may be judged to be in by their function words (the served
    ones); longer texts may be in any language langdetect knows.
    """

    def __init__(
        self,
        *,
        min_letters: int = DEFAULT_MIN_LETTERS,
        seed: int = 0,
        languages: Sequence[str] = DEFAULT_LANGUAGES,
    ) -> None:
        from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

        self._factory = DetectorFactory()
        # Sorted, so the language order (which breaks ties) is the same on every file system.
        profiles = []
        for name in sorted(os.listdir(PROFILES_DIRECTORY)):
            path = Path(PROFILES_DIRECTORY) / name
            if path.is_file() and not name.startswith("."):
                profiles.append(path.read_text(encoding="utf-8"))
        self._factory.load_json_profile(profiles)
        self._factory.set_seed(seed)
        self._min_letters = min_letters
        self._lock = threading.Lock()
        self._clearly_english = EnglishShortcut()
        self._function_words = FunctionWords()
        self._languages = tuple(languages)
        others = [self._function_words.stop_words(code) for code in self._languages if code != "en"]
        self._english_distinct = self._function_words.stop_words("en").difference(*others)
        # Function words of each served language that are function words of no other served one nor of
        # English ("und", "nicht"; "les", "vous"): the shortcut for clear text in a served language.
        self._distinct = {
            code: self._function_words.stop_words(code).difference(
                self._function_words.stop_words("en"),
                *(
                    self._function_words.stop_words(other)
                    for other in self._languages
                    if other not in ("en", code)
                ),
            )
            for code in self._languages
            if code != "en"
        }

    def __call__(self, text: str) -> tuple[str, float] | None:
        """Return the most probable language code and its probability, or None when it cannot be told."""
        cleaned = _NOISE.sub(" ", text)
        words = _WORD.findall(cleaned.lower())
        if sum(ch.isalpha() for ch in cleaned) < self._min_letters:
            return self._by_function_words(words)
        if self._clearly_english(cleaned):
            return "en", SHORTCUT_PROBABILITY
        clear = self._clearly_served(words)
        if clear is not None:
            return clear, SHORTCUT_PROBABILITY
        from langdetect.lang_detect_exception import LangDetectException

        with self._lock:
            detector = self._factory.create()
            detector.append(cleaned)
            try:
                best = detector.get_probabilities()[0]
            except (LangDetectException, IndexError):
                return None
        return self._decide([w for w in words if len(w) > 1], str(best.lang), float(best.prob))

    def _clearly_served(self, words: Sequence[str]) -> str | None:
        """A served language whose own function words dominate the text, decided without langdetect.

        langdetect's sampling loop costs about 15 ms per 500-character message; text with many function
        words of one served language and few of any other served language or English is that language.
        """
        counts = sorted(
            ((sum(1 for w in words if w in distinct), code) for code, distinct in self._distinct.items()),
            reverse=True,
        )
        if not counts:
            return None
        best, language = counts[0]
        runner_up = max(counts[1][0] if len(counts) > 1 else 0, self._english_only(words))
        if (
            best >= _CLEAR_MIN_WORDS
            and best >= _CLEAR_MIN_SHARE * len(words)
            and runner_up * _CLEAR_MARGIN <= best
        ):
            return language
        return None

    def _decide(self, words: Sequence[str], detected: str, probability: float) -> tuple[str, float] | None:
        """The answer of langdetect, checked against the message's function words (see the module docstring).

        The candidate is the language with most function words of its own among the served ones and the
        detected one; ties go to the detected language if served, then to a served one, so a Spanish message
        langdetect calls Catalan is served as Spanish. English wins when it has at least as many function
        words as the candidate (names and domains are not evidence); a language not served without any
        function words of its own is no answer ("Astrid Björgvinsdóttir" is not Swedish).
        Single letters are no evidence either ("Jana V Pátková": an initial, not a Slovak preposition).
        """
        evidence = self._function_words
        served = set(self._languages)
        candidates = {code for code in self._languages if code != "en"}
        if detected != "en" and evidence.known(detected):
            candidates.add(detected)
        if not candidates:
            return detected, probability
        best = max(
            sorted(candidates),
            key=lambda code: (evidence.own(words, code), code == detected and code in served, code in served),
        )
        # Close languages share function words: langdetect's served answer stands unless another served
        # language has clearly more ("Cara Gracinda, recebemos o seu pedido e estamos...": Portuguese).
        if (
            detected in served
            and detected != "en"
            and best != detected
            and evidence.own(words, best) < evidence.own(words, detected) + _OVERRIDE_MARGIN
        ):
            best = detected
        own = evidence.own(words, best)
        english = evidence.english(words, best)
        if detected == "en":
            if own >= _MIN_SHORT_TEXT_WORDS and own > english:
                return best, probability
            return "en", probability
        if not evidence.known(detected):
            return detected, probability  # nothing to check it against
        if english >= own and english > 0:
            return "en", probability
        if own == 0 and best not in served:
            return None  # letters of names and domains only, of a language not served
        return best, probability

    def _by_function_words(self, words: Sequence[str]) -> tuple[str, float] | None:
        """A short text's language when its function words decide it among ``languages``, else None."""
        evidence = self._function_words
        counts = sorted(
            (
                (evidence.own(words, code) if code != "en" else self._english_only(words), code)
                for code in self._languages
            ),
            reverse=True,
        )
        if not counts:
            return None
        (best, language), runner_up = counts[0], (counts[1][0] if len(counts) > 1 else 0)
        if best >= _MIN_SHORT_TEXT_WORDS and best >= _SHORT_TEXT_MARGIN * runner_up:
            return language, SHORTCUT_PROBABILITY
        return None

    def _english_only(self, words: Sequence[str]) -> int:
        """English function words that are function words of no other served language."""
        return sum(1 for word in words if word in self._english_distinct)
