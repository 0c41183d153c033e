"""``precision = "auto"``: measure each candidate's decode speed and quality, keep the fastest admitted.

Every candidate is converted from the same float32 weights, judged by the quality gate (``quality``) and
timed decoding one token at a time after a short prefill. The time limit bounds the decoding of all
candidates together: each gets an equal share, and at least one timed step, so a very small limit still
yields a number. A refused candidate is never chosen, however fast; float32 is the gate's reference and
always admitted, so there is always a choice.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from custos.engine.quality import QualityLimits, QualityReport, judge, measure, support_ids
from custos.engine.types import EngineError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from custos.engine.int4 import Int4Weights

SPEED_PROMPT_TOKENS = 32
"""Tokens of the support text prefilled before the timed decode steps."""
MAX_SPEED_STEPS = 64
"""Timed decode steps per candidate at most (a candidate may stop earlier at its share of the limit)."""


@dataclass(frozen=True)
class CandidateResult:
    """One candidate's measurements."""

    precision: str
    quality: dict[str, Any]
    admitted: bool
    decode_tokens_per_s: float
    decode_steps: int
    speed_seconds: float
    """Wall time of the speed measurement: prefill, one untimed warm-up step and the timed steps."""
    int4_groups: dict[str, str] | None = None
    """For ``int4``: the form the gate admitted for each group of tensors (see ``int4.select_layout``)."""


@dataclass(frozen=True)
class Selection:
    """What ``auto`` measured and chose; stored in the manifest as ``selection``."""

    candidates: tuple[CandidateResult, ...]
    chosen: str
    time_limit_s: float

    def result(self, precision: str) -> CandidateResult:
        """The measurements of ``precision``."""
        return next(c for c in self.candidates if c.precision == precision)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values."""
        return {
            "requested": "auto",
            "chosen": self.chosen,
            "time_limit_s": self.time_limit_s,
            "candidates": [asdict(c) for c in self.candidates],
        }

    def describe(self) -> list[str]:
        """One line per candidate: speed, gate figures and verdict."""
        return describe_selection(self.to_dict())


def describe_selection(selection: dict[str, Any]) -> list[str]:
    """Lines for a manifest's ``selection`` (the prepare command prints them)."""
    lines = []
    for c in selection["candidates"]:
        q = c["quality"]
        verdict = "admitted" if c["admitted"] else "REFUSED by the quality gate"
        mark = "  <- chosen" if c["precision"] == selection["chosen"] else ""
        lines.append(
            f"{c['precision']:13} {c['decode_tokens_per_s']:7.1f} tok/s decode ({c['decode_steps']} steps), "
            f"perplexity {q['perplexity_increase']:+.1%} vs fp32, greedy agreement "
            f"{q['greedy_agreement']:.1%}: {verdict}{mark}"
        )
    return lines


def choose(candidates: Sequence[CandidateResult]) -> str:
    """The fastest admitted candidate's precision; EngineError when none is admitted."""
    admitted = [c for c in candidates if c.admitted]
    if not admitted:
        raise EngineError("no candidate precision passed the quality gate")
    return max(admitted, key=lambda c: c.decode_tokens_per_s).precision


def decode_speed(
    model: PreTrainedModel,
    ids: Sequence[int],
    *,
    budget_s: float,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, int, float]:
    """Greedy decode steps after prefilling ``ids``: (tokens/s of the timed steps, steps, total seconds).

    Steps continue while the budget lasts (counted from the start, prefill included), at least one and at
    most MAX_SPEED_STEPS.
    """
    import inspect

    import torch
    from transformers import DynamicCache

    cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    started = clock()
    deadline = started + budget_s
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        logits = model(input_ids=torch.tensor([list(ids)]), use_cache=True, **{cache_kwarg: cache}).logits
        token = int(logits[0, -1].argmax())
        # One untimed step: the first call of a kernel pays one-time set-up costs.
        logits = model(input_ids=torch.tensor([[token]]), use_cache=True, **{cache_kwarg: cache}).logits
        token = int(logits[0, -1].argmax())
        steps = 0
        timed_from = clock()
        while steps == 0 or (steps < MAX_SPEED_STEPS and clock() < deadline):
            logits = model(input_ids=torch.tensor([[token]]), use_cache=True, **{cache_kwarg: cache}).logits
            token = int(logits[0, -1].argmax())
            steps += 1
        ended = clock()
    return steps / max(ended - timed_from, 1e-9), steps, ended - started


def select_precision(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    candidates: Sequence[str],
    limits: QualityLimits,
    time_limit_s: float,
    int4_exact: Mapping[str, Int4Weights] | None = None,
) -> Selection:
    """Measure every candidate from the float32 ``model`` (left unchanged) and choose (see the module).

    ``int4`` first chooses its layout group by group through the gate (``int4.select_layout``, with the
    source's exactly mapped ``int4_exact`` weights); the layout it admits is the candidate.
    """
    from custos.engine.precision import INT4_PRECISIONS, convert_precision

    if time_limit_s <= 0:
        raise EngineError("the auto precision time limit must be positive")
    ids = support_ids(tokenizer)
    reference = measure(model, ids)
    share = time_limit_s / len(candidates)
    results = []
    for precision in candidates:
        groups: dict[str, str] | None = None
        if precision in INT4_PRECISIONS:
            from custos.engine.int4 import select_layout

            choice = select_layout(model, ids, reference, limits, exact=int4_exact)
            converted = convert_precision(
                copy.deepcopy(model), precision, int4_layout=choice.layout, int4_exact=int4_exact
            )
            quality, admitted, groups = choice.quality, choice.admitted, dict(choice.groups)
        else:
            converted = model if precision == "fp32" else convert_precision(copy.deepcopy(model), precision)
            report: QualityReport = judge(
                reference, reference if converted is model else measure(converted, ids), limits, len(ids)
            )
            quality, admitted = report.to_dict(), report.admitted
        speed, steps, seconds = decode_speed(converted, ids[:SPEED_PROMPT_TOKENS], budget_s=share)
        results.append(
            CandidateResult(
                precision=precision,
                quality=quality,
                admitted=admitted,
                decode_tokens_per_s=round(speed, 3),
                decode_steps=steps,
                speed_seconds=round(seconds, 4),
                int4_groups=groups,
            )
        )
        del converted
    return Selection(candidates=tuple(results), chosen=choose(results), time_limit_s=time_limit_s)
