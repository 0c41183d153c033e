"""Weight-only int8: per-output-channel symmetric int8 weights, bf16 activations.

Decoding one token is bound by the bytes of weights read per step; int8 weights halve bf16's. The matrix
products use torch's ``aten._weight_int8pack_mm`` CPU kernel (as gpt-fast does), which reads the int8
weights and applies the per-channel scales itself. The embedding table stays in int8 too, rows
dequantized as they are looked up; with tied embeddings the output layer shares that same table.
"""

from __future__ import annotations

import torch
from torch import nn

INT8_SUPPORTED = hasattr(torch.ops.aten, "_weight_int8pack_mm")


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``weight ≈ q * scale[:, None]``; returns (q int8, scale float32)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """``y = x @ (q * scale).T + bias`` with int8 ``q``; activations in ``scale``'s dtype."""

    weight_int8: torch.Tensor
    scale: torch.Tensor

    def __init__(self, in_features: int, out_features: int, *, bias: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.empty((out_features, in_features), dtype=torch.int8))
        self.register_buffer("scale", torch.empty(out_features, dtype=dtype))
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, dtype: torch.dtype) -> Int8Linear:
        """Quantize an ``nn.Linear``."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, dtype=dtype)
        q, scale = quantize_rows(linear.weight)
        module.weight_int8, module.scale = q, scale.to(dtype)
        if linear.bias is not None:
            module.bias = nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The product through the int8 kernel."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(self.scale.dtype).contiguous()  # the kernel reads rows densely
        out = torch.ops.aten._weight_int8pack_mm(flat, self.weight_int8, self.scale)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)


class Int8Embedding(nn.Module):
    """An embedding table in int8 with per-row scales, times a constant (Gemma scales embeddings)."""

    weight_int8: torch.Tensor
    scale: torch.Tensor

    def __init__(self, num: int, dim: int, *, dtype: torch.dtype, multiplier: float = 1.0) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num, dim
        self.multiplier = multiplier
        self.register_buffer("weight_int8", torch.empty((num, dim), dtype=torch.int8))
        self.register_buffer("scale", torch.empty(num, dtype=dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of the table, dequantized."""
        rows = self.weight_int8[ids].to(self.scale.dtype) * self.scale[ids].unsqueeze(-1)
        return rows * torch.tensor(self.multiplier, dtype=self.scale.dtype)


class TiedInt8Head(nn.Module):
    """The output layer reading the embedding table (not registered twice, so saved once)."""

    def __init__(self, embedding: Int8Embedding) -> None:
        super().__init__()
        self._table = (embedding,)  # a tuple keeps it out of this module's state dict
        self.in_features, self.out_features = embedding.embedding_dim, embedding.num_embeddings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for every row of the table."""
        table = self._table[0]
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(table.scale.dtype).contiguous()
        out = torch.ops.aten._weight_int8pack_mm(flat, table.weight_int8, table.scale)
        return out.reshape(*shape[:-1], self.out_features)


def _embed_multiplier(embedding: nn.Module) -> float:
    return float(getattr(embedding, "scalar_embed_scale", 1.0))


def _swap(model: nn.Module, *, dtype: torch.dtype, quantize: bool) -> None:
    embedding = model.get_input_embeddings()  # type: ignore[operator]
    assert isinstance(embedding, nn.Embedding)
    head = model.get_output_embeddings()  # type: ignore[operator]
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None else None
    tied = head is not None and (
        head.weight is embedding.weight or bool(getattr(text_config, "tie_word_embeddings", False))
    )
    new_embedding = Int8Embedding(
        embedding.num_embeddings,
        embedding.embedding_dim,
        dtype=dtype,
        multiplier=_embed_multiplier(embedding),
    )
    if quantize:
        q, scale = quantize_rows(embedding.weight)
        new_embedding.weight_int8, new_embedding.scale = q, scale.to(dtype)
    replacements: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is embedding:
                replacements.append((parent, name, new_embedding))
            elif child is head and tied:
                replacements.append((parent, name, TiedInt8Head(new_embedding)))
            elif isinstance(child, nn.Linear):
                if quantize:
                    replacements.append((parent, name, Int8Linear.from_linear(child, dtype=dtype)))
                else:
                    replacements.append(
                        (
                            parent,
                            name,
                            Int8Linear(
                                child.in_features,
                                child.out_features,
                                bias=child.bias is not None,
                                dtype=dtype,
                            ),
                        )
                    )
    for parent, name, module in replacements:
        setattr(parent, name, module)


def quantize_int8(model: nn.Module, *, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Replace the model's linear layers and embedding table by int8 forms, in place; returns the model."""
    if not INT8_SUPPORTED:
        raise RuntimeError("this torch build has no aten._weight_int8pack_mm kernel")
    _swap(model, dtype=dtype, quantize=True)
    model.to(dtype)  # norms and other small parameters follow the activation dtype
    return model


def int8_structure(model: nn.Module, *, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """The same replacement as :func:`quantize_int8` with empty tensors, ready for ``load_state_dict``."""
    _swap(model, dtype=dtype, quantize=False)
    return model


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """``torch.ao`` dynamic int8 of every ``nn.Linear`` (per-channel weights, float32 activations), in place.

    Activations are quantized per batch at run time by the fbgemm/x86 kernels. The embedding table stays
    float32; a tied output layer becomes its own quantized copy of the table (the embedding is not
    quantized). torch deprecates these modules in favour of torchao; its warnings are silenced here.
    """
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return model
