"""Score continuations of one shared prefix: the log-likelihood Classify turns into probabilities.

Each token of the prefix runs once. When the whole sequence fits the model's sliding window (and the
model uses SDPA attention), the prefix and every continuation run in one packed forward pass: the
continuations sit side by side after the prefix, each at the positions it would have right after the
prefix, and an explicit mask lets each attend to the prefix and to its own earlier tokens only. Otherwise
the prefix runs first and its KV cache is repeated across a batch of right-padded continuations (under
causal attention padding after a token never changes that token's logits).

Three things keep a call cheap on a CPU:

* The constant head of a prompt (a label set's instructions and few-shot examples, everything before the
  message) is computed once: the KV cache of the longest token prefix shared with an earlier call is kept
  per model (a few entries, most recently used first) and copied for each later call, so only the
  message's tokens run through the model. A prompt seen for the first time is kept whole (a probe) until a
  later call finds the head the two share; that head then replaces it. One probe is kept per model at
  most, so at most one earlier message's KV stays in memory, and nowhere else.
* The vocabulary projection (the largest matrix of a small model) runs once, over the prefix's last
  position and every position that predicts a label token together, not over every position.
* The packed pass reads the model's weights once for the prefix and the labels together.
"""

from __future__ import annotations

import copy
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: A shared head shorter than this is not worth a cache entry (one more forward pass would cost more).
MIN_SHARED_TOKENS = 16
#: Prompt heads kept per model (label sets in use at the same time).
MAX_HEADS = 4


@dataclass(frozen=True)
class ContinuationScores:
    """Per continuation: the summed natural-log probability of its tokens and their count."""

    logprobs: tuple[float, ...]
    tokens: tuple[int, ...]
    prefix_tokens: int
    seconds: float
    reused_tokens: int = 0


@dataclass
class _Head:
    ids: tuple[int, ...]
    cache: Any
    probe: bool = False


