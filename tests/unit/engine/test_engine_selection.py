"""``precision = "auto"``: the fastest admitted mode is chosen within the time limit, and recorded."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from custos.engine import selection
from custos.engine.cache import prepare_model, resolve_cache
from custos.engine.local import TransformersEngine
from custos.engine.manifest import load_manifest
from custos.engine.precision import AUTO_CANDIDATES
from custos.engine.quality import QualityGateError, QualityLimits
from custos.engine.selection import CandidateResult, choose, decode_speed
from custos.engine.types import ChatTurn, EngineError, SamplingParams
from custos.server.model import finish_loading
from custos.server.settings import load_settings
from custos.testing.tiny_engine import build_tiny_model, save_tiny_model_dir

TURNS = (ChatTurn("user", "Where is my parcel?"),)


def _candidate(precision: str, speed: float, admitted: bool) -> CandidateResult:
    return CandidateResult(
        precision=precision,
        quality={"admitted": admitted},
        admitted=admitted,
        decode_tokens_per_s=speed,
        decode_steps=1,
        speed_seconds=0.1,
    )


@pytest.mark.parametrize(
    ("measured", "chosen"),
    [
        ([("fp32", 10, True), ("bf16", 20, True), ("int8", 30, True)], "int8"),
        ([("fp32", 10, True), ("bf16", 20, True), ("int8-dynamic", 40, False)], "bf16"),
        ([("fp32", 10, True), ("int8", 30, False), ("int8-dynamic", 40, False)], "fp32"),
        ([("int8-dynamic", 99, False), ("bf16", 1, True)], "bf16"),
    ],
)
def test_the_fastest_admitted_mode_is_chosen_and_a_refused_one_never(
    measured: list[tuple[str, float, bool]], chosen: str
) -> None:
    assert choose([_candidate(*m) for m in measured]) == chosen


def test_no_admitted_mode_is_an_error() -> None:
    with pytest.raises(EngineError, match="no candidate"):
        choose([_candidate("int8-dynamic", 40, False)])


@pytest.mark.parametrize(("budget_s", "steps"), [(0.0, 1), (0.15, 1), (0.25, 2), (0.45, 4), (100.0, 64)])
def test_decode_speed_stops_at_its_budget(budget_s: float, steps: int) -> None:
    """A clock advancing 0.1 s per reading: timed steps end once the budget is spent (at least one)."""
    ticks = itertools.count()
    model = build_tiny_model(seed=0, vocab_size=300)
    speed, done, _ = decode_speed(model, [2, 40, 41], budget_s=budget_s, clock=lambda: next(ticks) / 10)
    assert done == steps
    assert speed > 0


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model_dir(tmp_path_factory.mktemp("src") / "tiny-hf")


DYNAMIC_LINEAR_MODULE = "torch.ao.nn.quantized.dynamic.modules.linear"
SPEEDS = {"fp32": 10.0, "bf16": 20.0, "int8": 30.0, "int4": 35.0, "int8-dynamic": 40.0}


@pytest.fixture
def fixed_speeds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    """Replace the timing by fixed speeds (fastest: int8-dynamic); records each candidate's budget."""
    budgets: list[tuple[str, float]] = []

    def fake(model: Any, ids: Any, *, budget_s: float) -> tuple[float, int, float]:
        head = type(model.get_output_embeddings())
        if head.__module__ == DYNAMIC_LINEAR_MODULE:
            name = "int8-dynamic"
        elif head.__name__ == "TiedInt8Head":
            name = "int8"
        elif head.__name__ == "TiedInt4Head":
            name = "int4"
        else:
            name = "bf16" if next(model.parameters()).dtype == torch.bfloat16 else "fp32"
        budgets.append((name, budget_s))
        return SPEEDS[name], 3, budget_s / 2

    monkeypatch.setattr(selection, "decode_speed", fake)
    return budgets


