"""App wiring: heavy objects are built once here and passed in; nothing happens at import time."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection
from presidio_analyzer import AnalyzerEngine

from custos.audit.db import make_engine, migrate
from custos.audit.store import AuditStore, TranscriptStore
from custos.privacy.keys import FileKeyProvider, MasterKeyProvider
from custos.privacy.pseudonymize import Pseudonymizer
from custos.server.compliance import ComplianceService
from custos.server.convert import RequestLimits
from custos.server.engine.base import Engine
from custos.server.interceptors import ObservingInterceptor
from custos.server.metrics import Metrics
from custos.server.pipeline import Pipeline
from custos.server.servicers import AuditServicer, InferenceServicer, raw_bytes_handler
from custos.server.settings import Settings
from custos.v1 import admin_pb2, audit_pb2, feedback_pb2, inference_pb2, privacy_pb2

log = logging.getLogger("custos.server")

# Every service of the API, in declaration order; empty ones still appear in reflection.
SERVICES = (
    inference_pb2.DESCRIPTOR.services_by_name["Inference"],
    privacy_pb2.DESCRIPTOR.services_by_name["Privacy"],
    audit_pb2.DESCRIPTOR.services_by_name["Audit"],
    feedback_pb2.DESCRIPTOR.services_by_name["Feedback"],
    admin_pb2.DESCRIPTOR.services_by_name["Admin"],
)
# gRPC's own receive limit sits above the configured one, so oversized requests reach the servicer
# (and get an audit record) instead of being refused by the core.
CORE_SIZE_HEADROOM = 2
# Progress callback of model preparation: (step description, fraction done or None).
ProgressFn = Callable[[str, float | None], None]


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 if missing."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@dataclass(frozen=True)
class Components:
    """The heavy objects: built once per process (or once per test session) and shared."""

    analyzer: AnalyzerEngine
    engine: Engine


class CustosServer:
    """One running Custos: gRPC server, health, reflection, metrics, database and keys."""

    def __init__(self, settings: Settings, components: Components) -> None:
        self.settings = settings
        self.components = components
        self.metrics = Metrics()
        self.health = health_aio.HealthServicer()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        # Each generation blocks one worker while the engine runs it; the engine says how many may wait.
        workers = settings.worker_threads + components.engine.concurrency
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="custos")
        self.keys: MasterKeyProvider | None = None
        self.audit: AuditStore | None = None
        self.transcripts: TranscriptStore | None = None

    async def start(self) -> None:
        """Open the database and keys, then serve; ``port`` holds the bound gRPC port afterwards."""
        settings = self.settings
        ensure_private_dir(settings.data_dir)
        ensure_private_dir(settings.resolved_key_file.parent)
        self.keys = FileKeyProvider.load_or_create(settings.resolved_key_file)
        db = make_engine(settings.resolved_database_url)
        await asyncio.get_running_loop().run_in_executor(self._executor, migrate, db)
        self.audit = AuditStore(db)
        self.transcripts = TranscriptStore(db)

        pipeline = Pipeline(
            pseudonymizer=Pseudonymizer(
                self.components.analyzer, score_threshold=settings.pii_score_threshold
            ),
            engine=self.components.engine,
            audit=self.audit,
            keys=self.keys,
            executor=self._executor,
            metrics=self.metrics,
            retention_class=settings.retention_class,
        )
        self.components.engine.observe(self.metrics)
        limits = RequestLimits(
            max_new_tokens_limit=settings.max_new_tokens_limit,
            default_max_new_tokens=settings.resolved_default_max_new_tokens,
            max_prompt_chars=settings.max_prompt_chars,
            max_messages=settings.max_messages,
        )
        core_limit = settings.max_request_bytes * CORE_SIZE_HEADROOM
        server = grpc.aio.server(
            interceptors=[ObservingInterceptor(self.metrics)],
            options=[("grpc.max_receive_message_length", core_limit)],
        )
        servicers: dict[str, Any] = {
            "Inference": InferenceServicer(pipeline, limits, max_request_bytes=settings.max_request_bytes),
            "Audit": AuditServicer(ComplianceService(self.audit, self._executor)),
        }
        server.add_generic_rpc_handlers(
            tuple(raw_bytes_handler(service, servicers.get(service.name)) for service in SERVICES)
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [s.full_name for s in SERVICES]
            + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
        )
        self.port = server.add_insecure_port(settings.listen)
        if self.port == 0:
            raise OSError(f"could not bind gRPC listen address {settings.listen}")
        await server.start()
        self._server = server
        for name in ["", *(s.full_name for s in SERVICES)]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if settings.metrics_listen:
            host, _, port = settings.metrics_listen.rpartition(":")
            self.metrics_port = self.metrics.serve(host, int(port))
        log.info(
            "serving",
            extra={
                "fields": {
                    "listen": settings.listen,
                    "port": self.port,
                    "metrics_port": self.metrics_port,
                    "pid": os.getpid(),
                }
            },
        )

    async def wait(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace: float | None = 5.0) -> None:
        """Drain: report NOT_SERVING, refuse new calls, let in-flight calls finish up to ``grace`` seconds."""
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        self.metrics.stop()
        self._executor.shutdown(wait=True)


def build_components(settings: Settings, *, progress: ProgressFn | None = None) -> Components:
    """Build the analyzer and load the model, preparing the model cache on first use."""
    from custos.privacy.analyzer import build_analyzer
    from custos.server.engine.cache import prepare_model
    from custos.server.engine.hf import TransformersEngine
    from custos.server.engine.scheduler import BatchingEngine

    cache_root = ensure_private_dir(settings.resolved_model_cache_dir)
    cache_dir = prepare_model(
        source=settings.model_source,
        cache_root=cache_root,
        precision=settings.precision,
        prompt_format=settings.prompt_format,
        progress=progress,
        rebuild_invalid=False,
    )
    # prepare_model has just verified the cache digest (and refused a cache that does not match it).
    model = TransformersEngine.from_cache(cache_dir, device=settings.device, verify=False)
    engine = BatchingEngine(
        model, max_batch=settings.max_batch_size, max_queue=settings.max_queued_requests
    )
    analyzer = build_analyzer(spacy_model=settings.spacy_model)
    return Components(analyzer=analyzer, engine=engine)
