"""Weight-only int4: the kernel against a dequantized reference, Q4_K mapping, and layouts by the gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from custos.engine import int4
from custos.engine.cache import prepare_model
from custos.engine.int4 import GROUP_SIZE, Int4Embedding, Int4Linear, TiedInt4Head
from custos.engine.local import TransformersEngine
from custos.engine.manifest import load_manifest
from custos.engine.quality import QualityLimits, measure, support_ids
from custos.engine.types import ChatTurn, SamplingParams
from custos.testing.tiny_engine import build_tiny_model, build_tiny_tokenizer, save_tiny_model_dir

pytestmark = pytest.mark.skipif(not int4.INT4_SUPPORTED, reason="this torch build has no CPU int4 kernel")

LENIENT = QualityLimits(max_perplexity_increase=0.05, min_agreement=0.5)
"""The tiny random model's logits are nearly flat, so int4 moves its argmax often; these admit it."""


def _linear(out: int, inputs: int, *, seed: int, bias: bool = True) -> nn.Linear:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(inputs, out, bias=bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("out", "inputs"), [(64, 128), (40, 96)])  # 40 rows: padded to 48 for the kernel
def test_int4_linear_matches_the_dequantized_reference(dtype: torch.dtype, out: int, inputs: int) -> None:
    linear = _linear(out, inputs, seed=out)
    weights = int4.quantize_groups(linear.weight)
    layer = Int4Linear.from_weights(weights, bias=linear.bias, dtype=dtype)
    x = torch.randn(3, 5, inputs, generator=torch.Generator().manual_seed(1))
    y = layer(x.to(dtype))
    assert y.shape == (3, 5, out) and y.dtype == dtype
    reference = x.to(dtype).float() @ weights.dequantize().T + linear.bias.detach()
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    assert torch.allclose(y.float(), reference, atol=tolerance * reference.abs().max().item())
    # ... and the quantization itself stays within half a step of every weight.
    error = (weights.dequantize() - linear.weight.detach()).abs()
    step = weights.scale.repeat_interleave(GROUP_SIZE, dim=1)
    assert (error <= step / 2 + 1e-6).all()
    assert (error > 0).any()  # it is a real quantization, not a copy


