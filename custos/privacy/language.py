"""Language detection for the language policy.

Text in a language without an analyzer pipeline is refused or analysed with pattern recognizers only, never
passed silently.

Uses langdetect's bundled profiles (no download), with a fixed seed so the same text always gets the same
answer. Short texts are not judged (too few characters to tell languages apart reliably).
"""

from __future__ import annotations

import re
import threading

#: Fewer letters than this and no language is claimed.
DEFAULT_MIN_LETTERS = 40
# Placeholders, e-mail addresses, URLs and digits say nothing about the language.
_NOISE = re.compile(r"<[A-Z_0-9]+>|\S+@\S+|https?://\S+|[0-9]+")


class LanguageDetector:
    """Callable ``text -> (language, probability) | None``; profiles load once, here, not at import."""

    def __init__(self, *, min_letters: int = DEFAULT_MIN_LETTERS, seed: int = 0) -> None:
        from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

        self._factory = DetectorFactory()
        self._factory.load_profile(PROFILES_DIRECTORY)
        self._factory.set_seed(seed)
        self._min_letters = min_letters
        self._lock = threading.Lock()

    def __call__(self, text: str) -> tuple[str, float] | None:
        """Return the most probable language code and its probability, or None for too little text."""
        cleaned = _NOISE.sub(" ", text)
        if sum(ch.isalpha() for ch in cleaned) < self._min_letters:
            return None
        from langdetect.lang_detect_exception import LangDetectException

        with self._lock:
            detector = self._factory.create()
            detector.append(cleaned)
            try:
                best = detector.get_probabilities()[0]
            except (LangDetectException, IndexError):
                return None
        return str(best.lang), float(best.prob)
