"""Classify scoring reuses the KV cache of a label set's constant prompt head across messages."""

from __future__ import annotations

import functools

import pytest
import torch

from custos.engine.local import TransformersEngine
from custos.engine.scoring import HEADS, MAX_HEADS, forget_prefixes, score_continuations
from custos.testing.tiny_engine import build_tiny_engine

HEAD = "Customer messages sorted by topic.\nMessage: where is my parcel?\nTopic: tracking\n\nMessage:"
MESSAGES = [" my card was charged twice", " please cancel the blue sofa", " the lamp arrived broken"]
LABELS = [" tracking", " refund", " a broken item", " x"]


@pytest.fixture()
def tiny() -> TransformersEngine:
    engine = build_tiny_engine()
    forget_prefixes(engine.model)
    return engine


def reference(engine: TransformersEngine, prefix: str, ending: str) -> float:
    """Log-likelihood of ``ending`` from one full forward pass over prefix + ending (no cache)."""
    prefix_ids, ending_ids = ids(engine, prefix, special=True), ids(engine, ending)
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([prefix_ids + ending_ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(float(logprobs[len(prefix_ids) + j - 1, t]) for j, t in enumerate(ending_ids))


def ids(engine: TransformersEngine, text: str, *, special: bool = False) -> list[int]:
    return list(engine.tokenizer(text, add_special_tokens=special)["input_ids"])


def score(engine: TransformersEngine, message: str, *, reuse: bool) -> tuple[tuple[float, ...], int]:
    result = score_continuations(
        engine.model,
        ids(engine, HEAD + message + "\nTopic:", special=True),
        [ids(engine, label) for label in LABELS],
        cache_kwarg=engine.cache_kwarg,
        reuse_prefix=reuse,
    )
    return result.logprobs, result.reused_tokens


def test_reusing_the_head_gives_the_same_scores(tiny: TransformersEngine) -> None:
    fresh = [score(tiny, m, reuse=False) for m in MESSAGES]
    reused = [score(tiny, m, reuse=True) for m in MESSAGES]
    for (want, none), (got, _) in zip(fresh, reused, strict=True):
        assert none == 0
        assert got == pytest.approx(want, abs=1e-4)


def test_only_the_message_runs_once_the_head_is_known(tiny: TransformersEngine) -> None:
    head = ids(tiny, HEAD + " ", special=True)  # byte-level: the space before every message is shared too
    first = [score(tiny, m, reuse=True)[1] for m in MESSAGES]
    # The first call runs its whole prompt; the second finds the head it shares with the first and runs it
    # once alone; the third reuses it.
    assert first == [0, len(head), len(head)]
    # The head replaced the probe that held the first message.
    assert HEADS.heads(tiny.model) == [tuple(head)]


def test_without_reuse_nothing_is_kept(tiny: TransformersEngine) -> None:
    score(tiny, MESSAGES[0], reuse=False)
    assert HEADS.heads(tiny.model) == []


def test_a_few_heads_are_kept_per_model(tiny: TransformersEngine) -> None:
    for n in range(MAX_HEADS + 2):
        # Different from the first character on: no two share a head worth keeping.
        prompt = ids(tiny, f"{'ABCDEFGH'[n]} label set with its own long head.\nMessage: hi", special=True)
        score_continuations(tiny.model, prompt, [ids(tiny, " a")], cache_kwarg=tiny.cache_kwarg)
    # Prompts that share no head: only the latest is kept, as a probe (one earlier message at most).
    kept = HEADS.heads(tiny.model)
    assert len(kept) == 1
    assert tiny.tokenizer.decode(kept[0], skip_special_tokens=True).startswith("F label set")
    for n in range(MAX_HEADS + 2):
        head = f"{'ABCDEFGH'[n]} label set with its own long head.\nMessage:"
        for message in (" hi", " hello"):
            prompt = ids(tiny, head + message, special=True)
            score_continuations(tiny.model, prompt, [ids(tiny, " a")], cache_kwarg=tiny.cache_kwarg)
    kept = HEADS.heads(tiny.model)
    assert len(kept) == MAX_HEADS
    assert (
        tiny.tokenizer.decode(kept[0], skip_special_tokens=True)
        == "F label set with its own long head.\nMessage: h"
    )
    forget_prefixes(tiny.model)
    assert HEADS.heads(tiny.model) == []


def test_a_short_prompt_and_its_labels_run_in_one_packed_pass(
    tiny: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inside the tiny model's sliding window (16 tokens): prompt and label tokens share one forward pass.
    prefix, labels = "Hi\nTopic:", [" a", " bc", " d"]
    calls: list[tuple[int, ...]] = []
    decoder = tiny.model.base_model
    forward = decoder.forward

    @functools.wraps(forward)
    def counting(*args: object, **kwargs: object) -> object:
        ids = kwargs["input_ids"]
        assert isinstance(ids, torch.Tensor)
        calls.append(tuple(ids.shape))
        return forward(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", counting)
    result = score_continuations(
        tiny.model,
        ids(tiny, prefix, special=True),
        [ids(tiny, label) for label in labels],
        cache_kwarg=tiny.cache_kwarg,
        reuse_prefix=False,
    )
    monkeypatch.setattr(decoder, "forward", forward)
    prefix_tokens = len(ids(tiny, prefix, special=True))
    # Byte-level tokens: each label feeds all its bytes but the last (" ", " b", " ").
    assert calls == [(1, prefix_tokens + 4)]
    for got, label in zip(result.logprobs, labels, strict=True):
        assert got == pytest.approx(reference(tiny, prefix, label), abs=1e-4)


def test_latency_messages_are_200_characters_and_share_no_message_head() -> None:
    from custos.cli.eval import LATENCY_MESSAGES

    assert [len(m) for m in LATENCY_MESSAGES] == [200] * len(LATENCY_MESSAGES)
    assert len({m.split()[0] for m in LATENCY_MESSAGES}) == len(LATENCY_MESSAGES)


def test_the_latency_baseline_keeps_no_prompt_head(tiny: TransformersEngine) -> None:
    from custos.cli.eval import _uncached_scorer

    score = _uncached_scorer(tiny)
    first = score(HEAD + MESSAGES[0], [" a"])
    second = score(HEAD + MESSAGES[1], [" a"])
    assert (first.reused_tokens, second.reused_tokens) == (0, 0)
    assert HEADS.heads(tiny.model) == []
