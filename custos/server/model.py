"""The process wiring between the settings and the engine: which model to prepare, read and serve.

The engine takes plain keyword arguments and knows nothing of :class:`Settings`; ``serve``, ``model
prepare`` and ``bench serve`` call these functions so all three turn the same settings into the same
model cache.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from custos.engine import startup
from custos.engine.cache import ProgressFn, prepare_model
from custos.engine.local import CacheContents
from custos.engine.quality import QualityLimits
from custos.engine.scheduler import BatchingEngine
from custos.server.settings import Settings, SettingsError

if TYPE_CHECKING:
    from custos.engine.upstream import UpstreamEngine


class _ModelOptions(TypedDict):
    """The ``prepare_model`` options the settings choose (also what reading and loading the cache need)."""

    source: str
    cache_root: Path
    precision: str
    prompt_format: str
    limits: QualityLimits
    auto_time_limit_s: float


def _model_options(settings: Settings) -> _ModelOptions:
    return _ModelOptions(
        source=settings.model_source,
        cache_root=settings.resolved_model_cache_dir,
        precision=settings.precision,
        prompt_format=settings.prompt_format,
        limits=QualityLimits(
            max_perplexity_increase=settings.quality_max_perplexity_increase,
            min_agreement=settings.quality_min_greedy_agreement,
        ),
        auto_time_limit_s=settings.auto_precision_time_limit_s,
    )


def prepare_from_settings(
    settings: Settings,
    progress: ProgressFn | None,
    *,
    cache_root: Path | None = None,
    rebuild_invalid: bool = True,
    verify_existing: bool = True,
) -> Path:
    """``prepare_model`` with the configured source, precision, prompt format, quality and auto limits."""
    options = _model_options(settings)
    if cache_root is not None:
        options["cache_root"] = cache_root
    return prepare_model(
        **options, progress=progress, rebuild_invalid=rebuild_invalid, verify_existing=verify_existing
    )


def start_reading(settings: Settings) -> Future[CacheContents | None] | None:
    """Start reading the configured model's cache on a thread (see ``engine.startup.start_reading``)."""
    return startup.start_reading(**_model_options(settings))


def finish_loading(
    settings: Settings,
    reading: Future[CacheContents | None] | None,
    *,
    progress: ProgressFn | None = None,
) -> BatchingEngine:
    """The batching engine of the settings' model, from ``reading`` or (when None) read here."""
    return startup.finish_loading(
        reading,
        **_model_options(settings),
        device=settings.device,
        num_threads=settings.torch_threads,
        max_batch=settings.max_batch_size,
        max_queue=settings.max_queued_requests,
        prompt_cache_bytes=settings.prompt_cache_mb << 20,
        progress=progress,
    )


def build_upstream_engine(settings: Settings) -> UpstreamEngine:
    """The engine over the configured OpenAI-compatible upstream (``engine_backend = "openai"``).

    Reads the API key file (refusing one readable by others); probes the upstream once so the first
    audit records carry what it says of the model, but starts even while it is down (health says so).
    """
    from custos.engine.upstream import UpstreamEngine

    assert settings.upstream_base_url is not None and settings.upstream_model is not None
    api_key: str | None = None
    key_file = settings.upstream_api_key_file
    if key_file is not None:
        if key_file.stat().st_mode & 0o077:
            raise SettingsError(f"upstream_api_key_file: {key_file} is readable by others; chmod 600 it")
        api_key = key_file.read_text(encoding="utf-8").strip()
        if not api_key:
            raise SettingsError(f"upstream_api_key_file: {key_file} is empty")
    engine = UpstreamEngine(
        settings.upstream_base_url,
        settings.upstream_model,
        api_key=api_key,
        ca_file=settings.upstream_ca_file,
        timeout_s=settings.upstream_timeout_s,
        max_in_flight=settings.upstream_max_in_flight,
        max_queue=settings.max_queued_requests,
        readiness_interval_s=settings.upstream_probe_interval_s,
    )
    engine.check_ready()
    return engine
