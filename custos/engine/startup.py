"""Loading the model for ``serve`` while the rest of the server is built.

A warm start spends most of its time importing (torch, transformers' modeling code, Presidio, spaCy,
gRPC), which holds the GIL, and reading the cache (the weights file hashed while it is read, the
262k-token tokenizer parsed in Rust), which mostly does not. :func:`start_reading` reads the prepared
cache on a thread so the two overlap; :func:`finish_loading` builds the model on the caller's thread
once the imports are done, so no two threads import transformers at the same time.

Both take the model's options as plain keyword arguments (those of ``cache.prepare_model``): the
engine knows nothing of the server's settings, which the process wiring turns into these arguments.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from custos.engine.cache import ProgressFn, prepare_model
from custos.engine.local import CacheContents, TransformersEngine, read_cache_contents
from custos.engine.precision import DEFAULT_AUTO_TIME_LIMIT_S
from custos.engine.prompt import AUTO, STATIC_PROMPT_FORMATS
from custos.engine.quality import QualityLimits
from custos.engine.scheduler import BatchingEngine
from custos.engine.sources import resolve_source


def _prepare(
    progress: ProgressFn | None,
    *,
    source: str | Path,
    cache_root: Path,
    precision: str,
    prompt_format: str,
    limits: QualityLimits | None,
    auto_time_limit_s: float,
) -> CacheContents:
    cache_dir = prepare_model(
        source=source,
        cache_root=cache_root,
        precision=precision,
        prompt_format=prompt_format,
        progress=progress,
        rebuild_invalid=False,
        verify_existing=False,
        limits=limits,
        auto_time_limit_s=auto_time_limit_s,
    )
    # Verifies the cache digest while reading the weights (and refuses a cache that does not match it).
    return read_cache_contents(cache_dir, verify=True)


def start_reading(
    *,
    source: str | Path,
    cache_root: Path,
    precision: str,
    prompt_format: str = AUTO,
    limits: QualityLimits | None = None,
    auto_time_limit_s: float = DEFAULT_AUTO_TIME_LIMIT_S,
) -> Future[CacheContents | None] | None:
    """Read the prepared cache on a background thread, to overlap the caller's imports.

    The future's result is None when there is no cache yet: building one imports transformers' modeling
    code, which must not run beside the server's own imports, so :func:`finish_loading` builds it on the
    caller's thread. Not started at all (None) for a prompt format that would re-read the cached chat
    template through transformers (neither ``auto`` nor a static format).
    """
    if prompt_format != AUTO and prompt_format not in STATIC_PROMPT_FORMATS:
        return None
    # What the reader needs from transformers is imported here, so the thread imports nothing the
    # caller's thread may be importing at the same time.
    from transformers import PreTrainedTokenizerFast  # noqa: F401

    from custos.engine import weights  # noqa: F401

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="custos-model-read")
    try:
        return pool.submit(
            _read_existing,
            source=source,
            cache_root=cache_root,
            precision=precision,
            prompt_format=prompt_format,
            limits=limits,
            auto_time_limit_s=auto_time_limit_s,
        )
    finally:
        pool.shutdown(wait=False)


def _read_existing(
    *,
    source: str | Path,
    cache_root: Path,
    precision: str,
    prompt_format: str,
    limits: QualityLimits | None,
    auto_time_limit_s: float,
) -> CacheContents | None:
    target = Path(cache_root) / resolve_source(source).cache_dir_name(precision)
    if not target.exists():
        return None
    return _prepare(
        None,
        source=source,
        cache_root=cache_root,
        precision=precision,
        prompt_format=prompt_format,
        limits=limits,
        auto_time_limit_s=auto_time_limit_s,
    )


def finish_loading(
    reading: Future[CacheContents | None] | None,
    *,
    source: str | Path,
    cache_root: Path,
    precision: str,
    prompt_format: str = AUTO,
    limits: QualityLimits | None = None,
    auto_time_limit_s: float = DEFAULT_AUTO_TIME_LIMIT_S,
    device: str = "cpu",
    num_threads: int | None = None,
    max_batch: int,
    max_queue: int,
    prompt_cache_bytes: int = 0,
    progress: ProgressFn | None = None,
) -> BatchingEngine:
    """The batching engine of this model, from ``reading`` or (when None) read here.

    ``device`` and ``num_threads`` go to ``TransformersEngine.from_contents``, ``max_batch`` and
    ``max_queue`` and ``prompt_cache_bytes`` to the :class:`BatchingEngine`; the other options are those
    of ``prepare_model``.
    """
    contents = reading.result() if reading is not None else None
    if contents is None:
        contents = _prepare(
            progress,
            source=source,
            cache_root=cache_root,
            precision=precision,
            prompt_format=prompt_format,
            limits=limits,
            auto_time_limit_s=auto_time_limit_s,
        )
    model = TransformersEngine.from_contents(contents, device=device, num_threads=num_threads)
    return BatchingEngine(
        model, max_batch=max_batch, max_queue=max_queue, prompt_cache_bytes=prompt_cache_bytes
    )
