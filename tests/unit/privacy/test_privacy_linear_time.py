"""Analysis in linear time: no regex blow-up on adversarial input, and a timeout backstop that fails closed.

CPU time of the analysing thread (``time.thread_time``) is compared within one run, as ratios, so the bounds
hold on a loaded machine; they are generous (the goal is 1.5x, the test allows 3x) so the test is not flaky.
"""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Callable

import pytest
from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer
from presidio_analyzer.recognizer_registry import RecognizerRegistry

from custos.bench.privacy import HAND_WRITTEN, generate_dataset
from custos.privacy.patterns import (
    REGEX_TIMEOUT_KEY,
    REGEX_TIMEOUTS,
    TIMEOUT_EXPLANATION,
    BackstopPatternMixin,
    is_timeout_result,
)
from custos.privacy.pseudonymize import Pseudonymizer

SIZE = 32_000


def _fill(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


#: Shapes that made a pattern quadratic (or worse) before, and neighbours of them.
ADVERSARIAL: dict[str, Callable[[int], str]] = {
    "repeated hyphenated words": lambda n: _fill("well-known ", n),
    "one long hyphenated word": lambda n: _fill("well-known-", n),
    "hyphenated word ending in @": lambda n: _fill("well-known-", n - 1) + "@",
    "capitalised hyphenated word": lambda n: _fill("Well-Known-", n),
    "label then spaces": lambda n: "order" + " " * (n - 5),
    "birth label then spaces": lambda n: "born" + " " * (n - 4),
    "street then spaces": lambda n: "12 Main Street" + " " * (n - 14),
    "dotted word after @": lambda n: "a@" + _fill("b.", n - 2),
    "digits and dots": lambda n: _fill("1.", n),
    "spelled separators": lambda n: _fill("a at b dot ", n),
    "digit words": lambda n: _fill("one two ", n),
    "label words": lambda n: _fill("order no ", n),
}


def _benign(size: int) -> str:
    text = " ".join(sample.text for sample in generate_dataset(120, seed=3))
    return _fill(text + " ", size)


def _cpu(fn: Callable[[], object]) -> float:
    """CPU seconds of this thread for ``fn``, without a garbage collection of the whole heap in the middle."""
    gc.disable()
    try:
        started = time.thread_time()
        fn()
        return time.thread_time() - started
    finally:
        gc.enable()


@pytest.fixture(scope="module")
def benign_cost(pseudonymizer: Pseudonymizer) -> float:
    text = _benign(SIZE)
    pseudonymizer.analyze([text])  # warm caches (regex compilation, name lists)
    return min(_cpu(lambda: pseudonymizer.analyze([text])) for _ in range(2))


@pytest.mark.parametrize(
    "shape",
    [
        "repeated hyphenated words",
        "one long hyphenated word",
        "hyphenated word ending in @",
        "label then spaces",
        "dotted word after @",
        "spelled separators",
    ],
)
def test_a_32k_adversarial_message_costs_no_more_than_a_benign_one(
    pseudonymizer: Pseudonymizer, benign_cost: float, shape: str
) -> None:
    text = ADVERSARIAL[shape](SIZE)
    timeouts = REGEX_TIMEOUTS.total()
    cost = _cpu(lambda: pseudonymizer.analyze([text]))
    assert cost < 3 * benign_cost, f"{shape}: {cost:.2f} s vs {benign_cost:.2f} s for benign text"
    assert REGEX_TIMEOUTS.total() == timeouts  # linear patterns, not the backstop


def _pattern_recognizers(analyzer: AnalyzerEngine) -> list[object]:
    return [r for r in analyzer.registry.recognizers if type(r).__name__ != "SpacyRecognizer"]


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_every_recognizer_is_linear_in_its_input(analyzer: AnalyzerEngine, shape: str) -> None:
    """Four times the input costs about four times as much (a quadratic pattern would cost sixteen)."""
    small, large = ADVERSARIAL[shape](4_000), ADVERSARIAL[shape](16_000)
    slow = []
    for recognizer in _pattern_recognizers(analyzer):
        analyze = functools.partial(
            recognizer.analyze,  # type: ignore[attr-defined]
            entities=list(recognizer.supported_entities),  # type: ignore[attr-defined]
            nlp_artifacts=None,
        )
        analyze(small)
        small_cost = min(_cpu(lambda: analyze(small)) for _ in range(2))  # noqa: B023 (called here)
        large_cost = _cpu(lambda: analyze(large))  # noqa: B023
        if large_cost > 8 * small_cost + 0.05:  # measure again before calling it slow
            large_cost = _cpu(lambda: analyze(large))  # noqa: B023
        if large_cost > 8 * small_cost + 0.05:
            slow.append(f"{recognizer.name}: {small_cost:.3f} s -> {large_cost:.3f} s")  # type: ignore[attr-defined]
    assert slow == []


def test_no_recognizer_reaches_its_timeout_on_normal_text(pseudonymizer: Pseudonymizer) -> None:
    texts = [sample.text for sample in generate_dataset(200, seed=11)] + [s.text for s in HAND_WRITTEN]
    texts.append(_benign(SIZE))
    timeouts = REGEX_TIMEOUTS.total()
    for text in texts:
        spans = pseudonymizer.analyze([text]).spans[0]
        assert not any(is_timeout_result(span.winner) for span in spans)
    assert REGEX_TIMEOUTS.total() == timeouts


class _CatastrophicRecognizer(BackstopPatternMixin, PatternRecognizer):
    """A pattern that backtracks exponentially on a run of "a" without "b", with a short time limit."""

    regex_timeout_s = 0.05

    def __init__(self) -> None:
        super().__init__(
            supported_entity="ORDER_ID",
            name="CatastrophicRecognizer",
            patterns=[Pattern("five digits, or a's then b", r"\d{5}|(?:a|aa)+b", 0.9)],
        )


def test_a_timeout_masks_the_unanalysed_rest_and_is_marked_for_the_audit(analyzer: AnalyzerEngine) -> None:
    engine = AnalyzerEngine(
        registry=RecognizerRegistry(recognizers=[_CatastrophicRecognizer()], supported_languages=["en"]),
        nlp_engine=analyzer.nlp_engine,
        supported_languages=["en"],
    )
    text = "order 12345 then " + "a" * 60 + " and jane.doe@example.com at the end"
    timeouts = REGEX_TIMEOUTS.snapshot().get("CatastrophicRecognizer", 0)
    result = Pseudonymizer(engine, entities=["ORDER_ID"]).pseudonymize([text])
    assert REGEX_TIMEOUTS.snapshot()["CatastrophicRecognizer"] == timeouts + 1
    # The match before the timeout is kept; everything after it is masked, nothing passes unanalysed.
    assert result.texts[0] == "order <ORDER_ID_1><ORDER_ID_2>"
    marked = [f for f in result.findings if f.explanation.get("textual_explanation") == TIMEOUT_EXPLANATION]
    assert [(f.start, f.end) for f in marked] == [(11, len(text))]
    assert "jane" not in str([f.to_audit() for f in result.findings])  # the audit form holds no text


def test_the_timeout_result_carries_its_mark() -> None:
    recognizer = _CatastrophicRecognizer()
    results = recognizer.analyze("a" * 60, ["ORDER_ID"])
    assert [(r.start, r.end) for r in results] == [(0, 60)]
    assert results[0].recognition_metadata[REGEX_TIMEOUT_KEY] is True
