"""The quality gate at prepare time, the int8 precision, and loading caches in one read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from custos.engine import weights
from custos.engine.cache import prepare_model
from custos.engine.local import TransformersEngine
from custos.engine.manifest import MANIFEST_NAME, load_manifest
from custos.engine.quality import (
    SUPPORT_TEXT_SHA256,
    Measurement,
    QualityGateError,
    QualityLimits,
    judge,
)
from custos.engine.quant import Int8Linear, TiedInt8Head
from custos.engine.scheduler import BatchingEngine
from custos.engine.types import ChatTurn, ModelCacheError, SamplingParams
from custos.testing.tiny_engine import build_tiny_engine, save_tiny_model_dir

TURNS = (ChatTurn("user", "Hello, where is <ORDER_ID_1>?"),)
GREEDY = SamplingParams(max_new_tokens=12)
LOOSE = QualityLimits(max_perplexity_increase=1.0, min_agreement=0.0)
IMPOSSIBLE = QualityLimits(max_perplexity_increase=-1.0, min_agreement=1.0)


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved as a Hugging Face directory (seed 0)."""
    return save_tiny_model_dir(tmp_path_factory.mktemp("src") / "tiny-hf")


@pytest.fixture(scope="module")
def int8_cache(source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An int8 cache of the tiny model, prepared under limits it meets."""
    return prepare_model(
        source=source_dir, cache_root=tmp_path_factory.mktemp("cache"), precision="int8", limits=LOOSE
    )


def measured(perplexity: float, predictions: list[int]) -> Measurement:
    return Measurement(perplexity=perplexity, predictions=torch.tensor(predictions), seconds=0.0)


REFERENCE = measured(10.0, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])


@pytest.mark.parametrize(
    ("perplexity", "predictions", "admitted"),
    [
        (10.0, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], True),  # identical
        (10.29, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], True),  # +2.9 %
        (10.31, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], False),  # +3.1 %
        (9.0, [1, 2, 3, 4, 5, 6, 7, 8, 9, 0], True),  # lower perplexity, 90 % agreement
        (10.0, [1, 2, 3, 4, 5, 6, 7, 8, 0, 0], False),  # 80 % agreement
    ],
)
def test_gate_limits(perplexity: float, predictions: list[int], admitted: bool) -> None:
    report = judge(REFERENCE, measured(perplexity, predictions), QualityLimits(), tokens=11)
    assert report.admitted is admitted
    assert report.perplexity_increase == pytest.approx(perplexity / 10.0 - 1.0, abs=1e-6)
    assert (report.max_perplexity_increase, report.min_agreement) == (0.03, 0.90)


def test_prepare_stores_the_gate_in_the_manifest(source_dir: Path, tmp_path: Path) -> None:
    cache_dir = prepare_model(source=source_dir, cache_root=tmp_path, precision="bf16")
    quality = load_manifest(cache_dir).quality
    assert quality is not None and quality["admitted"] is True
    assert quality["text_sha256"] == SUPPORT_TEXT_SHA256 and quality["tokens"] > 100
    assert quality["reference_perplexity"] > 1.0 and quality["greedy_agreement"] >= 0.9
    assert abs(quality["perplexity_increase"]) <= 0.03


def test_a_precision_outside_the_gate_gets_no_cache(source_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(QualityGateError, match="int8 is refused by the quality gate: perplexity"):
        prepare_model(source=source_dir, cache_root=tmp_path, precision="int8", limits=IMPOSSIBLE)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []
    assert not list(tmp_path.glob(".staging-*"))


def test_int8_cache_loads_as_int8_and_matches_the_model_quantized_in_memory(int8_cache: Path) -> None:
    engine = TransformersEngine.from_cache(int8_cache)
    assert engine.info.precision == "int8"
    layers = [m for m in engine.model.modules() if isinstance(m, Int8Linear)]
    assert layers and all(m.weight_int8.dtype == torch.int8 for m in layers)
    assert all(m.weight_int8.data_ptr() % 16 == 0 for m in layers)  # what the int8 kernel needs
    assert isinstance(engine.model.lm_head, TiedInt8Head)
    expected = build_tiny_engine(seed=0, precision="int8").generate(TURNS, GREEDY)
    actual = engine.generate(TURNS, GREEDY)
    assert (actual.text, actual.completion_tokens) == (expected.text, expected.completion_tokens)
    assert actual.mean_logprob == pytest.approx(expected.mean_logprob, abs=1e-3)


@pytest.mark.parametrize("quality", [None, {"admitted": False}])
def test_serving_refuses_an_int8_cache_without_an_admitted_gate(
    int8_cache: Path, tmp_path: Path, quality: object
) -> None:
    import shutil

    copy = tmp_path / int8_cache.name
    shutil.copytree(int8_cache, copy)
    raw = json.loads((copy / MANIFEST_NAME).read_text())
    raw["quality"] = quality
    (copy / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(ModelCacheError, match="no admitted quality gate"):
        TransformersEngine.from_cache(copy)


def test_int8_batched_output_equals_unbatched() -> None:
    prompts = [(ChatTurn("user", text),) for text in ("Where is my parcel?", "Refund please", "Hi")]
    single = build_tiny_engine(seed=3, precision="int8")
    expected = [single.generate(turns, GREEDY).text for turns in prompts]
    batching = BatchingEngine(build_tiny_engine(seed=3, precision="int8"), max_batch=4)
    try:
        requests = [batching.submit(turns, GREEDY) for turns in prompts]
        for request in requests:
            assert request.done.wait(60)
        assert [r.result.text for r in requests if r.result is not None] == expected
    finally:
        batching.close()


def test_weights_are_read_into_private_memory(int8_cache: Path, tmp_path: Path) -> None:
    """Overwriting the cache file after loading does not change the loaded tensors."""
    import shutil

    copy = tmp_path / int8_cache.name
    shutil.copytree(int8_cache, copy)
    tensors = weights.read_cache(copy, load_manifest(copy), verify=True)
    before = {k: v.clone() for k, v in tensors.items()}
    path = copy / weights.WEIGHTS_NAME
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(64)
    path.write_bytes(bytes(data))
    assert all(torch.equal(before[k], tensors[k]) for k in before)
    with pytest.raises(ModelCacheError, match="digest mismatch"):
        weights.read_cache(copy, load_manifest(copy), verify=True)
