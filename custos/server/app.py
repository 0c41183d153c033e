"""App wiring: heavy objects are built once here and passed in; nothing happens at import time."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection
from presidio_analyzer import AnalyzerEngine

from custos.api.admin import AdminServicer
from custos.api.admit import Admission, raw_bytes_handler
from custos.api.audit import AuditServicer
from custos.api.auth import AccessInterceptor
from custos.api.convert import RequestLimits
from custos.api.feedback import FeedbackServicer
from custos.api.health import (
    AvailabilityInterceptor,
    DatabaseWatchdog,
    EngineReadiness,
    HealthReporter,
    flush_pending_tasks,
)
from custos.api.inference import InferenceServicer
from custos.api.interceptors import ObservingInterceptor
from custos.api.privacy import PrivacyServicer
from custos.api.tls import ReloadingCredentials
from custos.audit.db import make_engine, migrate
from custos.audit.store import AuditStore, TranscriptStore
from custos.audit.trail import AuditTrail
from custos.console.app import ConsoleDeps
from custos.console.server import ConsoleServer, build_console_server
from custos.engine.base import Engine
from custos.flows.anonymize import AnonymizeFlow
from custos.flows.audit_read import ComplianceService
from custos.flows.classify import ClassifyFlow
from custos.flows.events import AuditEvents
from custos.flows.feedback import FeedbackFlow
from custos.flows.generate import GenerateFlow
from custos.flows.idempotency import IdempotencyStore
from custos.flows.privacy_step import PrivacyStage, ReidentifyCheck
from custos.flows.purposes import PurposePolicy
from custos.flows.services import FlowServices
from custos.flows.subject_access import SubjectAccess
from custos.flows.types import Caller
from custos.http.app import HttpEdge
from custos.http.server import HttpServer, build_http_server
from custos.privacy.erasure import ErasureLedger, SubjectService, purge_transcripts
from custos.privacy.keys import MasterKeyProvider
from custos.privacy.pseudonymize import Pseudonymizer
from custos.privacy.replies import purge_expired_replies, purge_replies_before
from custos.privacy.subject_keys import SubjectKeyStore
from custos.privacy.vault import ConversationVault
from custos.security.auth import AccessControl, Authenticator
from custos.security.denials import DenialAggregator
from custos.security.limits import CapacityLimiter, FailureLimiter
from custos.security.peers import ClientAddresses
from custos.security.tokens import TokenStore
from custos.server.bootstrap import (
    SecuritySetup,
    open_audit_trail,
    prepare_security,
    record_config_change,
)
from custos.server.housekeeping import VaultPurgeTask, checkpoint_timer, retention_timer
from custos.server.keys import open_master_keys
from custos.server.metrics import Metrics
from custos.server.settings import Settings
from custos.tasks.feedback import FeedbackStore
from custos.tasks.labels import LabelSetRegistry
from custos.tasks.templates import TemplateRegistry
from custos.telemetry.otlp import build_tracing
from custos.telemetry.tracing import Tracing
from custos.v1 import admin_pb2, audit_pb2, feedback_pb2, inference_pb2, privacy_pb2
from custos.version import custos_version

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from custos.engine.local import CacheContents

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
CORE_SIZE_HEADROOM_BYTES = 16 << 20
# How often the server purges transcripts past their retention.
RETENTION_INTERVAL_S = 3600.0
# Progress callback of model preparation: (step description, fraction done or None).
ProgressFn = Callable[[str, float | None], None]


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 if missing."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def holds_reidentify_permission(caller: Caller) -> bool:
    """Restore placeholders only for holders of ``reidentify`` (the access check also guards the field)."""
    return "reidentify" in caller.permissions


@dataclass(frozen=True)
class Components:
    """The heavy objects: built once per process (or once per test session) and shared."""

    analyzer: AnalyzerEngine
    engine: Engine
    #: Language detector of the language policy; built at start if the setting asks for one and none is given.
    language_detector: Callable[[str], tuple[str, float] | None] | None = None
    #: Where spans go when tracing is on (``otel_endpoint``); ``None``: OTLP to that endpoint.
    span_exporter: SpanExporter | None = None


class CustosServer:
    """One running Custos: gRPC server, health, reflection, metrics, database and keys."""

    def __init__(self, settings: Settings, components: Components) -> None:
        self.settings = settings
        self.components = components
        self.metrics = Metrics()
        self.health = health_aio.HealthServicer()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.health_port: int | None = None
        #: The OpenAI-compatible HTTP listener (``http_listen``), once started.
        self.http: HttpServer | None = None
        self.http_port: int | None = None
        #: Traces of every call (``otel_endpoint``); ``None`` when tracing is off.
        self.tracing: Tracing | None = None
        #: The compliance console (``console_listen``), once started.
        self.console: ConsoleServer | None = None
        self.console_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        # Each generation blocks one worker while the engine runs it; the engine says how many may wait.
        workers = settings.worker_threads + components.engine.concurrency
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="custos")
        self.keys: MasterKeyProvider | None = None
        self.subjects: SubjectService | None = None
        self.subject_keys: SubjectKeyStore | None = None
        self.audit: AuditStore | None = None
        #: The flows' shared parts (privacy step, engine, audit, keys), once started.
        self.flows: FlowServices | None = None
        self.transcripts: TranscriptStore | None = None
        self.tokens: TokenStore | None = None
        self.security: SecuritySetup | None = None
        self.credentials: ReloadingCredentials | None = None
        self.watchdog: DatabaseWatchdog | None = None
        self.engine_readiness: EngineReadiness | None = None
        self._availability: AvailabilityInterceptor | None = None
        self.trail: AuditTrail | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self.vault_purge: VaultPurgeTask | None = None
        #: Deletes idempotency replies past ``idempotency_ttl_s`` (the same housekeeping as the vault's).
        self.reply_purge: VaultPurgeTask | None = None
        #: Refusals of unauthenticated callers, aggregated per client address and interval, once started.
        self.denials: DenialAggregator | None = None
        #: Who may have placeholders restored: holders of the ``reidentify`` permission.
        self.may_reidentify: ReidentifyCheck = holds_reidentify_permission

    async def start(self) -> None:
        """Open the database and keys, then serve; ``port`` holds the bound gRPC port afterwards."""
        settings = self.settings
        ensure_private_dir(settings.data_dir)
        ensure_private_dir(settings.resolved_key_file.parent)
        self.keys = open_master_keys(settings)
        db = make_engine(settings.resolved_database_url)
        await asyncio.get_running_loop().run_in_executor(self._executor, migrate, db)
        self.audit = AuditStore(db)
        # Before anything is appended: the signing key may be made only while the log is still empty.
        self.trail = await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(open_audit_trail, settings, self.audit, create_key=True)
        )
        self.subjects = SubjectService(
            db,
            self.keys,
            self.audit,
            ErasureLedger.beside_checkpoints(settings.data_dir),
            vault_ttl_seconds=settings.vault_ttl_seconds,
        )
        self.subject_keys = self.subjects.subject_keys
        # A restored database must not bring back subjects erased after the backup was taken.
        reapplied = await asyncio.get_running_loop().run_in_executor(
            self._executor, self.subjects.reapply_ledger
        )
        if reapplied:
            log.warning("erasure ledger re-applied", extra={"fields": {"destroyed": reapplied}})
        self.transcripts = TranscriptStore(db)
        self.tokens = TokenStore(db, self.audit)
        loop = asyncio.get_running_loop()
        self.security = await loop.run_in_executor(self._executor, prepare_security, settings, self.tokens)
        await loop.run_in_executor(
            self._executor,
            functools.partial(record_config_change, self.audit, settings, index_key=self.keys.index_key()),
        )
        reporter = HealthReporter(self.health, [s.full_name for s in SERVICES])
        self.watchdog = DatabaseWatchdog(db, reporter, interval_s=settings.db_probe_interval_s)
        engine = self.components.engine
        if engine.readiness_interval_s is not None:
            # An engine reporting readiness (upstream server, batching scheduler): Inference follows it.
            self.engine_readiness = EngineReadiness(
                engine.check_ready, reporter, SERVICES[0].full_name, interval_s=engine.readiness_interval_s
            )
        self._availability = AvailabilityInterceptor(self.watchdog)
        self.tracing = build_tracing(
            settings.otel_endpoint,
            service_name=settings.otel_service_name,
            sample_ratio=settings.otel_sample_ratio,
            ca_file=settings.otel_ca_file,
            exporter=self.components.span_exporter,
        )
        # Sign the head with the start's own records, so a log is covered from its first minute.
        await loop.run_in_executor(
            self._executor, functools.partial(self.trail.writer.maybe_write, force=True)
        )
        self._checkpoint_task = asyncio.create_task(
            checkpoint_timer(
                self.trail.writer.maybe_write,
                every_s=min(1.0, self.settings.checkpoint_every_seconds),
                executor=self._executor,
            )
        )
        if settings.transcript_retention_days:
            self._retention_task = asyncio.create_task(
                retention_timer(self.purge_expired_transcripts, every_s=RETENTION_INTERVAL_S)
            )

        pseudonymizer = build_pseudonymizer(
            settings, self.components.analyzer, self.components.language_detector
        )
        vault = ConversationVault(
            db, self.keys, ttl_seconds=settings.vault_ttl_seconds, subject_keys=self.subject_keys
        )
        self.vault_purge = VaultPurgeTask(
            vault.purge_expired,
            interval_s=settings.vault_purge_interval_s,
            executor=self._executor,
            on_purged=self._count_purged,
            on_failure=lambda: self.metrics.vault_purge_runs.labels("failed").inc(),
        )
        self.vault_purge.start()
        self.reply_purge = VaultPurgeTask(
            lambda: purge_expired_replies(db, now=datetime.now(UTC)),
            interval_s=settings.vault_purge_interval_s,
            executor=self._executor,
            what="idempotency replies",
        )
        self.reply_purge.start()
        privacy = PrivacyStage(
            pseudonymizer,
            vault=vault,
            may_reidentify=self.may_reidentify,
            block_entities=settings.pii_block_entities,
            ner_window_chars=settings.stream_ner_window_chars,
            language_policy=settings.pii_language_policy,
        )
        events = AuditEvents(self.audit, self._executor)
        self.flows = flows = FlowServices(
            privacy=privacy,
            engine=self.components.engine,
            events=events,
            keys=self.keys,
            executor=self._executor,
            metrics=self.metrics,
            retention_class=settings.retention_class,
            purposes=PurposePolicy(settings.purposes),
        )
        templates = TemplateRegistry.load(settings.task_templates_dir)
        label_sets = LabelSetRegistry.load(settings.label_sets_dir)
        self.components.engine.observe(self.metrics)
        self.metrics.describe_model(self.components.engine.info, version=custos_version())
        limits = RequestLimits(
            max_new_tokens_limit=settings.max_new_tokens_limit,
            default_max_new_tokens=settings.resolved_default_max_new_tokens,
            max_prompt_chars=settings.max_prompt_chars,
            max_messages=settings.max_messages,
        )
        core_limit = settings.max_request_bytes + CORE_SIZE_HEADROOM_BYTES
        self.denials = DenialAggregator(
            self.audit, self._executor, interval_s=settings.denied_aggregate_interval_s
        )
        # One access decision for both edges: the same permission table, tokens and per-principal limits.
        access_control = AccessControl(
            authenticator=Authenticator(self.tokens, settings.client_cert_roles),
            limiter=CapacityLimiter(
                rate=settings.rate_limit_per_s,
                burst=settings.rate_limit_burst,
                max_in_flight=settings.max_in_flight_per_principal,
            ),
            audit=self.audit,
            executor=self._executor,
            # Authentication and load: failed attempts per client address and token id, aggregated denials.
            failures=FailureLimiter(rate=settings.auth_failure_rate_per_s, burst=settings.auth_failure_burst),
            denials=self.denials,
            addresses=ClientAddresses(settings.trusted_proxies),
        )
        self.denials.start()
        server = grpc.aio.server(
            interceptors=[
                ObservingInterceptor(self.metrics, self.tracing),
                self._availability,
                AccessInterceptor(services=SERVICES, access=access_control),
            ],
            options=[
                ("grpc.max_receive_message_length", core_limit),
                ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
            ],
            maximum_concurrent_rpcs=settings.max_calls_in_flight,
        )
        access = SubjectAccess(
            audit=self.audit,
            transcripts=self.transcripts,
            keys=self.keys,
            subjects=self.subjects,
            executor=self._executor,
        )
        admission = Admission(events.record_invalid, max_request_bytes=settings.max_request_bytes)
        generate = GenerateFlow(
            flows,
            subject_keys=self.subject_keys,
            templates=templates,
            label_sets=label_sets,
            idempotency=IdempotencyStore(
                db, self.keys, self.subject_keys, self._executor, ttl_s=settings.idempotency_ttl_s
            ),
        )
        servicers: dict[str, Any] = {
            "Inference": InferenceServicer(
                generate=generate,
                classify=ClassifyFlow(flows, label_sets=label_sets),
                admission=admission,
                limits=limits,
            ),
            "Audit": AuditServicer(ComplianceService(self.trail, self._executor), access),
            "Admin": AdminServicer(access),
            "Privacy": PrivacyServicer(anonymize=AnonymizeFlow(flows), admission=admission, limits=limits),
            # Submit has never had a size check of its own (its fields are bounded by validation).
            "Feedback": FeedbackServicer(
                feedback=FeedbackFlow(flows, store=FeedbackStore(db)),
                admission=Admission(events.record_invalid, max_request_bytes=None),
            ),
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
        if settings.plaintext:
            log.warning("serving PLAINTEXT gRPC: no transport security (setting plaintext = true)")
            self.port = server.add_insecure_port(settings.listen)
        else:
            self.credentials = ReloadingCredentials(
                settings.resolved_tls_cert_file, settings.resolved_tls_key_file, settings.tls_client_ca_file
            )
            self.port = server.add_secure_port(settings.listen, self.credentials.server_credentials())
        if self.port == 0:
            raise OSError(f"could not bind gRPC listen address {settings.listen}")
        await server.start()
        self._server = server
        if settings.health_listen:
            # Health only, for probes without TLS; the same servicer, so it says what the API listener does.
            self._health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
            self.health_port = self._health_server.add_insecure_port(settings.health_listen)
            await self._health_server.start()
        await self.watchdog.start()
        if self.engine_readiness is not None:
            await self.engine_readiness.start()
        if settings.http_listen:
            self.http = build_http_server(
                settings,
                HttpEdge(
                    generate=generate,
                    access=access_control,
                    record_invalid=events.record_invalid,
                    limits=limits,
                    max_request_bytes=settings.max_request_bytes,
                    model_name=self.components.engine.info.name,
                    availability=self.watchdog,
                    metrics=self.metrics,
                    tracing=self.tracing,
                ),
            )
            self.http_port = await self.http.start()
        if settings.console_listen:
            assert self.trail is not None and self.keys is not None
            self.console = build_console_server(
                settings,
                ConsoleDeps(
                    access=access_control,
                    trail=self.trail,
                    subjects=access,
                    keys=self.keys,
                    feedback=FeedbackStore(db),
                    executor=self._executor,
                    session_minutes=settings.console_session_minutes,
                ),
            )
            self.console_port = await self.console.start()
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
                    "health_port": self.health_port,
                    "http_port": self.http_port,
                    "console_port": self.console_port,
                    "pid": os.getpid(),
                }
            },
        )

    def _count_purged(self, rows: int) -> None:
        self.metrics.vault_purge_runs.labels("ok").inc()
        self.metrics.vault_rows_purged.inc(rows)

    async def purge_expired_transcripts(self) -> int:
        """Destroy transcripts past ``transcript_retention_days`` (audited, counted in metrics).

        Idempotency replies as old go too: a stored answer never outlives its transcript.
        """
        audit = self.audit
        assert audit is not None
        cutoff = datetime.now(UTC) - timedelta(days=self.settings.transcript_retention_days)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._executor, lambda: purge_replies_before(audit.engine, older_than=cutoff)
        )
        deleted = await loop.run_in_executor(
            self._executor,
            lambda: purge_transcripts(
                audit.engine, audit, older_than=cutoff, actor="custos:retention", rpc="retention purge"
            ),
        )
        self.metrics.transcripts_purged.inc(deleted)
        return deleted

    async def wait(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: report NOT_SERVING, refuse new calls, let in-flight calls finish up to ``grace`` seconds.

        ``grace`` defaults to the ``drain_timeout_s`` setting. The listener stays open meanwhile, so health
        checks see NOT_SERVING and new API calls get UNAVAILABLE. Audit writes still running (those of calls
        cancelled at the deadline) finish before the worker threads stop, so every answer keeps its record.
        """
        if grace is None:
            grace = self.settings.drain_timeout_s
        started = time.monotonic()
        if self.watchdog is not None:
            self.watchdog.draining = True
        await self.health.enter_graceful_shutdown()
        log.info("draining", extra={"fields": {"grace_s": grace}})
        if self._availability is not None:
            await self._availability.wait_idle(grace)
        if self.http is not None:
            await self.http.stop(max(grace - (time.monotonic() - started), 0.0))
            self.http = None
        if self.console is not None:
            await self.console.stop(max(grace - (time.monotonic() - started), 0.0))
            self.console = None
        if self._server is not None:
            await self._server.stop(max(grace - (time.monotonic() - started), 0.0))
            self._server = None
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
        if self.denials is not None:
            await self.denials.stop()  # every tallied refusal is written before the workers stop
        if self.watchdog is not None:
            await self.watchdog.stop()
        if self.engine_readiness is not None:
            await self.engine_readiness.stop()
        # The checkpoint timer runs until cancelled: stop it before waiting for the audit writes to settle.
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
            self._checkpoint_task = None
        if self._retention_task is not None:
            self._retention_task.cancel()
            self._retention_task = None
        if self.vault_purge is not None:
            await self.vault_purge.stop()
        if self.reply_purge is not None:
            await self.reply_purge.stop()
        # The scheduler thread finishes what it holds (calls past the deadline were cancelled above).
        await asyncio.get_running_loop().run_in_executor(None, self.components.engine.close)
        await flush_pending_tasks(timeout=max(grace, 5.0))
        if self.trail is not None:
            try:
                self.trail.writer.maybe_write(force=True)  # seal the head on a clean shutdown
            except Exception as exc:
                log.error("final audit checkpoint failed", extra={"fields": {"error": type(exc).__name__}})
        self.metrics.stop()
        if self.tracing is not None:
            self.tracing.shutdown()  # exports the spans still pending
            self.tracing = None
        self._executor.shutdown(wait=True)


