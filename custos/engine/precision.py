"""Compute precisions: the supported ones, how each is stored, and converting a float32 model into one.

Importing this module is cheap; torch and the quantization kernels are imported when a model is converted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from custos.engine.types import EngineError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from custos.engine.int4 import Int4Weights

PRECISIONS: dict[str, str] = {
    "bf16": "bfloat16",
    "fp32": "float32",
    "int8": "bfloat16",
    "int8-dynamic": "float32",
    "int4": "bfloat16",
}
"""Supported compute precisions -> torch dtype names of their activations."""
INT8_PRECISIONS = frozenset({"int8"})
"""Precisions whose weights are stored quantized (weight-only int8, see ``quant``)."""
DYNAMIC_PRECISIONS = frozenset({"int8-dynamic"})
"""Precisions stored as float32 and quantized when loaded (``torch.ao`` dynamic int8, see ``quant``)."""
INT4_PRECISIONS = frozenset({"int4"})
"""Precisions whose layout mixes int4, int8 and bf16 tensors as the quality gate admits them (``int4``)."""
QUANTIZED_PRECISIONS = INT8_PRECISIONS | DYNAMIC_PRECISIONS | INT4_PRECISIONS
"""Precisions a cache may only be served in with an admitted quality gate in its manifest."""
AUTO_PRECISION = "auto"
"""Measure every candidate's speed and quality at prepare time and keep the fastest admitted one."""
AUTO_CANDIDATES = ("fp32", "bf16", "int8", "int8-dynamic", "int4")
DEFAULT_AUTO_TIME_LIMIT_S = 60.0


def check_precision(precision: str, *, allow_auto: bool = True) -> None:
    """EngineError unless ``precision`` is supported (``auto`` too, unless ``allow_auto`` is false)."""
    if precision not in PRECISIONS and not (allow_auto and precision == AUTO_PRECISION):
        supported = ", ".join([*PRECISIONS, AUTO_PRECISION] if allow_auto else PRECISIONS)
        raise EngineError(f"unknown precision {precision!r}; supported: {supported}")


def convert_precision(
    model: PreTrainedModel,
    precision: str,
    *,
    int4_layout: Mapping[str, str] | None = None,
    int4_exact: Mapping[str, Int4Weights] | None = None,
) -> PreTrainedModel:
    """Turn a float32 model into ``precision`` (in place where possible); returns the model.

    ``int4_layout`` (module name -> int4/int8/bf16, see ``int4.select_layout``) is the layout of ``int4``;
    without one, every layer that fits the int4 kernel is int4. ``int4_exact`` gives int4 weights mapped
    from the source (its Q4_K tensors, see ``int4.match_exact``); the other int4 weights are re-quantized.
    """
    import torch

    check_precision(precision, allow_auto=False)
    dtype = getattr(torch, PRECISIONS[precision])
    if precision in INT4_PRECISIONS:
        from custos.engine import int4

        if int4_layout is None:
            groups = int4.tensor_groups(model, {})
            int4_layout = dict.fromkeys((n for names in groups.values() for n in names), "int4")
        int4.apply_layout(model, int4_layout, dtype=dtype, exact=int4_exact)  # type: ignore[arg-type]
        model.config.dtype = dtype
        return model
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