def test_auto_prepare_keeps_the_fastest_admitted_mode_and_records_every_measurement(
    source_dir: Path, tmp_path: Path, fixed_speeds: list[tuple[str, float]]
) -> None:
    # Agreement of at least 99.9 % admits only fp32 itself on the tiny model, though it is the slowest.
    strict = QualityLimits(min_agreement=0.999)
    cache_dir = prepare_model(
        source=source_dir, cache_root=tmp_path, precision="auto", limits=strict, auto_time_limit_s=2.0
    )
    assert [name for name, _ in fixed_speeds] == list(AUTO_CANDIDATES)
    assert sum(budget for _, budget in fixed_speeds) == pytest.approx(2.0)
    manifest = load_manifest(cache_dir)
    assert manifest.precision == "fp32"
    assert manifest.selection is not None and manifest.selection["chosen"] == "fp32"
    recorded = {c["precision"]: c for c in manifest.selection["candidates"]}
    assert set(recorded) == set(AUTO_CANDIDATES)
    assert [p for p, c in recorded.items() if c["admitted"]] == ["fp32"]
    assert recorded["int8-dynamic"]["decode_tokens_per_s"] == 40.0
    assert manifest.quality == recorded["fp32"]["quality"]
    # Served by name "auto": the same directory, the chosen precision.
    assert resolve_cache(source=source_dir, cache_root=tmp_path, precision="auto") == cache_dir
    settings = load_settings(
        data_dir=tmp_path / "data", model_source=str(source_dir), model_cache_dir=tmp_path, precision="auto"
    )
    engine = finish_loading(settings, None)
    try:
        assert engine.info.precision == "fp32"
        assert engine.generate(TURNS, SamplingParams(max_new_tokens=2)).completion_tokens == 2
    finally:
        engine.close()


def test_auto_prepare_chooses_a_quantized_mode_when_it_is_admitted(
    source_dir: Path, tmp_path: Path, fixed_speeds: list[tuple[str, float]]
) -> None:
    lenient = QualityLimits(max_perplexity_increase=0.5, min_agreement=0.5)
    cache_dir = prepare_model(source=source_dir, cache_root=tmp_path, precision="auto", limits=lenient)
    manifest = load_manifest(cache_dir)
    assert manifest.precision == "int8-dynamic"
    engine = TransformersEngine.from_cache(cache_dir)
    assert type(engine.model.get_output_embeddings()).__module__ == DYNAMIC_LINEAR_MODULE
    assert engine.info.precision == "int8-dynamic"
    assert engine.generate(TURNS, SamplingParams(max_new_tokens=2)).completion_tokens == 2


def test_auto_prepare_keeps_an_int4_layout_when_it_is_fastest_and_admitted(
    source_dir: Path, tmp_path: Path, fixed_speeds: list[tuple[str, float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(SPEEDS, "int4", 50.0)
    lenient = QualityLimits(max_perplexity_increase=0.05, min_agreement=0.5)
    cache_dir = prepare_model(source=source_dir, cache_root=tmp_path, precision="auto", limits=lenient)
    manifest = load_manifest(cache_dir)
    assert manifest.precision == "int4"
    assert manifest.selection is not None
    (recorded,) = [c for c in manifest.selection["candidates"] if c["precision"] == "int4"]
    assert recorded["admitted"] and recorded["int4_groups"] == {
        "attention": "int4",
        "mlp": "int4",
        "embedding": "int4",
    }
    engine = TransformersEngine.from_cache(cache_dir)
    assert type(engine.model.get_output_embeddings()).__name__ == "TiedInt4Head"
    assert engine.info.precision == "int4"
    assert engine.generate(TURNS, SamplingParams(max_new_tokens=2)).completion_tokens == 2


def test_a_cache_of_one_precision_does_not_answer_for_auto(source_dir: Path, tmp_path: Path) -> None:
    prepare_model(source=source_dir, cache_root=tmp_path, precision="fp32")
    with pytest.raises(Exception, match="custos model prepare"):
        resolve_cache(source=source_dir, cache_root=tmp_path, precision="auto")


def test_int8_dynamic_outside_the_gate_gets_no_cache(source_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(QualityGateError, match="int8-dynamic is refused by the quality gate"):
        prepare_model(
            source=source_dir,
            cache_root=tmp_path,
            precision="int8-dynamic",
            limits=QualityLimits(min_agreement=0.999),
        )
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
