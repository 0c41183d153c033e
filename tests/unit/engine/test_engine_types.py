"""Engine domain types: parameter validation, audit fields, error messages."""

from __future__ import annotations

import dataclasses
import json

import pytest

from custos.engine.types import (
    ChatTurn,
    EngineError,
    InvalidSamplingParams,
    ModelCacheError,
    ModelInfo,
    PromptTooLong,
    SamplingParams,
)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": -5}, "max_new_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"stop": ("",)}, "stop"),
        ({"stop": ["x"]}, "stop"),
        ({"min_new_tokens": -1}, "min_new_tokens"),
        ({"min_new_tokens": 9, "max_new_tokens": 8}, "min_new_tokens"),
        ({"min_new_tokens": True}, "min_new_tokens"),
    ],
)
def test_invalid_sampling_params_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSamplingParams) as info:
        SamplingParams(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert isinstance(info.value, ValueError) and isinstance(info.value, EngineError)


@pytest.mark.parametrize(
    ("params", "greedy"),
    [
        (SamplingParams(), True),
        (SamplingParams(temperature=0.7, top_p=0.9, seed=0, stop=("\n",), max_new_tokens=1), False),
        (SamplingParams(seed=2**64 - 1), True),
    ],
)
def test_valid_sampling_params(params: SamplingParams, greedy: bool) -> None:
    assert params.greedy is greedy


def test_defaults_match_the_interface() -> None:
    assert SamplingParams() == SamplingParams(
        max_new_tokens=128, temperature=0.0, top_p=1.0, seed=None, stop=()
    )


def test_types_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ChatTurn("user", "x").content = "y"  # type: ignore[misc]


def test_model_info_to_audit_is_plain_json() -> None:
    info = ModelInfo(
        name="m",
        source_sha256="a" * 64,
        cache_digest="b" * 64,
        quantization="Q4_K_M",
        precision="bf16",
        device="cpu",
        prompt_format="plain-customer-service",
        prompt_format_version=1,
        prompt_format_sha256="c" * 64,
    )
    audit = info.to_audit()
    # A local model's record names every field but the upstream's, which only an upstream engine has.
    assert audit == {f.name: getattr(info, f.name) for f in dataclasses.fields(info) if f.name != "upstream"}
    assert json.loads(json.dumps(audit, sort_keys=True)) == audit


def test_model_info_of_an_upstream_says_the_weights_were_not_hashed() -> None:
    info = ModelInfo(
        name="served",
        source_sha256="",
        cache_digest="",
        quantization="",
        precision="",
        device="upstream",
        prompt_format="plain-customer-service",
        prompt_format_version=1,
        prompt_format_sha256="c" * 64,
        upstream={"base_url": "http://vllm:8000/v1", "model": "served"},
    )
    audit = info.to_audit()
    assert audit["weights_hashed_locally"] is False
    assert audit["upstream"] == {"base_url": "http://vllm:8000/v1", "model": "served"}
    assert "precision" not in audit
    assert json.loads(json.dumps(audit, sort_keys=True)) == audit


def test_prompt_too_long_carries_counts_and_a_safe_message() -> None:
    err = PromptTooLong(prompt_tokens=5000, max_new_tokens=128, context_tokens=4096)
    assert (err.prompt_tokens, err.max_new_tokens, err.context_tokens) == (5000, 128, 4096)
    assert all(str(n) in str(err) for n in (5000, 128, 4096))
    assert isinstance(err, EngineError) and isinstance(ModelCacheError("x"), EngineError)
