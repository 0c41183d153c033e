"""Reading the model cache on a thread while the server is built (``engine.startup``, ``server.model``)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from custos.engine import local, startup
from custos.engine.cache import prepare_model
from custos.engine.local import CacheContents
from custos.engine.types import ModelCacheError, SamplingParams
from custos.server.model import finish_loading, start_reading
from custos.server.settings import Settings, load_settings
from custos.testing.tiny_engine import save_tiny_model_dir
from tests.unit.engine.test_engine_cache import TURNS, flip_byte


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model_dir(tmp_path_factory.mktemp("src") / "tiny-hf")


@pytest.fixture(scope="module")
def prepared(source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_model(source=source_dir, cache_root=tmp_path_factory.mktemp("cache"), precision="fp32")


def _settings(source_dir: Path, cache_root: Path, tmp_path: Path, **overrides: object) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        model_source=str(source_dir),
        model_cache_dir=cache_root,
        precision="fp32",
        **overrides,
    )


def test_an_existing_cache_is_read_on_another_thread(
    source_dir: Path, prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = local.read_cache_contents

    def spy(cache_dir: Path, *, verify: bool = True) -> CacheContents:
        threads.append(threading.current_thread().name)
        return real(cache_dir, verify=verify)

    monkeypatch.setattr(startup, "read_cache_contents", spy)
    settings = _settings(source_dir, prepared.parent, tmp_path)
    reading = start_reading(settings)
    assert reading is not None
    contents = reading.result(timeout=60)
    assert contents is not None and contents.cache_dir == prepared
    assert threads and threads[0] != threading.current_thread().name
    engine = finish_loading(settings, reading)
    try:
        assert engine.generate(TURNS, SamplingParams(max_new_tokens=3)).completion_tokens == 3
    finally:
        engine.close()


def test_without_a_cache_nothing_is_built_on_the_thread(
    source_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built_on: list[str] = []
    real = startup.prepare_model

    def spy(**kwargs: object) -> Path:
        built_on.append(threading.current_thread().name)
        return real(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(startup, "prepare_model", spy)
    settings = _settings(source_dir, tmp_path / "empty-root", tmp_path)
    reading = start_reading(settings)
    assert reading is not None and reading.result(timeout=60) is None
    assert built_on == []
    engine = finish_loading(settings, reading)
    engine.close()
    assert built_on == [threading.current_thread().name]  # built on the caller's thread


def test_an_altered_cache_is_refused_through_the_thread(
    source_dir: Path, prepared: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "root" / prepared.name
    shutil.copytree(prepared, copy)
    flip_byte(copy / "model.safetensors")
    settings = _settings(source_dir, copy.parent, tmp_path)
    reading = start_reading(settings)
    with pytest.raises(ModelCacheError, match="digest mismatch"):
        finish_loading(settings, reading)


def test_the_torch_threads_setting_reaches_the_model(
    source_dir: Path, prepared: Path, tmp_path: Path
) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            settings = _settings(source_dir, prepared.parent, tmp_path, torch_threads=threads)
            finish_loading(settings, None).close()
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
