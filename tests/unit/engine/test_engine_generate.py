"""The decode loop of TransformersEngine, against the tiny random model."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

from custos.engine.base import Engine
from custos.engine.local import TransformersEngine
from custos.engine.prompt import PLAIN_CUSTOMER_SERVICE_FORMAT
from custos.engine.types import ChatTurn, GenerationResult, PromptTooLong, SamplingParams
from custos.testing.tiny_engine import TINY_CHAT_TEMPLATE, build_tiny_engine
from tests.unit.engine.engine_asserts import assert_result_consistent

Turns = tuple[ChatTurn, ...]


def run(
    engine: Engine, turns: Turns, params: SamplingParams, **kwargs: object
) -> tuple[GenerationResult, list[str]]:
    deltas: list[str] = []
    result = engine.generate(turns, params, on_text=deltas.append, **kwargs)  # type: ignore[arg-type]
    assert_result_consistent(result, deltas)
    return result, deltas


def test_greedy_is_deterministic_across_engines_and_calls(turns: Turns) -> None:
    params = SamplingParams(max_new_tokens=24)
    first, _ = run(build_tiny_engine(seed=0), turns, params)
    second, _ = run(build_tiny_engine(seed=0), turns, params)
    third, _ = run(build_tiny_engine(seed=0), turns, params)
    assert first.text == second.text == third.text
    assert first.mean_logprob == second.mean_logprob
    assert len(first.text) >= 10
    assert run(build_tiny_engine(seed=1), turns, params)[0].text != first.text


def test_greedy_matches_transformers_generate(engine: TransformersEngine, turns: Turns) -> None:
    """The manual KV-cache loop produces what transformers' own greedy generate does, across the
    sliding-window boundary (the prompt is far longer than the tiny model's 16-token window)."""
    new = 40
    result, _ = run(engine, turns, SamplingParams(max_new_tokens=new))
    prompt = engine.prompt_format.encode(turns, engine.tokenizer)
    assert len(prompt) > 16 * 4
    with torch.inference_mode():
        out = engine.model.generate(
            torch.tensor([prompt]), max_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    generated = out[0, len(prompt) :].tolist()
    assert len(generated) == new
    assert result.completion_tokens == new
    assert result.text == engine.tokenizer.decode(generated, skip_special_tokens=True).strip()


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_seeded_sampling_is_reproducible(engine: TransformersEngine, turns: Turns, seed: int) -> None:
    params = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.95, seed=seed)
    assert run(engine, turns, params)[0].text == run(engine, turns, params)[0].text


def test_different_seeds_differ(engine: TransformersEngine, turns: Turns) -> None:
    texts = {
        run(engine, turns, SamplingParams(max_new_tokens=20, temperature=1.0, seed=seed))[0].text
        for seed in range(4)
    }
    assert len(texts) == 4


def test_sampling_does_not_touch_global_rng(engine: TransformersEngine, turns: Turns) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run(engine, turns, SamplingParams(max_new_tokens=5, temperature=1.0, seed=5))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=1),
        SamplingParams(max_new_tokens=7),
        SamplingParams(max_new_tokens=7, temperature=0.7, seed=3),
        SamplingParams(max_new_tokens=7, temperature=1.5, top_p=0.5, seed=3),
    ],
)
def test_max_new_tokens_gives_length(
    engine: TransformersEngine, turns: Turns, params: SamplingParams
) -> None:
    result, _ = run(engine, turns, params)
    assert result.finish_reason == "length"
    assert result.completion_tokens == params.max_new_tokens


@pytest.mark.parametrize(("start", "length"), [(0, 1), (3, 2), (5, 4), (12, 3)])
def test_stop_sequence_ends_and_is_excluded(
    engine: TransformersEngine, turns: Turns, start: int, length: int
) -> None:
    full, _ = run(engine, turns, SamplingParams(max_new_tokens=30))
    stop = full.text[start : start + length]
    result, _ = run(engine, turns, SamplingParams(max_new_tokens=30, stop=(stop,)))
    assert result.finish_reason == "stop_sequence"
    assert result.text == full.text[: full.text.index(stop)].rstrip()
    assert stop not in result.text
    assert result.completion_tokens < full.completion_tokens or full.text.endswith(stop)


def test_unmatched_stop_changes_nothing(engine: TransformersEngine, turns: Turns) -> None:
    full, full_deltas = run(engine, turns, SamplingParams(max_new_tokens=30))
    never = full.text[4:7] + "\x00"
    result, _ = run(engine, turns, SamplingParams(max_new_tokens=30, stop=(never,)))
    assert result.text == full.text
    assert result.finish_reason == "length"
    assert len(full_deltas) > 5, "text streams in many deltas"


def test_first_stop_wins_and_user_stop_reports_stop_sequence(
    engine: TransformersEngine, turns: Turns
) -> None:
    full, _ = run(engine, turns, SamplingParams(max_new_tokens=30))
    early, late = full.text[2:4], full.text[10:13]
    result, _ = run(engine, turns, SamplingParams(max_new_tokens=30, stop=(late, early)))
    assert result.text == full.text[: full.text.index(early)].rstrip()


