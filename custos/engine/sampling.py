"""Choosing the next token from the model's logits: greedy, or temperature plus nucleus (top-p) sampling."""

from __future__ import annotations

import secrets

import torch

from custos.engine.types import SamplingParams


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A per-request random generator (seeded from ``params.seed``, else at random); None for greedy."""
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
    return generator


def choose_token(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    banned: frozenset[int] = frozenset(),
) -> tuple[int, float]:
    """Pick the next token from one row of logits; return it with its log-prob under the raw distribution.

    The log-prob is taken before temperature, top-p and ``banned`` (tokens that may not be chosen now, such
    as end-of-sequence before ``min_new_tokens``), so it measures the model's own confidence in the chosen
    token whatever the sampling settings.
    """
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    if banned:
        logits = logits.clone()
        logits[list(banned)] = float("-inf")
    if params.greedy:
        token = int(torch.argmax(logits).item())
    else:
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            probs = _top_p_filter(probs, params.top_p)
        token = int(torch.multinomial(probs, 1, generator=generator).item())
    return token, float(logprobs[token].item())


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest set whose probability reaches ``top_p`` (keeps at least one)."""
    sorted_probs, order = torch.sort(probs, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    drop = mass_before >= top_p  # never the first token: nothing comes before it and top_p > 0
    return probs.scatter(-1, order[drop], 0.0)
