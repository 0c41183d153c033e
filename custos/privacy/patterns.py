"""Pattern matching with a time limit that fails closed.

Every recognizer regex of Custos is written to run in time linear in its input (bounded or possessive
repeats, no nested ambiguity). The ``regex`` module's timeout is the backstop for a pattern that is not:
Presidio's own ``PatternRecognizer`` catches the ``TimeoutError`` and skips the pattern, so text a slow
pattern gave up on went to the model unanalysed. ``BackstopPatternMixin`` keeps the matches found before the
timeout and masks the rest of the text under the recognizer's entity type (a span the pattern could not
look at may hold the value it looks for), marks that result (``REGEX_TIMEOUT_KEY`` in its metadata and a
textual explanation the audit record keeps) and counts the event. No text is logged.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar

import regex
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

logger = logging.getLogger(__name__)

#: Seconds one pattern may take on one text before the rest of the text is masked. Linear patterns take
#: milliseconds on the 32,000-character messages the server admits; the limit only catches a regression.
REGEX_TIMEOUT_S = 2.0

#: Metadata key set on the result that masks text a pattern timed out on.
REGEX_TIMEOUT_KEY = "regex_timeout"

TIMEOUT_EXPLANATION = (
    "regex timeout: the pattern stopped before the end of the text; the rest of the text is masked"
)


class TimeoutCounter:
    """Thread-safe count of regex timeouts by recognizer name (for tests, metrics and diagnostics)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, recognizer: str) -> None:
        """Count one timeout of ``recognizer``."""
        with self._lock:
            self._counts[recognizer] += 1

    def snapshot(self) -> dict[str, int]:
        """The counts so far."""
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        """All timeouts so far."""
        with self._lock:
            return sum(self._counts.values())


#: Process-wide count of regex timeouts.
REGEX_TIMEOUTS = TimeoutCounter()


def is_timeout_result(result: RecognizerResult) -> bool:
    """Whether ``result`` is the conservative mask written after a regex timeout."""
    return bool((result.recognition_metadata or {}).get(REGEX_TIMEOUT_KEY))


def timeout_result(recognizer: object, entity_type: str, start: int, end: int) -> RecognizerResult:
    """The result that masks ``[start, end)`` after a timeout, with its explanation for the audit record."""
    explanation = PatternRecognizer.build_regex_explanation(
        recognizer_name(recognizer), "regex timeout", "", EntityRecognizer.MAX_SCORE, True, 0
    )
    explanation.textual_explanation = TIMEOUT_EXPLANATION
    return RecognizerResult(
        entity_type=entity_type,
        start=start,
        end=end,
        score=EntityRecognizer.MAX_SCORE,
        analysis_explanation=explanation,
        recognition_metadata={
            RecognizerResult.RECOGNIZER_NAME_KEY: recognizer_name(recognizer),
            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: recognizer_id(recognizer),
            REGEX_TIMEOUT_KEY: True,
        },
    )


def record_timeout(recognizer: object, pattern_name: str, timeout_s: float, masked: int) -> None:
    """Count and log a timeout: names and sizes only, never text."""
    REGEX_TIMEOUTS.add(recognizer_name(recognizer))
    logger.warning(
        "regex pattern %r of %s timed out after %.1f s; %d characters masked conservatively",
        pattern_name,
        recognizer_name(recognizer),
        timeout_s,
        masked,
    )


def recognizer_name(recognizer: object) -> str:
    """Presidio's recognizer name (set in its constructor without a declared type)."""
    return str(vars(recognizer).get("name") or type(recognizer).__name__)


def recognizer_id(recognizer: object) -> str:
    """Presidio's recognizer id (a property of ``EntityRecognizer``), for a mixin that does not inherit it."""
    value = getattr(recognizer, "id", None)
    return str(value) if value is not None else type(recognizer).__name__


class BackstopPatternMixin:
    """``PatternRecognizer.analyze`` with a time limit per pattern that masks what it could not analyse.

    Put it first among the bases of a ``PatternRecognizer`` subclass. Same results as Presidio's loop
    (validation, invalidation, explanations, duplicates removed) until a pattern times out.
    """

    #: Seconds per pattern and text; a class attribute so a test can lower it.
    regex_timeout_s: ClassVar[float] = REGEX_TIMEOUT_S
    #: Names of the patterns matched at every start (the ``regex`` module's ``overlapped``): patterns whose
    #: matches are checked afterwards, where a long match that fails its checksum must not hide a valid value
    #: that starts inside it ("account 77467446 and my IBAN is DE61...").
    overlapping_patterns: ClassVar[frozenset[str]] = frozenset()
    #: Pattern name -> a cheap regex the text must contain for the pattern to be tried at all (a pattern that
    #: may start at every position, but only matches near a rare word, skips most texts this way).
    pattern_prefilters: ClassVar[Mapping[str, regex.Pattern[str]]] = {}

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        """Match every pattern within the time limit; mask the unanalysed rest of the text on a timeout."""
        recognizer: Any = self  # a PatternRecognizer (see the class docstring)
        flags: int = regex_flags or recognizer.global_regex_flags or 0
        results: list[RecognizerResult] = []
        for pattern in recognizer.patterns:
            prefilter = self.pattern_prefilters.get(pattern.name)
            if prefilter is not None and prefilter.search(text) is None:
                continue
            if not pattern.compiled_regex or pattern.compiled_with_flags != flags:
                pattern.compiled_with_flags = flags
                pattern.compiled_regex = regex.compile(pattern.regex, flags=flags)
            analysed_to = 0
            overlapped = pattern.name in self.overlapping_patterns
            try:
                for match in pattern.compiled_regex.finditer(
                    text, overlapped=overlapped, timeout=self.regex_timeout_s
                ):
                    start, end = match.span()
                    analysed_to = start if overlapped else end
                    result = self.pattern_result(pattern, text, start, end, flags)
                    if result is not None:
                        results.append(result)
            except TimeoutError:
                record_timeout(recognizer, pattern.name, self.regex_timeout_s, len(text) - analysed_to)
                if analysed_to < len(text):
                    results.append(
                        timeout_result(recognizer, recognizer.supported_entities[0], analysed_to, len(text))
                    )
        return EntityRecognizer.remove_duplicates(results)

    def pattern_result(
        self, pattern: Pattern, text: str, start: int, end: int, flags: int
    ) -> RecognizerResult | None:
        """One match as Presidio scores it (validation raises to 1.0 or drops it), or None to drop it."""
        recognizer: Any = self  # a PatternRecognizer (see the class docstring)
        matched = text[start:end]
        if not matched:
            return None
        validation = recognizer.validate_result(matched)
        explanation = PatternRecognizer.build_regex_explanation(
            recognizer.name, pattern.name, pattern.regex, pattern.score, validation, flags
        )
        result = RecognizerResult(
            entity_type=recognizer.supported_entities[0],
            start=start,
            end=end,
            score=pattern.score,
            analysis_explanation=explanation,
            recognition_metadata={
                RecognizerResult.RECOGNIZER_NAME_KEY: recognizer.name,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: recognizer.id,
            },
        )
        if validation is not None:
            result.score = EntityRecognizer.MAX_SCORE if validation else EntityRecognizer.MIN_SCORE
        invalid = recognizer.invalidate_result(matched)
        if invalid is not None and invalid:
            result.score = EntityRecognizer.MIN_SCORE
        explanation.score = result.score
        return result if result.score > EntityRecognizer.MIN_SCORE else None