def test_end_of_sequence_token_gives_stop(turns: Turns) -> None:
    reference = build_tiny_engine(seed=0)
    full, _ = run(reference, turns, SamplingParams(max_new_tokens=10))
    fifth_token = reference.tokenizer(full.text, add_special_tokens=False)["input_ids"][4]
    probe = TransformersEngine(
        reference.model,
        reference.tokenizer,
        info=reference.info,
        prompt_format=reference.prompt_format,
        eos_token_ids=[fifth_token],
    )
    result, _ = run(probe, turns, SamplingParams(max_new_tokens=10))
    assert result.finish_reason == "stop"
    assert result.completion_tokens <= 5
    assert full.text.startswith(result.text)


def test_prompt_format_stop_gives_stop(engine: TransformersEngine, turns: Turns) -> None:
    full, _ = run(engine, turns, SamplingParams(max_new_tokens=30))
    marker = full.text[6:9]
    fmt = dataclasses.replace(PLAIN_CUSTOMER_SERVICE_FORMAT, stop=(marker,))
    probe = TransformersEngine(engine.model, engine.tokenizer, info=engine.info, prompt_format=fmt)
    result, _ = run(probe, turns, SamplingParams(max_new_tokens=30))
    assert result.finish_reason == "stop"
    assert result.text == full.text[: full.text.index(marker)].rstrip()


def test_deltas_concatenate_to_text_when_sampling_bytes(engine: TransformersEngine, turns: Turns) -> None:
    """Sampling picks byte-fallback tokens, so deltas must never split a character."""
    for seed in range(5):
        result, deltas = run(engine, turns, SamplingParams(max_new_tokens=40, temperature=1.0, seed=seed))
        decoded = engine.tokenizer.decode(
            engine.tokenizer(result.text, add_special_tokens=False)["input_ids"], skip_special_tokens=True
        )
        assert decoded == result.text
        for delta in deltas[:-1]:
            assert not delta.endswith("\ufffd")


@pytest.mark.parametrize("flip_during_step", [0, 1, 2, 7])
def test_cancellation_stops_within_one_step(
    engine: TransformersEngine, turns: Turns, flip_during_step: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flag is set while model step ``flip_during_step`` runs (0: before generate is called).

    That step's token is still taken; no further model step may start.
    """
    flag = threading.Event()
    steps = 0
    steps_after_flip = 0
    forward = engine._forward

    def counting_forward(*args: Any) -> torch.Tensor:
        nonlocal steps, steps_after_flip
        steps += 1
        steps_after_flip += flag.is_set()
        logits = forward(*args)
        if steps == flip_during_step:
            flag.set()
        return logits

    monkeypatch.setattr(engine, "_forward", counting_forward)
    if flip_during_step == 0:
        flag.set()
    result, _ = run(engine, turns, SamplingParams(max_new_tokens=50), cancelled=flag.is_set)
    assert result.finish_reason == "cancelled"
    assert steps_after_flip == 0
    assert result.completion_tokens == flip_during_step


def test_cancellation_while_waiting_for_the_engine(engine: TransformersEngine, turns: Turns) -> None:
    gate = threading.Event()
    release = threading.Event()

    def slow_text(_delta: str) -> None:
        gate.set()
        release.wait(5)

    holder = threading.Thread(
        target=engine.generate, args=(turns, SamplingParams(max_new_tokens=3)), kwargs={"on_text": slow_text}
    )
    holder.start()
    assert gate.wait(5)
    started = time.monotonic()
    result = engine.generate(turns, SamplingParams(max_new_tokens=3), cancelled=lambda: True)
    release.set()
    holder.join(5)
    assert result.finish_reason == "cancelled" and result.completion_tokens == 0
    assert time.monotonic() - started < 1.0


def test_concurrent_generations_match_sequential(engine: TransformersEngine, turns: Turns) -> None:
    cases = [
        SamplingParams(max_new_tokens=15),
        SamplingParams(max_new_tokens=15, temperature=1.0, seed=1),
        SamplingParams(max_new_tokens=15, temperature=0.8, top_p=0.9, seed=2),
        SamplingParams(max_new_tokens=15, stop=("J",)),
    ]
    expected = [engine.generate(turns, p).text for p in cases]
    results: list[str | None] = [None] * len(cases)

    def work(i: int) -> None:
        results[i] = engine.generate(turns, cases[i]).text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == expected


@pytest.mark.parametrize(
    ("slack", "max_new", "raises"),
    [(None, 128, False), (0, 1, True), (1, 1, False), (10, 10, False), (10, 11, True), (10, 5000, True)],
)
def test_prompt_too_long(turns: Turns, slack: int | None, max_new: int, raises: bool) -> None:
    """The context cap is the prompt length plus ``slack`` tokens (None: the model's 4096)."""
    prompt_tokens = build_tiny_engine().count_prompt_tokens(turns)
    cap = None if slack is None else prompt_tokens + slack
    engine = build_tiny_engine(max_context_tokens=cap)
    if raises:
        with pytest.raises(PromptTooLong) as info:
            engine.generate(turns, SamplingParams(max_new_tokens=max_new))
        assert info.value.prompt_tokens == prompt_tokens
        assert info.value.max_new_tokens == max_new
        assert info.value.context_tokens == min(cap or 4096, 4096)
        assert str(prompt_tokens) in str(info.value)
    else:
        result = engine.generate(turns, SamplingParams(max_new_tokens=max_new))
        assert result.completion_tokens == max_new


def test_default_context_is_the_models(engine: TransformersEngine) -> None:
    assert engine.context_tokens == engine.model.config.max_position_embeddings


def test_prompt_tokens_match_count(engine: TransformersEngine, turns: Turns) -> None:
    result, _ = run(engine, turns, SamplingParams(max_new_tokens=1))
    assert result.prompt_tokens == engine.count_prompt_tokens(turns)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("abc", 3), ("<PERSON_1>", 10), ("ü", 2), ("<eos>", 5)],
)
def test_count_tokens(engine: TransformersEngine, text: str, tokens: int) -> None:
    assert engine.count_tokens(text) == tokens


