"""Assertions shared by the engine tests."""

from __future__ import annotations

from custos.engine.types import GenerationResult


def assert_result_consistent(result: GenerationResult, deltas: list[str]) -> None:
    """The invariants every generation result keeps, whatever the settings."""
    assert result.text == "".join(deltas), "text must be exactly the concatenation of the deltas"
    assert all(deltas), "no empty deltas"
    assert result.text == result.text.strip(), "answers are trimmed"
    assert result.prompt_tokens > 0
    assert result.completion_tokens >= 0
    assert result.prefill_seconds >= 0 and result.decode_seconds >= 0
    if result.completion_tokens == 0:
        assert result.mean_logprob is None and result.min_logprob is None
    else:
        assert result.mean_logprob is not None and result.min_logprob is not None
        assert result.min_logprob <= result.mean_logprob <= 0.0
