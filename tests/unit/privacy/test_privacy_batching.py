"""Batch analysis: calls waiting while one is analysed go through spaCy together, each gets its own result."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from presidio_analyzer import AnalyzerEngine

from custos.privacy.batching import AnalysisBatcher
from custos.privacy.errors import UnsupportedLanguage
from custos.privacy.pseudonymize import Analysis, Pseudonymizer


def _fake_analysis(texts: Sequence[str]) -> Analysis:
    return Analysis(safe_texts=list(texts), spans=[[] for _ in texts], neutralized=0)


def test_calls_waiting_during_an_analysis_are_analysed_as_one_batch() -> None:
    release = threading.Event()
    batches: list[list[list[str]]] = []

    def analyze_many(calls: Sequence[Sequence[str]]) -> list[Analysis | Exception]:
        batches.append([list(c) for c in calls])
        if len(batches) == 1:
            release.wait(10)
        return [UnsupportedLanguage("refused") if c[0] == "bad" else _fake_analysis(c) for c in calls]

    batcher = AnalysisBatcher(analyze_many)
    results: dict[str, Any] = {}

    def call(text: str) -> None:
        try:
            results[text] = batcher.analyze([text]).safe_texts
        except UnsupportedLanguage as exc:
            results[text] = exc

    first = threading.Thread(target=call, args=("first",))
    first.start()
    while not batches:
        time.sleep(0.001)
    others = [threading.Thread(target=call, args=(t,)) for t in ("a", "bad", "b")]
    for thread in others:
        thread.start()
    while len(batcher._pending) < 3:  # all three wait behind the first analysis
        time.sleep(0.001)
    release.set()
    for thread in (first, *others):
        thread.join(10)
    assert list(batcher.batch_sizes) == [1, 3]
    assert sorted(batches[1]) == [["a"], ["b"], ["bad"]]
    assert results["first"] == ["first"] and results["a"] == ["a"] and results["b"] == ["b"]
    assert isinstance(results["bad"], UnsupportedLanguage)  # only the refused call fails


def test_an_unexpected_error_reaches_every_caller_of_the_batch_and_the_batcher_recovers() -> None:
    calls = 0

    def analyze_many(batch: Sequence[Sequence[str]]) -> list[Analysis | Exception]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return [_fake_analysis(c) for c in batch]

    batcher = AnalysisBatcher(analyze_many)
    with pytest.raises(RuntimeError):
        batcher.analyze(["x"])
    assert batcher.analyze(["y"]).safe_texts == ["y"]


def test_analyze_many_matches_analysing_each_call_alone(analyzer: AnalyzerEngine) -> None:
    def detector(text: str) -> tuple[str, float] | None:
        return ("pl", 0.99) if "Dzień" in text else ("de", 0.99) if "Hallo" in text else ("en", 0.99)

    pseudonymizer = Pseudonymizer(analyzer, language_detector=detector)
    calls = [
        ["Hi, I am John Smith, card 4111 1111 1111 1111.", "Call +1 212 555 0187."],
        ["Dzień dobry, nazywam się Jan Kowalski, proszę o telefon."],
        ["Mail maria.garcia@example.com about order #A-55120."],
        ["Hallo, ich heiße Jana Müller und wohne in Berlin, bitte rufen Sie mich an."],
    ]
    together = pseudonymizer.analyze_many(calls)
    assert isinstance(together[1], UnsupportedLanguage)  # Polish has no pipeline
    for index in (0, 2, 3):
        alone = pseudonymizer.analyze(calls[index])
        batched = together[index]
        assert isinstance(batched, Analysis)
        assert [[(s.start, s.end, s.winner.entity_type) for s in spans] for spans in batched.spans] == [
            [(s.start, s.end, s.winner.entity_type) for s in spans] for spans in alone.spans
        ]
        assert batched.counts() == alone.counts() and batched.counts()


def test_a_single_message_skips_spacys_pipe_with_the_same_result(
    analyzer: AnalyzerEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pseudonymizer = Pseudonymizer(analyzer)
    text = "Hi, I am Maria Lopez, call me on +1 212 555 0187 about order 44120."
    batched = pseudonymizer.analyze_many([[text], ["Second message from John Smith."]])[0]
    assert isinstance(batched, Analysis)

    def no_batch(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("process_batch used for one message")

    monkeypatch.setattr(analyzer.nlp_engine, "process_batch", no_batch)
    single = pseudonymizer.analyze([text])
    key = [(s.start, s.end, s.winner.entity_type, s.winner.score) for s in single.spans[0]]
    assert key == [(s.start, s.end, s.winner.entity_type, s.winner.score) for s in batched.spans[0]]
    assert {"PERSON", "PHONE_NUMBER", "ORDER_ID"} <= single.entity_types()
