"""Weight-only int4 (group size 32), gated per group of tensors: ``precision = "int4"``.

The matrix products use torch's CPU int4 kernel (``aten._weight_int4pack_mm_for_cpu``, the one behind
torchao's int4 CPU layout): each group of 32 input weights of an output row is ``(q - 8) * scale + zero``
with ``q`` in 0..15, and the kernel reads the packed 4-bit weights and applies the group's scale and zero
itself, so one decode step reads a quarter of bf16's weight bytes, and the read is shared by every row of a
batch. The embedding table may be int4 too: looked-up rows are dequantized, and a tied output layer reads
the same table through the kernel.

A GGUF's Q4_K tensors map onto this form exactly: each Q4_K block of 32 is ``scale * q - min``, so
``zero = 8 * scale - min`` (:func:`from_q4k`). Other tensors (Q5_0, Q6_K, Q8_0 in the bundled GGUF) are
re-quantized from their float32 values, per group of 32, by their minimum and maximum
(:func:`quantize_groups`). Re-quantizing loses more, so :func:`select_layout` measures every group of
tensors through the quality gate on its own, then the mixed layout of what passed; a group the gate refuses
in int4 falls back to int8 (weight-only, see ``quant``) or stays bf16.

The cache stores each int4 weight as nibbles (``weight_uint4``, two per byte, low nibble first) and its
scales and zeros (``scales_zeros``); the kernel's own packed layout is built from them when the model is
loaded (:func:`prepack`), so the cache does not depend on it. The layout is read back from the tensor names.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from custos.engine.quality import Measurement, QualityLimits

log = logging.getLogger(__name__)

GROUP_SIZE = 32
_N_MULTIPLE = 16  # the packing kernel wants the output count divisible by 16 (padded rows otherwise)
INT4_SUPPORTED = hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
    torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"
)
Form = Literal["int4", "int8", "bf16"]
EMBEDDING = "embedding"
"""The layout key of the embedding table (with a tied output layer, the output layer too)."""


@dataclass(frozen=True)
class Int4Weights:
    """``weight ≈ (q - 8) * scale + zero`` per group of GROUP_SIZE inputs of each output row.

    ``q``: uint8 [out, in] with values 0..15; ``scale`` and ``zero``: float32 [out, in / GROUP_SIZE].
    """

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        """The float32 weight these stand for."""
        out, inputs = self.q.shape
        groups = self.q.reshape(out, inputs // GROUP_SIZE, GROUP_SIZE).float() - 8.0
        return (groups * self.scale[..., None] + self.zero[..., None]).reshape(out, inputs)


def eligible(weight: torch.Tensor) -> bool:
    """Whether a [out, in] weight fits the kernel's groups (``in`` a multiple of GROUP_SIZE)."""
    return weight.dim() == 2 and weight.shape[1] % GROUP_SIZE == 0


