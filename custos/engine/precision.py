"""Compute precisions: the supported ones, how each is stored, and converting a float32 model into one.

Importing this module is cheap; torch and the quantization kernels are imported when a model is converted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from custos.engine.types import EngineError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

PRECISIONS: dict[str, str] = {
    "bf16": "bfloat16",
    "fp32": "float32",
    "int8": "bfloat16",
    "int8-dynamic": "float32",
}
"""Supported compute precisions -> torch dtype names of their activations."""
INT8_PRECISIONS = frozenset({"int8"})
"""Precisions whose weights are stored quantized (weight-only int8, see ``quant``)."""
DYNAMIC_PRECISIONS = frozenset({"int8-dynamic"})
"""Precisions stored as float32 and quantized when loaded (``torch.ao`` dynamic int8, see ``quant``)."""
QUANTIZED_PRECISIONS = INT8_PRECISIONS | DYNAMIC_PRECISIONS
"""Precisions a cache may only be served in with an admitted quality gate in its manifest."""
AUTO_PRECISION = "auto"
"""Measure every candidate's speed and quality at prepare time and keep the fastest admitted one."""
AUTO_CANDIDATES = ("fp32", "bf16", "int8", "int8-dynamic")
DEFAULT_AUTO_TIME_LIMIT_S = 60.0


def check_precision(precision: str, *, allow_auto: bool = True) -> None:
    """EngineError unless ``precision`` is supported (``auto`` too, unless ``allow_auto`` is false)."""
    if precision not in PRECISIONS and not (allow_auto and precision == AUTO_PRECISION):
        supported = ", ".join([*PRECISIONS, AUTO_PRECISION] if allow_auto else PRECISIONS)
        raise EngineError(f"unknown precision {precision!r}; supported: {supported}")


def convert_precision(model: PreTrainedModel, precision: str) -> PreTrainedModel:
    """Turn a float32 model into ``precision`` (in place where possible); returns the model."""
    import torch

    check_precision(precision, allow_auto=False)
    dtype = getattr(torch, PRECISIONS[precision])
    if precision in DYNAMIC_PRECISIONS:
        from custos.engine.quant import quantize_dynamic_int8

        if model.dtype != dtype:
            model = model.to(dtype)
        quantize_dynamic_int8(model)
        return model
    if precision in INT8_PRECISIONS:
        from custos.engine.quant import quantize_int8

        quantize_int8(model, dtype=dtype)
        model.config.dtype = dtype
        return model
    if model.dtype != dtype:
        model = model.to(dtype)
    return model
