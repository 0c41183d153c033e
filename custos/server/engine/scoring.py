"""Score continuations of one shared prefix: the log-likelihood Classify turns into probabilities.

The prefix runs once; its KV cache is repeated across the batch and every continuation is scored in one
more forward pass. Continuations are right-padded: under causal attention padding after a token never
changes that token's logits, so no attention mask is needed to keep the scores exact.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class ContinuationScores:
    """Per continuation: the summed natural-log probability of its tokens and their count."""

    logprobs: tuple[float, ...]
    tokens: tuple[int, ...]
    prefix_tokens: int
    seconds: float


def score_continuations(
    model: PreTrainedModel,
    prefix_ids: Sequence[int],
    continuations: Sequence[Sequence[int]],
    *,
    cache_kwarg: str = "past_key_values",
) -> ContinuationScores:
    """Log-likelihood of each continuation (token ids, none empty) after ``prefix_ids``."""
    import torch
    from transformers import DynamicCache

    if not prefix_ids or not continuations or any(len(c) == 0 for c in continuations):
        raise ValueError("the prefix and every continuation need at least one token")
    started = time.perf_counter()
    device = next(model.parameters()).device
    rows = len(continuations)
    width = max(len(c) for c in continuations)
    totals = [0.0] * rows
    with torch.inference_mode():
        cache: Any = DynamicCache(config=model.config)
        prefix = torch.tensor([list(prefix_ids)], dtype=torch.long, device=device)
        out = model(input_ids=prefix, use_cache=True, logits_to_keep=1, **{cache_kwarg: cache})
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        for i, tokens in enumerate(continuations):
            totals[i] = float(first[tokens[0]])
        if width > 1:
            # Feed every continuation but its last token; position j predicts token j + 1.
            cache.batch_repeat_interleave(rows)
            ids = torch.zeros((rows, width - 1), dtype=torch.long, device=device)
            for i, tokens in enumerate(continuations):
                ids[i, : len(tokens) - 1] = torch.tensor(list(tokens[:-1]), dtype=torch.long)
            start = len(prefix_ids)
            positions = torch.arange(start, start + width - 1, device=device).expand(rows, -1)
            mask = torch.ones((rows, start + width - 1), dtype=torch.long, device=device)
            rows_at = [i for i, tokens in enumerate(continuations) for _ in range(len(tokens) - 1)]
            cols_at = [j for tokens in continuations for j in range(len(tokens) - 1)]
            targets = torch.tensor(
                [t for tokens in continuations for t in tokens[1:]], dtype=torch.long, device=device
            )
            hidden = _hidden_states(model, cache_kwarg, ids, mask, positions, cache)
            if hidden is not None:
                # The vocabulary projection dominates: run it only where a label token is predicted.
                picked = hidden[torch.tensor(rows_at), torch.tensor(cols_at)]
                logits = _project(model, picked)
            else:
                full = model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **{cache_kwarg: cache},
                ).logits
                logits = full[torch.tensor(rows_at), torch.tensor(cols_at)].float()
            logprobs = logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
            for row, value in zip(rows_at, logprobs.tolist(), strict=True):
                totals[row] += value
    return ContinuationScores(
        logprobs=tuple(totals),
        tokens=tuple(len(c) for c in continuations),
        prefix_tokens=len(prefix_ids),
        seconds=time.perf_counter() - started,
    )


def _hidden_states(model: Any, cache_kwarg: str, ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
    """The decoder's last hidden states, or None when the model does not expose its decoder and head."""
    import inspect

    body = getattr(model, "base_model", None)
    if body is None or body is model or model.get_output_embeddings() is None:
        return None
    params = inspect.signature(body.forward).parameters
    if cache_kwarg not in params:
        return None
    out = body(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kwarg: cache}
    )
    return out.last_hidden_state


def _project(model: Any, hidden: Any) -> Any:
    """Logits for ``hidden`` ([positions, width]) as the model's own head computes them, in float32."""
    import torch

    logits = model.get_output_embeddings()(hidden).float()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits
