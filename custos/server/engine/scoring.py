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
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{cache_kwarg: cache},
            )
            logits = out.logits.float()
            norm = torch.logsumexp(logits, dim=-1)  # [rows, width - 1]
            for i, tokens in enumerate(continuations):
                for j in range(1, len(tokens)):
                    totals[i] += float(logits[i, j - 1, tokens[j]] - norm[i, j - 1])
    return ContinuationScores(
        logprobs=tuple(totals),
        tokens=tuple(len(c) for c in continuations),
        prefix_tokens=len(prefix_ids),
        seconds=time.perf_counter() - started,
    )
