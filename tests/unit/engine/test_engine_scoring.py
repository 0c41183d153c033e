"""Continuation scoring on one shared prefix: exact against full forward passes, reproducible, batched."""

from __future__ import annotations

import math

import pytest
import torch

from custos.engine.local import TransformersEngine
from custos.engine.scoring import forget_prefixes, score_continuations
from custos.engine.types import PromptTooLong
from custos.tasks.labels import distribution
from custos.testing.tiny_engine import build_tiny_engine

PREFIX = "Customer message: where is my parcel? It should have arrived on Monday.\nTopic:"
LABELS = [" delivery", " refund", " a broken item", " x", " login trouble and passwords"]


def reference(engine: TransformersEngine, prefix: str, ending: str) -> float:
    """Log-likelihood of ``ending`` from one full forward pass over prefix + ending (no cache)."""
    tokenizer = engine.tokenizer
    prefix_ids = tokenizer(prefix, add_special_tokens=True)["input_ids"]
    ending_ids = tokenizer(ending, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prefix_ids + ending_ids])
    with torch.inference_mode():
        logits = engine.model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    start = len(prefix_ids)
    return sum(float(logprobs[start + j - 1, t]) for j, t in enumerate(ending_ids))


@pytest.fixture(scope="module")
def tiny() -> TransformersEngine:
    return build_tiny_engine()


def test_batched_scores_equal_full_forward_passes(tiny: TransformersEngine) -> None:
    # The prefix is longer than the tiny model's sliding window (16), so the cache reuse crosses it.
    scores = tiny.score_continuations(PREFIX, LABELS)
    assert scores.tokens == tuple(
        len(tiny.tokenizer(e, add_special_tokens=False)["input_ids"]) for e in LABELS
    )
    for got, ending in zip(scores.logprobs, LABELS, strict=True):
        assert got == pytest.approx(reference(tiny, PREFIX, ending), abs=1e-3)


def test_probabilities_sum_to_one_and_are_reproducible(tiny: TransformersEngine) -> None:
    first = tiny.score_continuations(PREFIX, LABELS)
    second = tiny.score_continuations(PREFIX, LABELS)
    assert first.logprobs == second.logprobs
    probs = distribution(first.logprobs, [str(i) for i in range(len(LABELS))], None)
    assert math.isclose(sum(probs), 1.0, rel_tol=1e-9)
    assert all(0 < p < 1 for p in probs)


def test_the_prefix_runs_once(tiny: TransformersEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    decoder = tiny.model.base_model
    forward = decoder.forward

    def counting(*args: object, **kwargs: object) -> object:
        ids = kwargs["input_ids"]
        assert isinstance(ids, torch.Tensor)
        calls.append(tuple(ids.shape))
        return forward(*args, **kwargs)

    forget_prefixes(tiny.model)
    monkeypatch.setattr(decoder, "forward", counting)
    tiny.score_continuations(PREFIX, LABELS)
    prefix_tokens = len(tiny.tokenizer(PREFIX)["input_ids"])
    # The prefix once, then every label in one batch (each label but its last token).
    assert calls == [(1, prefix_tokens), (len(LABELS), max(len(x) for x in LABELS) - 1)]


def test_single_token_labels_need_only_the_prefix_pass(tiny: TransformersEngine) -> None:
    prefix_ids = tiny.tokenizer(PREFIX)["input_ids"]
    scores = score_continuations(tiny.model, prefix_ids, [[70], [71]], cache_kwarg=tiny.cache_kwarg)
    assert scores.tokens == (1, 1)


def test_too_long_is_refused() -> None:
    engine = build_tiny_engine(max_context_tokens=40)
    with pytest.raises(PromptTooLong):
        engine.score_continuations(PREFIX, LABELS)
