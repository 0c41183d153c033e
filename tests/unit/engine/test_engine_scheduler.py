"""The continuous-batching scheduler against the tiny random model."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from custos.engine.scheduler import BatchingEngine
from custos.engine.types import ChatTurn, EngineBusy, GenerationResult, SamplingParams
from custos.server.metrics import Metrics
from custos.testing.tiny_engine import build_tiny_engine
from tests.unit.engine.engine_asserts import assert_result_consistent

PROMPTS = (
    (ChatTurn("user", "Hi, I am <PERSON_1>. Where is my order <ORDER_ID_1>?"),),
    (ChatTurn("user", "short"),),
    (ChatTurn("user", "A much longer question about a parcel that never came. " * 3),),
    (ChatTurn("user", "Ünïcode café, déjà vu?"),),
)


def _batching(**kwargs: int) -> BatchingEngine:
    return BatchingEngine(build_tiny_engine(seed=0), **kwargs)


def _run_together(
    engine: BatchingEngine, prompts: tuple[tuple[ChatTurn, ...], ...], params: list[SamplingParams]
) -> list[GenerationResult]:
    results: list[GenerationResult | None] = [None] * len(prompts)
    deltas: list[list[str]] = [[] for _ in prompts]

    def go(i: int) -> None:
        results[i] = engine.generate(prompts[i], params[i], on_text=deltas[i].append)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    done = [r for r in results if r is not None]
    assert len(done) == len(prompts)
    for result, parts in zip(done, deltas, strict=True):
        assert_result_consistent(result, parts)
    return done


def test_batched_output_equals_unbatched_greedy_token_for_token() -> None:
    engine = _batching(max_batch=4, max_queue=4)
    params = [SamplingParams(max_new_tokens=n) for n in (40, 25, 40, 33)]
    alone = [engine.inner.generate(p, q) for p, q in zip(PROMPTS, params, strict=True)]
    together = _run_together(engine, PROMPTS, params)
    for a, b in zip(alone, together, strict=True):
        assert (b.text, b.finish_reason, b.completion_tokens) == (
            a.text,
            a.finish_reason,
            a.completion_tokens,
        )
        assert b.mean_logprob == pytest.approx(a.mean_logprob, abs=1e-4)
    # They really ran as one batch: far fewer decode steps than tokens.
    assert engine.steps < sum(r.completion_tokens for r in together) / 2


def test_sampling_with_a_seed_is_the_same_batched_or_alone() -> None:
    engine = _batching(max_batch=4, max_queue=0)
    params = [SamplingParams(max_new_tokens=30, temperature=0.8, top_p=0.9, seed=s) for s in (1, 2, 3, 4)]
    alone = [engine.inner.generate(p, q).text for p, q in zip(PROMPTS, params, strict=True)]
    assert [r.text for r in _run_together(engine, PROMPTS, params)] == alone


def test_requests_join_and_leave_mid_generation() -> None:
    engine = _batching(max_batch=4, max_queue=4)
    long_params, short_params = SamplingParams(max_new_tokens=80), SamplingParams(max_new_tokens=12)
    expected_long = engine.inner.generate(PROMPTS[0], long_params)
    expected_short = engine.inner.generate(PROMPTS[2], short_params)

    joined = threading.Event()
    steps_when_joined: list[int] = []

    def on_long_text(_delta: str) -> None:
        if engine.steps >= 10 and not joined.is_set():
            steps_when_joined.append(engine.steps)
            joined.set()

    long_req = engine.submit(PROMPTS[0], long_params, on_text=on_long_text)
    assert joined.wait(60)
    short = engine.generate(PROMPTS[2], short_params)
    assert not long_req.done.is_set(), "the newcomer finished and left while the long request still ran"
    assert long_req.done.wait(60)
    assert long_req.result is not None
    assert (short.text, short.completion_tokens) == (expected_short.text, expected_short.completion_tokens)
    assert (long_req.result.text, long_req.result.completion_tokens) == (
        expected_long.text,
        expected_long.completion_tokens,
    )
    # The newcomer decoded alongside the long one: fewer steps than running both one after the other.
    assert engine.steps < expected_long.completion_tokens + expected_short.completion_tokens - 5


def _cancel_after(
    tokens: int, holder: list[object]
) -> tuple[Callable[[str], None], Callable[[], bool], list[int]]:
    """An on_text that raises a cancel flag once ``tokens`` tokens exist, noting the count at that moment."""
    flag = threading.Event()
    at_cancel: list[int] = []

    def on_text(_delta: str) -> None:
        request = holder[0] if holder else None
        produced = len(request.state.logprobs) if request is not None else 0  # type: ignore[attr-defined]
        if produced >= tokens and not flag.is_set():
            at_cancel.append(produced)
            flag.set()

    return on_text, flag.is_set, at_cancel


def test_cancellation_stops_within_one_step_and_frees_the_slot() -> None:
    engine = _batching(max_batch=2, max_queue=2)
    params = SamplingParams(max_new_tokens=200)
    other_params = SamplingParams(max_new_tokens=60)
    expected_other = engine.inner.generate(PROMPTS[1], other_params)
    holder: list[object] = []
    on_text, cancelled, at_cancel = _cancel_after(8, holder)
    request = engine.submit(PROMPTS[0], params, on_text=on_text, cancelled=cancelled)
    holder.append(request)
    other = engine.submit(PROMPTS[1], other_params)
    assert request.done.wait(60)
    assert request.result is not None
    assert request.result.finish_reason == "cancelled"
    assert at_cancel, "the cancel flag was never raised"
    # The flag went up while a step was running; no further step ran for this request.
    assert request.result.completion_tokens - at_cancel[0] == 0
    # Its place is free: a third request runs while the other one is still decoding.
    third = engine.generate(PROMPTS[2], SamplingParams(max_new_tokens=5))
    assert third.completion_tokens == 5
    assert other.done.wait(60)
    assert other.result is not None and other.result.text == expected_other.text


def test_a_request_cancelled_while_queued_never_runs() -> None:
    engine = _batching(max_batch=1, max_queue=2)
    first = engine.submit(PROMPTS[0], SamplingParams(max_new_tokens=60))
    gone = threading.Event()
    queued = engine.submit(PROMPTS[1], SamplingParams(max_new_tokens=60), cancelled=gone.is_set)
    gone.set()
    assert queued.done.wait(60)
    assert queued.result is not None
    assert (queued.result.finish_reason, queued.result.completion_tokens) == ("cancelled", 0)
    assert first.done.wait(60)


def test_a_full_queue_refuses_at_once() -> None:
    engine = _batching(max_batch=1, max_queue=1)
    stop = threading.Event()
    running = engine.submit(PROMPTS[0], SamplingParams(max_new_tokens=500), cancelled=stop.is_set)
    waiting = engine.submit(PROMPTS[1], SamplingParams(max_new_tokens=500), cancelled=stop.is_set)
    with pytest.raises(EngineBusy, match="queue is full"):
        engine.generate(PROMPTS[2], SamplingParams(max_new_tokens=5))
    stop.set()
    assert running.done.wait(60) and waiting.done.wait(60)
    # With room again, requests are accepted.
    assert engine.generate(PROMPTS[2], SamplingParams(max_new_tokens=3)).completion_tokens == 3


def test_long_prompts_are_prefilled_in_chunks_between_decode_steps() -> None:
    engine = _batching(max_batch=2, max_queue=0, prefill_chunk=64)
    stop = threading.Event()
    running = engine.submit(PROMPTS[1], SamplingParams(max_new_tokens=2000), cancelled=stop.is_set)
    while engine.steps < 3:
        threading.Event().wait(0.01)
    before = engine.steps
    long_prompt = engine.generate(PROMPTS[2], SamplingParams(max_new_tokens=1))
    during = engine.steps - before
    stop.set()
    assert long_prompt.prompt_tokens > 64 * 10
    # The running stream kept decoding, one step per prefill chunk.
    assert during >= long_prompt.prompt_tokens // 64 - 1
    assert running.done.wait(60)


def test_engine_metrics_are_reported() -> None:
    engine = _batching(max_batch=4, max_queue=4)
    metrics = Metrics()
    engine.observe(metrics)
    _run_together(engine, PROMPTS[:2], [SamplingParams(max_new_tokens=10)] * 2)

    def sample(name: str) -> float:
        value = metrics.registry.get_sample_value(name)
        assert value is not None, name
        return value

    assert sample("custos_engine_time_to_first_token_seconds_count") == 2
    assert sample("custos_engine_queue_wait_seconds_count") == 2
    assert sample("custos_engine_inter_token_seconds_count") == 18  # 9 tokens after the first, twice
    assert sample("custos_engine_tokens_per_second") > 0
    assert sample("custos_engine_queue_depth") == 0
    assert sample("custos_engine_batch_size") == 0