def build_components(
    settings: Settings,
    *,
    progress: ProgressFn | None = None,
    reading: Future[CacheContents | None] | None = None,
) -> Components:
    """Build the analyzer and load the model, preparing the model cache on first use.

    ``reading`` is the model cache already being read on a thread (``server.model.start_reading``);
    without it, reading starts here and overlaps the analyzer's build.
    """
    from custos.privacy.analyzer import build_analyzer
    from custos.server.model import build_upstream_engine, finish_loading, start_reading

    upstream = settings.engine_backend == "openai"
    if not upstream:
        ensure_private_dir(settings.resolved_model_cache_dir)
        if reading is None:
            reading = start_reading(settings)
    analyzer = build_analyzer(
        spacy_model=settings.spacy_model,
        languages=settings.pii_languages,
        entities=settings.pii_entities,
        phone_regions=settings.pii_phone_regions,
        deny_lists=settings.pii_deny_lists,
        crm_references=settings.pii_crm_references,
    )
    engine: Engine = (
        build_upstream_engine(settings) if upstream else finish_loading(settings, reading, progress=progress)
    )
    return Components(analyzer=analyzer, engine=engine)


def build_pseudonymizer(
    settings: Settings,
    analyzer: AnalyzerEngine,
    language_detector: Callable[[str], tuple[str, float] | None] | None = None,
) -> Pseudonymizer:
    """The pseudonymizer the settings describe, on the shared analyzer; bad settings raise here."""
    detector = language_detector
    if detector is None and settings.pii_language_detection:
        from custos.privacy.language import LanguageDetector

        detector = LanguageDetector(languages=analyzer.supported_languages)
    return Pseudonymizer(
        analyzer,
        score_threshold=settings.pii_score_threshold,
        entities=settings.pii_entities,
        allow_list=settings.pii_allow_list,
        entity_thresholds=settings.pii_entity_thresholds,
        language_detector=detector if settings.pii_language_detection else None,
        language_policy=settings.pii_language_policy,
    )