def quantize_groups(weight: torch.Tensor) -> Int4Weights:
    """Asymmetric int4 per group of GROUP_SIZE by the group's minimum and maximum."""
    w = weight.detach().float()
    out, inputs = w.shape
    groups = w.reshape(out, inputs // GROUP_SIZE, GROUP_SIZE)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = ((high - low) / 15.0).clamp(min=1e-10)
    q = torch.round((groups - low[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.uint8)
    return Int4Weights(q.reshape(out, inputs), scale, low + 8.0 * scale)


def from_q4k(q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor) -> Int4Weights:
    """Q4_K's ``scale * q - min`` per block of 32 in the kernel's form (no rounding of ``q``)."""
    return Int4Weights(q.to(torch.uint8), scale.float(), 8.0 * scale.float() - minimum.float())


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[rows, cols] values 0..15 -> [rows, cols / 2] uint8, the even column in the low nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_nibbles` (uint8 values 0..15)."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def _scales_zeros(weights: Int4Weights, dtype: torch.dtype) -> torch.Tensor:
    """[in / GROUP_SIZE, out, 2]: the kernel's scale-and-zero layout."""
    return torch.stack([weights.scale, weights.zero], dim=-1).transpose(0, 1).contiguous().to(dtype)


def _kernel_pack(nibbles: torch.Tensor, scales_zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's packed weight and scales, output rows padded to a multiple of 16."""
    q = unpack_nibbles(nibbles).to(torch.int32)
    pad = (-q.shape[0]) % _N_MULTIPLE
    if pad:
        q = torch.cat([q, q.new_full((pad, q.shape[1]), 8)])
        scales_zeros = torch.cat([scales_zeros, scales_zeros.new_zeros((scales_zeros.shape[0], pad, 2))], 1)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    return packed, scales_zeros.contiguous()


def _int4_mm(x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, out: int) -> torch.Tensor:
    shape = x.shape
    flat = x.reshape(-1, shape[-1]).to(scales_zeros.dtype).contiguous()
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, packed, GROUP_SIZE, scales_zeros)
    if y.shape[-1] != out:
        y = y[:, :out]
    return y.reshape(*shape[:-1], out)


class Int4Linear(nn.Module):
    """``y = x @ dequantize(W).T + bias`` through the int4 kernel; activations in ``dtype``."""

    weight_uint4: torch.Tensor
    scales_zeros: torch.Tensor

    def __init__(self, in_features: int, out_features: int, *, bias: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_uint4", torch.empty((out_features, in_features // 2), dtype=torch.uint8))
        self.register_buffer(
            "scales_zeros", torch.empty((in_features // GROUP_SIZE, out_features, 2), dtype=dtype)
        )
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None
        )
        self._packed: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_weights(
        cls, weights: Int4Weights, *, bias: torch.Tensor | None, dtype: torch.dtype
    ) -> Int4Linear:
        """The layer of ``weights`` (and ``bias``)."""
        out, inputs = weights.q.shape
        module = cls(inputs, out, bias=bias is not None, dtype=dtype)
        module.weight_uint4 = pack_nibbles(weights.q)
        module.scales_zeros = _scales_zeros(weights, dtype)
        if bias is not None:
            module.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        return module

    def prepack(self) -> None:
        """Build the kernel's packed weight (once, after loading)."""
        self._packed = _kernel_pack(self.weight_uint4, self.scales_zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The product through the int4 kernel."""
        if self._packed is None:
            self.prepack()
        assert self._packed is not None
        y = _int4_mm(x, *self._packed, self.out_features)
        return y + self.bias if self.bias is not None else y


class Int4Embedding(nn.Module):
    """An int4 embedding table (rows dequantized when looked up), times Gemma's embedding multiplier."""

    weight_uint4: torch.Tensor
    scales_zeros: torch.Tensor

    def __init__(self, num: int, dim: int, *, dtype: torch.dtype, multiplier: float = 1.0) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num, dim
        self.multiplier = multiplier
        self.register_buffer("weight_uint4", torch.empty((num, dim // 2), dtype=torch.uint8))
        self.register_buffer("scales_zeros", torch.empty((dim // GROUP_SIZE, num, 2), dtype=dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of the table, dequantized."""
        dtype = self.scales_zeros.dtype
        flat = ids.reshape(-1)
        q = unpack_nibbles(self.weight_uint4[flat]).to(dtype) - 8
        sz = self.scales_zeros[:, flat].transpose(0, 1)  # [rows, groups, 2]
        groups = q.reshape(len(flat), -1, GROUP_SIZE) * sz[..., :1] + sz[..., 1:]
        rows = groups.reshape(*ids.shape, self.embedding_dim)
        return rows * torch.tensor(self.multiplier, dtype=dtype)


class TiedInt4Head(nn.Module):
    """The output layer reading the int4 embedding table through the kernel (saved once, as the table)."""

    def __init__(self, embedding: Int4Embedding) -> None:
        super().__init__()
        self._table = (embedding,)  # a tuple keeps it out of this module's state dict
        self.in_features, self.out_features = embedding.embedding_dim, embedding.num_embeddings
        self._packed: tuple[torch.Tensor, torch.Tensor] | None = None

    def prepack(self) -> None:
        """Build the kernel's packed form of the table (once, after loading)."""
        table = self._table[0]
        self._packed = _kernel_pack(table.weight_uint4, table.scales_zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for every row of the table."""
        if self._packed is None:
            self.prepack()
        assert self._packed is not None
        return _int4_mm(x, *self._packed, self.out_features)


def prepack(model: nn.Module) -> None:
    """Build every int4 layer's packed weight now rather than in the first request."""
    for module in model.modules():
        if isinstance(module, Int4Linear | TiedInt4Head):
            module.prepack()


# ---- layouts --------------------------------------------------------------------------------------


def _tied(model: nn.Module) -> bool:
    embedding = model.get_input_embeddings()  # type: ignore[operator]
    head = model.get_output_embeddings()  # type: ignore[operator]
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None else None
    return head is not None and (
        head.weight is embedding.weight or bool(getattr(text_config, "tie_word_embeddings", False))
    )


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    weight = model.get_submodule(name).weight
    assert isinstance(weight, torch.Tensor)
    return weight


def linear_names(model: nn.Module) -> list[str]:
    """Names of the model's ``nn.Linear`` layers other than a tied output layer."""
    head = model.get_output_embeddings() if _tied(model) else None  # type: ignore[operator]
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head]


def apply_layout(
    model: nn.Module,
    layout: Mapping[str, Form],
    *,
    dtype: torch.dtype = torch.bfloat16,
    exact: Mapping[str, Int4Weights] | None = None,
    empty: bool = False,
) -> nn.Module:
    """Replace layers by their form in ``layout`` (module name, or EMBEDDING, -> form), in place.

    Names not in ``layout`` stay as they are (bf16 after the final cast). ``exact`` gives int4 weights
    mapped from the source (Q4_K) by module name; other int4 weights are re-quantized. With ``empty``
    the layers are built empty, ready for ``load_state_dict`` (the loader's path). Returns the model,
    cast to ``dtype``.
    """
    from custos.engine.quant import Int8Embedding, Int8Linear, TiedInt8Head, _embed_multiplier, quantize_rows

    exact = exact or {}
    modules = dict(model.named_modules())
    replacements: dict[str, nn.Module] = {}
    for name, form in layout.items():
        if name == EMBEDDING or form == "bf16":
            continue
        linear = modules[name]
        assert isinstance(linear, nn.Linear), name
        bias = linear.bias
        if form == "int8":
            replacements[name] = (
                Int8Linear(linear.in_features, linear.out_features, bias=bias is not None, dtype=dtype)
                if empty
                else Int8Linear.from_linear(linear, dtype=dtype)
            )
        elif empty:
            replacements[name] = Int4Linear(
                linear.in_features, linear.out_features, bias=bias is not None, dtype=dtype
            )
        else:
            weights = exact.get(name) or quantize_groups(linear.weight)
            replacements[name] = Int4Linear.from_weights(weights, bias=bias, dtype=dtype)
    embedding_form = layout.get(EMBEDDING, "bf16")
    if embedding_form != "bf16":
        embedding = model.get_input_embeddings()  # type: ignore[operator]
        assert isinstance(embedding, nn.Embedding)
        tied = _tied(model)
        head = model.get_output_embeddings()  # type: ignore[operator]
        num, dim, multiplier = embedding.num_embeddings, embedding.embedding_dim, _embed_multiplier(embedding)
        new_embedding: nn.Module
        new_head: nn.Module
        if embedding_form == "int8":
            new_embedding = Int8Embedding(num, dim, dtype=dtype, multiplier=multiplier)
            if not empty:
                q8, scale8 = quantize_rows(embedding.weight)
                new_embedding.weight_int8, new_embedding.scale = q8, scale8.to(dtype)
            new_head = TiedInt8Head(new_embedding)
        else:
            int4_embedding = Int4Embedding(num, dim, dtype=dtype, multiplier=multiplier)
            if not empty:
                weights = exact.get(EMBEDDING) or quantize_groups(embedding.weight)
                int4_embedding.weight_uint4 = pack_nibbles(weights.q)
                int4_embedding.scales_zeros = _scales_zeros(weights, dtype)
            new_embedding, new_head = int4_embedding, TiedInt4Head(int4_embedding)
        for name, module in modules.items():
            if module is embedding:
                replacements[name] = new_embedding
            elif module is head and tied:
                replacements[name] = new_head
    for name, module in replacements.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
    model.to(dtype)
    return model


def layout_from_tensors(names: Sequence[str]) -> dict[str, Form]:
    """The layout a cache's tensor names describe (``X.weight_uint4`` int4, ``X.weight_int8`` int8)."""
    layout: dict[str, Form] = {}
    for key in names:
        module, _, leaf = key.rpartition(".")
        form: Form | None = "int4" if leaf == "weight_uint4" else "int8" if leaf == "weight_int8" else None
        if form is None:
            continue
        layout[EMBEDDING if module.endswith("embed_tokens") else module] = form
    return layout


# ---- Q4_K tensors of a GGUF ------------------------------------------------------------------------


def decode_q4k(blocks: Any, rows: int, cols: int) -> Int4Weights:
    """Q4_K super-blocks (144 bytes per 256 weights, row-major) of a [rows, cols] weight, exactly."""
    import numpy as np
    from gguf.quants import Q4_K

    blocks = np.asarray(blocks, dtype=np.uint8).reshape(-1, 144)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    sc, mn = Q4_K.get_scale_min(blocks[:, 4:16].copy())
    # Each 32 bytes hold two blocks of 32: the low nibbles the first, the high nibbles the second.
    qs = blocks[:, 16:].reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    q = (qs & np.uint8(0x0F)).reshape(rows, cols)
    scale = (d * sc.astype(np.float32)).reshape(rows, cols // GROUP_SIZE)
    minimum = (dmin * mn.astype(np.float32)).reshape(rows, cols // GROUP_SIZE)
    return from_q4k(torch.from_numpy(q), torch.from_numpy(scale), torch.from_numpy(minimum))


def q4k_tensors(gguf_path: Path) -> dict[str, Int4Weights]:
    """Every Q4_K tensor of the GGUF file, by its GGUF name, in the kernel's form (exact)."""
    from gguf import GGMLQuantizationType, GGUFReader

    found: dict[str, Int4Weights] = {}
    for tensor in GGUFReader(gguf_path).tensors:
        if tensor.tensor_type == GGMLQuantizationType.Q4_K:
            cols, rows = (int(n) for n in tensor.shape[:2])  # GGUF lists the innermost dimension first
            found[tensor.name] = decode_q4k(tensor.data, rows, cols)
    return found


def match_exact(model: nn.Module, tensors: Mapping[str, Int4Weights]) -> dict[str, Int4Weights]:
    """The source int4 weights that reproduce a linear layer's float32 weight, by module name.

    Matched by value (same shape, dequantized weights equal to float32 rounding), so no name table and no
    layout assumption of the GGUF loader can pair a tensor with the wrong layer.
    """
    by_shape: dict[tuple[int, ...], list[tuple[str, Int4Weights]]] = {}
    for key, weights in tensors.items():
        by_shape.setdefault(tuple(weights.q.shape), []).append((key, weights))
    matched: dict[str, Int4Weights] = {}
    for name in linear_names(model):
        weight = _weight(model, name).detach().float()
        for key, weights in by_shape.get(tuple(weight.shape), []):
            if torch.allclose(weights.dequantize(), weight, rtol=1e-5, atol=1e-6):
                matched[name] = weights
                by_shape[tuple(weight.shape)].remove((key, weights))
                break
    return matched


# ---- choosing the layout through the quality gate --------------------------------------------------


def tensor_groups(model: nn.Module, exact: Mapping[str, Int4Weights]) -> dict[str, list[str]]:
    """The groups the gate judges: exact (Q4_K) layers, attention and MLP projections, the embedding."""
    groups: dict[str, list[str]] = {"exact": [], "attention": [], "mlp": [], EMBEDDING: []}
    for name in linear_names(model):
        if not eligible(_weight(model, name)):
            continue
        if name in exact:
            groups["exact"].append(name)
        else:
            groups["mlp" if ".mlp." in name or "feed_forward" in name else "attention"].append(name)
    embedding = model.get_input_embeddings()  # type: ignore[operator]
    if isinstance(embedding, nn.Embedding) and _tied(model) and embedding.embedding_dim % GROUP_SIZE == 0:
        groups[EMBEDDING].append(EMBEDDING)
    return {k: v for k, v in groups.items() if v}


@dataclass(frozen=True)
class LayoutChoice:
    """What :func:`select_layout` measured and chose."""

    layout: dict[str, Form]
    groups: dict[str, Form]
    trials: list[dict[str, Any]]
    quality: dict[str, Any]
    """The gate's report on the chosen layout."""
    admitted: bool
    """Whether a layout with at least one int4 group passed; if not, ``layout`` is all int4 (refused)."""

    def summary(self) -> dict[str, Any]:
        """Plain JSON values for the manifest: the chosen form per group and every trial's figures."""
        return {"groups": self.groups, "trials": self.trials}


def _layout(groups: Mapping[str, list[str]], forms: Mapping[str, Form]) -> dict[str, Form]:
    return {name: forms[group] for group, names in groups.items() for name in names}


def layout_for(
    model: nn.Module, forms: Mapping[str, Form], exact: Mapping[str, Int4Weights] | None = None
) -> dict[str, Form]:
    """The per-module layout of a choice of form per group (as :attr:`LayoutChoice.groups` records it)."""
    return _layout(tensor_groups(model, exact or {}), forms)


def select_layout(
    model: PreTrainedModel,
    ids: list[int],
    reference: Measurement,
    limits: QualityLimits,
    *,
    exact: Mapping[str, Int4Weights] | None = None,
) -> LayoutChoice:
    """The mixed int4/int8/bf16 layout the gate admits, with as many tensors in int4 as it allows.

    Each group is measured in int4 alone (the rest bf16); a refused group is measured in int8 and, refused
    again, stays bf16. Then the mix of those choices is measured; while the gate refuses it, the int4 group
    with the largest perplexity increase of its own steps down to int8. A layout left without any int4
    group is not int4: then the choice is refused, with the all-int4 layout's figures. The float32
    ``model`` is left unchanged.
    """
    from custos.engine.quality import judge, measure

    exact = exact or {}
    groups = tensor_groups(model, exact)
    trials: list[dict[str, Any]] = []

    def trial(forms: Mapping[str, Form]) -> tuple[bool, float, dict[str, Any]]:
        candidate = apply_layout(copy.deepcopy(model), _layout(groups, forms), exact=exact)
        report = judge(reference, measure(candidate, ids), limits, len(ids))  # type: ignore[arg-type]
        del candidate
        trials.append({"forms": dict(forms), "quality": report.to_dict()})
        log.info("int4 layout %s: %s", dict(forms), report.describe())
        return report.admitted, report.perplexity_increase, report.to_dict()

    alone: dict[str, Form] = {}
    increase: dict[str, float] = {}
    for group in groups:
        base: dict[str, Form] = dict.fromkeys(groups, "bf16")
        for form in ("int4", "int8"):
            admitted, rise, _ = trial({**base, group: form})
            if admitted:
                alone[group], increase[group] = form, rise
                break
        else:
            alone[group] = "bf16"
    forms = dict(alone)
    while "int4" in forms.values():
        admitted, _, quality = trial(forms)
        if admitted:
            break
        # The int4 group that lost most on its own steps down to int8 first.
        worst = max((g for g, f in forms.items() if f == "int4"), key=lambda g: increase[g])
        forms[worst] = "int8"
    else:
        # No layout with an int4 group passes: int4 is refused (int8 and bf16 are candidates of their own).
        admitted = False
        quality = trial(dict.fromkeys(groups, "int4"))[2]
    if not admitted:
        forms = dict.fromkeys(groups, "int4")
    return LayoutChoice(
        layout=_layout(groups, forms), groups=forms, trials=trials, quality=quality, admitted=admitted
    )