class _HeadCache:
    """Per model: the KV caches of recent prompt heads, found by token prefix."""

    def __init__(self) -> None:
        self._heads: weakref.WeakKeyDictionary[Any, list[_Head]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def forget(self, model: Any) -> None:
        """Drop every head kept for ``model``."""
        with self._lock:
            self._heads.pop(model, None)

    def find(self, model: Any, ids: Sequence[int]) -> tuple[int, Any]:
        """(tokens covered, a private copy of their cache) for the longest kept head that ``ids`` extends.

        A head is used only when at least one token of ``ids`` follows it. (0, None) when none fits.
        """
        with self._lock:
            heads = self._heads.get(model, [])
            fitting = [h for h in heads if len(h.ids) < len(ids) and tuple(ids[: len(h.ids)]) == h.ids]
            if not fitting:
                return 0, None
            best = max(fitting, key=lambda h: len(h.ids))
            heads.remove(best)
            heads.insert(0, best)
            return len(best.ids), copy.deepcopy(best.cache)

    def shared_length(self, model: Any, ids: Sequence[int]) -> int:
        """The longest token prefix ``ids`` shares with a kept head that it does not extend (0: none)."""
        with self._lock:
            longest = 0
            for head in self._heads.get(model, []):
                n = 0
                for a, b in zip(head.ids, ids, strict=False):
                    if a != b:
                        break
                    n += 1
                longest = max(longest, n)
            return min(longest, len(ids) - 1)

    def keep(self, model: Any, ids: Sequence[int], cache: Any, *, probe: bool = False) -> None:
        """Keep a copy of ``cache`` (covering exactly ``ids``) as the newest head of ``model``.

        A probe is a whole prompt seen once (its message included); a model keeps one probe at most, and a
        head cut from it replaces it.
        """
        head = _Head(tuple(ids), copy.deepcopy(cache), probe)
        with self._lock:
            heads = [
                h
                for h in self._heads.get(model, [])
                if not (probe and h.probe) and h.ids[: len(head.ids)] != head.ids
            ]
            self._heads[model] = [head, *heads][:MAX_HEADS]

    def heads(self, model: Any) -> list[tuple[int, ...]]:
        """The token ids of the heads kept for ``model``, most recently used first."""
        with self._lock:
            return [h.ids for h in self._heads.get(model, [])]


HEADS = _HeadCache()


def forget_prefixes(model: Any) -> None:
    """Drop the prompt heads kept for ``model`` (for instance after its weights changed)."""
    HEADS.forget(model)


def score_continuations(
    model: PreTrainedModel,
    prefix_ids: Sequence[int],
    continuations: Sequence[Sequence[int]],
    *,
    cache_kwarg: str = "past_key_values",
    reuse_prefix: bool = True,
) -> ContinuationScores:
    """Log-likelihood of each continuation (token ids, none empty) after ``prefix_ids``.

    With ``reuse_prefix`` the KV cache of a prompt head shared with earlier calls is reused (see the
    module docstring); the scores are the same up to floating-point rounding.
    """
    import torch
    from transformers import DynamicCache

    if not prefix_ids or not continuations or any(len(c) == 0 for c in continuations):
        raise ValueError("the prefix and every continuation need at least one token")
    started = time.perf_counter()
    device = next(model.parameters()).device
    rows = len(continuations)
    width = max(len(c) for c in continuations)
    prefix_ids = list(prefix_ids)
    body = _body(model, cache_kwarg)
    with torch.inference_mode():
        reused, cache = HEADS.find(model, prefix_ids) if reuse_prefix else (0, None)
        if cache is None:
            cache = DynamicCache(config=model.config)
            shared = HEADS.shared_length(model, prefix_ids) if reuse_prefix else 0
            if shared >= MIN_SHARED_TOKENS:
                # A new head: run it alone once and keep it, then continue with the message.
                _run(model, body, cache_kwarg, prefix_ids[:shared], cache, start=0)
                HEADS.keep(model, prefix_ids[:shared], cache)
                reused = shared
        # Position j of a continuation predicts its token j + 1: feed every token but the last.
        rows_at = [i for i, tokens in enumerate(continuations) for _ in range(len(tokens) - 1)]
        cols_at = [j for tokens in continuations for j in range(len(tokens) - 1)]
        rest = prefix_ids[reused:]
        later = None
        if body is not None and _packable(model, len(prefix_ids) + len(rows_at)):
            # One pass: the rest of the prefix and every continuation side by side in one sequence, each
            # continuation attending to the prefix and to its own earlier tokens only.
            ids, positions, mask = _packed(prefix_ids, reused, continuations, device)
            states = _forward(model, body, cache_kwarg, ids, cache, positions=positions, mask=mask)[0]
            last = states[len(rest) - 1]
            if rows_at:
                later = states[len(rest) :]
            if reuse_prefix and not reused:
                # First sight of this prompt: keep it as the probe the next call looks for a shared head in.
                probe = copy.deepcopy(cache)
                if rows_at:
                    probe.crop(-len(rows_at))
                HEADS.keep(model, prefix_ids, probe, probe=True)
        else:
            last = _run(model, body, cache_kwarg, rest, cache, start=reused)
            if reuse_prefix and not reused:
                HEADS.keep(model, prefix_ids, cache, probe=True)
            if width > 1:
                cache.batch_repeat_interleave(rows)
                batch = torch.zeros((rows, width - 1), dtype=torch.long, device=device)
                for i, tokens in enumerate(continuations):
                    batch[i, : len(tokens) - 1] = torch.tensor(list(tokens[:-1]), dtype=torch.long)
                start = len(prefix_ids)
                positions = torch.arange(start, start + width - 1, device=device).expand(rows, -1)
                ones = torch.ones((rows, start + width - 1), dtype=torch.long, device=device)
                states = _forward(model, body, cache_kwarg, batch, cache, positions=positions, mask=ones)
                later = states[torch.tensor(rows_at), torch.tensor(cols_at)]
        targets = [tokens[0] for tokens in continuations] + [
            t for tokens in continuations for t in tokens[1:]
        ]
        if body is not None:
            # One vocabulary projection for the prefix's last position and every label position.
            hidden = last[None] if later is None else torch.cat([last[None], later])
            logits = _project(model, hidden)
        else:
            logits = last[None].float() if later is None else torch.cat([last[None], later]).float()
        # Row 0 (the prefix's last position) predicts every continuation's first token.
        at = [0] * rows + list(range(1, 1 + len(rows_at)))
        picked = logits[torch.tensor(at), torch.tensor(targets, dtype=torch.long, device=device)]
        norms = torch.logsumexp(logits, dim=-1)[torch.tensor(at)]
        values = (picked - norms).tolist()
    totals = values[:rows]
    for row, value in zip(rows_at, values[rows:], strict=True):
        totals[row] += value
    return ContinuationScores(
        logprobs=tuple(totals),
        tokens=tuple(len(c) for c in continuations),
        prefix_tokens=len(prefix_ids),
        seconds=time.perf_counter() - started,
        reused_tokens=reused,
    )


def _body(model: Any, cache_kwarg: str) -> Any:
    """The decoder without its vocabulary head, or None when the model does not expose both."""
    import inspect

    body = getattr(model, "base_model", None)
    if body is None or body is model or model.get_output_embeddings() is None:
        return None
    if cache_kwarg not in inspect.signature(body.forward).parameters:
        return None
    return body


def _packable(model: Any, tokens: int) -> bool:
    """Whether one packed pass with an explicit mask fits the model.

    It needs SDPA attention, full and sliding-window layers only, and ``tokens`` (the whole sequence)
    inside the sliding window, so that no layer drops any of them.
    """
    config = model.config
    kinds = set(getattr(config, "layer_types", None) or ())
    window = getattr(config, "sliding_window", None)
    return (
        getattr(config, "_attn_implementation", None) == "sdpa"
        and bool(kinds)
        and kinds <= {"full_attention", "sliding_attention"}
        and (window is None or tokens < window)
    )


def _packed(
    prefix_ids: Sequence[int], reused: int, continuations: Sequence[Sequence[int]], device: Any
) -> tuple[Any, Any, dict[str, Any]]:
    """Input ids, positions and the boolean attention mask (per layer kind) of the packed pass."""
    import torch

    rest = list(prefix_ids[reused:])
    start = len(prefix_ids)
    tails = [list(tokens[:-1]) for tokens in continuations]
    flat = rest + [t for tail in tails for t in tail]
    positions = list(range(reused, start)) + [start + j for tail in tails for j in range(len(tail))]
    queries, keys = len(flat), reused + len(flat)
    mask = torch.zeros((queries, keys), dtype=torch.bool, device=device)
    mask[: len(rest), :] = torch.ones((len(rest), keys), dtype=torch.bool, device=device).tril(reused)
    row = len(rest)
    for tail in tails:
        mask[row : row + len(tail), :start] = True
        block = torch.ones((len(tail), len(tail)), dtype=torch.bool, device=device).tril()
        mask[row : row + len(tail), reused + row : reused + row + len(tail)] = block
        row += len(tail)
    full = mask[None, None]
    return (
        torch.tensor([flat], dtype=torch.long, device=device),
        torch.tensor([positions], dtype=torch.long, device=device),
        {"full_attention": full, "sliding_attention": full},
    )


def _run(model: Any, body: Any, cache_kwarg: str, ids: Sequence[int], cache: Any, *, start: int) -> Any:
    """Append ``ids`` (one sequence, from position ``start``) to ``cache``; the last position's output."""
    import torch

    device = next(model.parameters()).device
    tensor = torch.tensor([list(ids)], dtype=torch.long, device=device)
    positions = torch.arange(start, start + len(ids), device=device)[None]
    return _forward(model, body, cache_kwarg, tensor, cache, positions=positions, last_only=True)[0, -1]


def _forward(
    model: Any,
    body: Any,
    cache_kwarg: str,
    ids: Any,
    cache: Any,
    *,
    positions: Any,
    mask: Any = None,
    last_only: bool = False,
) -> Any:
    """The decoder's last hidden states for ``ids``, or, without a separable head, the logits."""
    kwargs: dict[str, Any] = {
        "input_ids": ids,
        "position_ids": positions,
        "use_cache": True,
        cache_kwarg: cache,
    }
    if mask is not None:
        kwargs["attention_mask"] = mask
    if body is not None:
        return body(**kwargs).last_hidden_state
    if last_only:
        kwargs["logits_to_keep"] = 1
    return model(**kwargs).logits


def _project(model: Any, hidden: Any) -> Any:
    """Logits for ``hidden`` ([positions, width]) as the model's own head computes them, in float32."""
    import torch

    logits = model.get_output_embeddings()(hidden).float()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits
