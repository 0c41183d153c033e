"""Loading the model for ``serve`` while the rest of the server is built.

A warm start spends most of its time importing (torch, transformers' modeling code, Presidio, spaCy,
gRPC), which holds the GIL, and reading the cache (the weights file hashed while it is read, the
262k-token tokenizer parsed in Rust), which mostly does not. :func:`start_reading` reads the prepared
cache on a thread so the two overlap; :func:`finish_loading` builds the model on the caller's thread
once the imports are done, so no two threads import transformers at the same time.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from custos.engine.cache import ProgressFn, prepare_model, resolve_source
from custos.engine.local import CacheContents, TransformersEngine, read_cache_contents
from custos.engine.prompt import AUTO, STATIC_PROMPT_FORMATS
from custos.engine.quality import QualityLimits
from custos.engine.scheduler import BatchingEngine

if TYPE_CHECKING:
    from custos.server.settings import Settings


def prepare_from_settings(
    settings: Settings,
    progress: ProgressFn | None,
    *,
    cache_root: Path | None = None,
    rebuild_invalid: bool = True,
    verify_existing: bool = True,
) -> Path:
    """``prepare_model`` with the configured source, precision, prompt format, quality and auto limits."""
    return prepare_model(
        source=settings.model_source,
        cache_root=cache_root if cache_root is not None else settings.resolved_model_cache_dir,
        precision=settings.precision,
        prompt_format=settings.prompt_format,
        progress=progress,
        rebuild_invalid=rebuild_invalid,
        verify_existing=verify_existing,
        limits=QualityLimits(
            max_perplexity_increase=settings.quality_max_perplexity_increase,
            min_agreement=settings.quality_min_greedy_agreement,
        ),
        auto_time_limit_s=settings.auto_precision_time_limit_s,
    )


def _prepare(settings: Settings, progress: ProgressFn | None) -> CacheContents:
    cache_dir = prepare_from_settings(settings, progress, rebuild_invalid=False, verify_existing=False)
    # Verifies the cache digest while reading the weights (and refuses a cache that does not match it).
    return read_cache_contents(cache_dir, verify=True)


def start_reading(settings: Settings) -> Future[CacheContents | None] | None:
    """Read the prepared cache on a background thread, to overlap the caller's imports.

    The future's result is None when there is no cache yet: building one imports transformers' modeling
    code, which must not run beside the server's own imports, so :func:`finish_loading` builds it on the
    caller's thread. Not started at all (None) for a prompt format that would re-read the cached chat
    template through transformers (neither ``auto`` nor a static format).
    """
    if settings.prompt_format != AUTO and settings.prompt_format not in STATIC_PROMPT_FORMATS:
        return None
    # What the reader needs from transformers is imported here, so the thread imports nothing the
    # caller's thread may be importing at the same time.
    from transformers import PreTrainedTokenizerFast  # noqa: F401

    from custos.engine import weights  # noqa: F401

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="custos-model-read")
    try:
        return pool.submit(_read_existing, settings)
    finally:
        pool.shutdown(wait=False)


def _read_existing(settings: Settings) -> CacheContents | None:
    target = Path(settings.resolved_model_cache_dir) / resolve_source(settings.model_source).cache_dir_name(
        settings.precision
    )
    if not target.exists():
        return None
    return _prepare(settings, None)


def finish_loading(
    settings: Settings,
    reading: Future[CacheContents | None] | None,
    *,
    progress: ProgressFn | None = None,
) -> BatchingEngine:
    """The batching engine of the settings' model, from ``reading`` or (when None) read here."""
    contents = reading.result() if reading is not None else None
    if contents is None:
        contents = _prepare(settings, progress)
    model = TransformersEngine.from_contents(
        contents, device=settings.device, num_threads=settings.torch_threads
    )
    return BatchingEngine(model, max_batch=settings.max_batch_size, max_queue=settings.max_queued_requests)