@pytest.mark.parametrize(
    ("build", "params"),
    [
        (lambda: build_tiny_engine(precision="bf16"), SamplingParams(max_new_tokens=8)),
        (
            lambda: build_tiny_engine(prompt_format="chat-template", chat_template=TINY_CHAT_TEMPLATE),
            SamplingParams(max_new_tokens=8, temperature=0.9, seed=4),
        ),
    ],
    ids=["bf16", "chat-template"],
)
def test_other_configurations_generate(
    build: Callable[[], TransformersEngine], params: SamplingParams, turns: Turns
) -> None:
    engine = build()
    result, _ = run(engine, turns, params)
    assert result.finish_reason == "length" and result.completion_tokens == 8


def test_on_text_error_propagates_and_releases_engine(engine: TransformersEngine, turns: Turns) -> None:
    def boom(_delta: str) -> None:
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        engine.generate(turns, SamplingParams(max_new_tokens=5), on_text=boom)
    assert engine.generate(turns, SamplingParams(max_new_tokens=2)).completion_tokens == 2


def test_tiny_engine_model_info(engine: TransformersEngine) -> None:
    info = engine.info
    assert (info.name, info.quantization, info.precision, info.device) == (
        "tiny-random-gemma3",
        "none",
        "fp32",
        "cpu",
    )
    assert info.prompt_format == "plain-customer-service"
    assert info.prompt_format_sha256 == engine.prompt_format.sha256
    assert build_tiny_engine(seed=0).info == info
    assert build_tiny_engine(seed=1).info.cache_digest != info.cache_digest


def test_tiny_engine_builds_fast() -> None:
    build_tiny_engine(seed=3)  # imports are paid once per process
    started = time.perf_counter()
    build_tiny_engine(seed=4)
    assert time.perf_counter() - started < 0.5


def _greedy_first_token(engine: TransformersEngine, turns: Turns) -> int:
    prompt = engine.prompt_format.encode(turns, engine.tokenizer)
    with torch.inference_mode():
        return int(engine.model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax())


@pytest.mark.parametrize("batching", [False, True])
def test_min_new_tokens_keeps_end_of_sequence_away_until_reached(turns: Turns, batching: bool) -> None:
    """With the greedy first token declared end-of-sequence, an answer ends after one token unless
    min_new_tokens holds it off; then exactly the forced count comes out, and none of it is that token."""
    from custos.engine.scheduler import BatchingEngine

    inner = build_tiny_engine(seed=0)
    eos = _greedy_first_token(inner, turns)
    inner.eos_token_ids = frozenset({eos})
    engine: Engine = BatchingEngine(inner) if batching else inner
    try:
        free, _ = run(engine, turns, SamplingParams(max_new_tokens=12))
        assert (free.finish_reason, free.completion_tokens, free.text) == ("stop", 1, "")

        forced, _ = run(engine, turns, SamplingParams(max_new_tokens=12, min_new_tokens=12))
        assert (forced.finish_reason, forced.completion_tokens) == ("length", 12)
        assert eos not in inner.tokenizer(forced.text, add_special_tokens=False)["input_ids"]
        # The log-probs stay those of the model's own distribution: the banned token was its favourite,
        # so every chosen token (the first, at least) has probability below one half.
        assert forced.min_logprob is not None and forced.min_logprob < -0.69

        partly, _ = run(engine, turns, SamplingParams(max_new_tokens=40, min_new_tokens=5))
        assert partly.completion_tokens >= 5
    finally:
        engine.close()