def test_nibbles_round_trip() -> None:
    q = torch.randint(0, 16, (7, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    packed = int4.pack_nibbles(q)
    assert packed.shape == (7, 32)
    assert torch.equal(int4.unpack_nibbles(packed), q)


def test_q4k_weights_map_exactly() -> None:
    """``scale * q - min`` per block is reproduced without re-rounding anything."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randint(0, 16, (16, 64), dtype=torch.uint8, generator=gen)
    scale = torch.rand(16, 2, generator=gen) * 0.1
    minimum = torch.rand(16, 2, generator=gen) * 0.5
    weight = (q.float().reshape(16, 2, 32) * scale[..., None] - minimum[..., None]).reshape(16, 64)
    mapped = int4.from_q4k(q, scale, minimum)
    assert torch.equal(mapped.q, q)
    assert torch.allclose(mapped.dequantize(), weight, atol=1e-6)


def test_q4k_blocks_decode_like_the_gguf_reference() -> None:
    """The Q4_K decoder yields q, scale and min that dequantize to what gguf's own decoder gives."""
    from gguf.quants import Q4_K

    rng = np.random.default_rng(4)
    rows, cols = 3, 512  # two super-blocks of 256 per row
    blocks = rng.integers(0, 256, size=(rows * cols // 256, 144), dtype=np.uint8)
    blocks[:, 0:2] = np.array([0.01], dtype=np.float16).view(np.uint8)  # finite d
    blocks[:, 2:4] = np.array([0.02], dtype=np.float16).view(np.uint8)  # finite dmin
    decoded = int4.decode_q4k(blocks, rows, cols)
    reference = Q4_K.dequantize_blocks(blocks).reshape(rows, cols)
    assert np.allclose(decoded.dequantize().numpy(), reference, atol=1e-6)


def test_int4_embedding_and_tied_head_read_the_same_table() -> None:
    table = torch.randn(48, 64, generator=torch.Generator().manual_seed(5))
    weights = int4.quantize_groups(table)
    embedding = Int4Embedding(48, 64, dtype=torch.float32, multiplier=2.0)
    embedding.weight_uint4 = int4.pack_nibbles(weights.q)
    embedding.scales_zeros = int4._scales_zeros(weights, torch.float32)
    ids = torch.tensor([[0, 47, 5], [5, 5, 1]])
    assert torch.allclose(embedding(ids), weights.dequantize()[ids] * 2.0, atol=1e-5)
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(TiedInt4Head(embedding)(x), x @ weights.dequantize().T, atol=1e-3)


def _tiny() -> tuple[nn.Module, list[int]]:
    tokenizer = build_tiny_tokenizer()
    return build_tiny_model(seed=0, vocab_size=len(tokenizer)), support_ids(tokenizer)


def test_layout_admits_every_group_the_gate_passes_in_int4() -> None:
    model, ids = _tiny()
    choice = int4.select_layout(model, ids, measure(model, ids), LENIENT)  # type: ignore[arg-type]
    assert choice.admitted
    assert choice.groups == {"attention": "int4", "mlp": "int4", "embedding": "int4"}
    assert set(choice.layout.values()) == {"int4"} and "embedding" in choice.layout
    assert choice.quality["admitted"] is True
    assert isinstance(model.get_output_embeddings(), nn.Linear)  # the float32 model is left as it was


def test_layout_refuses_a_group_the_gate_fails_and_keeps_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLP weights spoiled in int4 (q reversed): that group falls back to int8, the others stay int4."""
    model, ids = _tiny()
    mlp_shapes = {
        tuple(m.weight.shape)
        for name, m in model.named_modules()
        if ".mlp." in name and isinstance(m, nn.Linear)
    }
    other_shapes = {
        tuple(m.weight.shape)
        for name, m in model.named_modules()
        if ".mlp." not in name and isinstance(m, nn.Linear)
    }
    assert mlp_shapes and not mlp_shapes & other_shapes  # the shape tells the groups apart
    honest = int4.quantize_groups

    def spoiled(weight: torch.Tensor) -> int4.Int4Weights:
        weights = honest(weight)
        if tuple(weight.shape) in mlp_shapes:
            return int4.Int4Weights(15 - weights.q, weights.scale, weights.zero)
        return weights

    monkeypatch.setattr(int4, "quantize_groups", spoiled)
    choice = int4.select_layout(model, ids, measure(model, ids), LENIENT)  # type: ignore[arg-type]
    assert choice.groups == {"attention": "int4", "mlp": "int8", "embedding": "int4"}
    assert choice.admitted
    refused = [t for t in choice.trials if t["forms"]["mlp"] == "int4"]
    assert refused and not any(t["quality"]["admitted"] for t in refused)


def test_int4_is_refused_when_no_group_passes_in_int4() -> None:
    model, ids = _tiny()
    strict = QualityLimits(max_perplexity_increase=0.03, min_agreement=0.95)
    choice = int4.select_layout(model, ids, measure(model, ids), strict)  # type: ignore[arg-type]
    assert not choice.admitted and choice.quality["admitted"] is False
    # The refusal reports the all-int4 layout (what int4 would be), not a fallback that passed.
    assert choice.groups == {"attention": "int4", "mlp": "int4", "embedding": "int4"}
    assert choice.trials[-1]["forms"] == choice.groups


TURNS = (ChatTurn("user", "Where is my parcel?"),)


def test_int4_cache_loads_back_with_its_layout_and_generates_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = save_tiny_model_dir(tmp_path / "tiny-hf")
    cache_dir = prepare_model(source=source, cache_root=tmp_path / "cache", precision="int4", limits=LENIENT)
    manifest = load_manifest(cache_dir)
    assert manifest.precision == "int4" and manifest.quality is not None and manifest.quality["admitted"]
    assert manifest.quality["int4_layout"]["groups"] == {
        "attention": "int4",
        "mlp": "int4",
        "embedding": "int4",
    }
    engine = TransformersEngine.from_cache(cache_dir)
    model = engine.model
    assert isinstance(model.get_output_embeddings(), TiedInt4Head)
    assert all(isinstance(m, Int4Linear) for n, m in model.named_modules() if n.endswith("_proj"))
    params = SamplingParams(max_new_tokens=16)
    loaded = engine.generate(TURNS, params)
    from custos.testing.tiny_engine import build_tiny_engine

    in_memory = build_tiny_engine(seed=0, precision="int4").generate(TURNS, params)
    assert (loaded.text, loaded.completion_tokens) == (in_memory.text, in_memory.completion_tokens)
