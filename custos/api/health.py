"""Fail closed and drain: health follows the audit database and the server's lifecycle.

A :class:`DatabaseWatchdog` probes the audit database periodically and flips every health status to
NOT_SERVING the moment the database is unreachable (a failed probe, or an ``AuditUnavailable`` raised by any
call), and back to SERVING when a probe succeeds again, so service resumes without a restart. The
:class:`AvailabilityInterceptor` refuses API calls with UNAVAILABLE while the database is down or the server
is draining, before any work is done, and reports ``AuditUnavailable`` from calls to the watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from sqlalchemy import Engine, text

from custos.audit.db import DEFERRED_READ, translate_db_errors
from custos.audit.errors import AuditUnavailable
from custos.flows.errors import Unavailable

log = logging.getLogger("custos.availability")
Context = grpc.aio.ServicerContext[Any, Any]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Calls of these method prefixes are guarded; health and reflection always answer.
GUARDED_PREFIX = "/custos.v1."


class ServerDraining(Unavailable):
    """The server is shutting down and takes no new calls; the caller should retry on another replica."""

    def __init__(self) -> None:
        super().__init__("server is shutting down; retry on another replica", error_code="SERVER_DRAINING")


class HealthReporter:
    """What the health service says, for the overall server and each API service."""

    def __init__(self, health: Any, services: Iterable[str]) -> None:
        self._health = health
        self._names = ["", *services]
        self._status: int | None = None  # what the last set_all said (None: not started)
        self._not_ready: set[str] = set()

    def _effective(self, name: str, status: int) -> int:
        return NOT_SERVING if name in self._not_ready else status

    async def set_all(self, status: int) -> None:
        """Set every name to ``status`` (ignored by the health service once it is shutting down).

        A service marked not ready by :meth:`set_ready` stays NOT_SERVING.
        """
        self._status = status
        for name in self._names:
            await self._health.set(name, self._effective(name, status))

    async def set_ready(self, name: str, ready: bool) -> None:
        """Mark one service ready or not (its own dependency, e.g. an upstream engine), beside ``set_all``."""
        if ready == (name not in self._not_ready):
            return
        if ready:
            self._not_ready.discard(name)
        else:
            self._not_ready.add(name)
        if self._status is not None:
            await self._health.set(name, self._effective(name, self._status))


class EngineReadiness:
    """Polls the engine's readiness (an upstream server's) and keeps one service's health in step with it.

    Only the Inference service follows it: the Audit service and the server's overall status do not
    depend on the model. Probes run on their own thread, so a slow upstream cannot hold a worker.
    """

    def __init__(
        self, check: Callable[[], bool], reporter: HealthReporter, service: str, *, interval_s: float
    ) -> None:
        self._check = check
        self._reporter = reporter
        self._service = service
        self._interval_s = interval_s
        self._probe_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="custos-engine-probe")
        self._task: asyncio.Task[None] | None = None
        self.ready: bool | None = None

    async def start(self) -> None:
        """Probe once now (health is set before the first call is admitted), then periodically."""
        await self._probe()
        self._task = asyncio.create_task(self._run(), name="custos-engine-readiness")

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            ready = await loop.run_in_executor(self._probe_executor, self._check)
        except Exception:  # an unexpected probe error means not ready; never stop probing
            log.warning("engine readiness probe failed unexpectedly", exc_info=True)
            ready = False
        if ready != self.ready:
            level = logging.INFO if ready else logging.WARNING
            log.log(level, "model engine %s", "ready" if ready else "not ready")
        self.ready = ready
        await self._reporter.set_ready(self._service, ready)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self._probe()

    async def stop(self) -> None:
        """Stop probing (health stays as it is)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._probe_executor.shutdown(wait=False, cancel_futures=True)


class DatabaseWatchdog:
    """Probes the audit database and keeps health and admission in step with it.

    ``available`` is False from the first failure (probe or call) until a probe succeeds again. Probes run on
    their own thread, so a busy worker pool cannot delay noticing an outage or a recovery.
    """

    def __init__(self, engine: Engine, reporter: HealthReporter, *, interval_s: float) -> None:
        self._engine = engine
        self._reporter = reporter
        self._interval_s = interval_s
        self._probe_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="custos-db-probe")
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.available = True
        self.draining = False

    def probe_once(self) -> None:
        """One cheap round trip (``SELECT 1``); raises AuditUnavailable when the database cannot answer."""
        with translate_db_errors(), self._engine.connect() as conn:
            # A deferred read: on SQLite the probe must not take the write lock that appends need.
            conn.execution_options(**{DEFERRED_READ: True}).execute(text("SELECT 1"))

    async def start(self) -> None:
        """Report SERVING and start probing."""
        await self._reporter.set_all(SERVING)
        self._task = asyncio.create_task(self._run(), name="custos-db-watchdog")

    async def stop(self) -> None:
        """Stop probing (health stays as it is)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._probe_executor.shutdown(wait=False, cancel_futures=True)

    async def report_unavailable(self) -> None:
        """A call could not reach the database: flip to NOT_SERVING now and probe again soon."""
        await self._set(available=False)
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(self._probe_executor, self.probe_once)
            except AuditUnavailable:
                await self._set(available=False)
            except Exception:  # an unexpected probe error is an outage too; never stop probing
                log.warning("database probe failed unexpectedly", exc_info=True)
                await self._set(available=False)
            else:
                await self._set(available=True)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)

    async def _set(self, *, available: bool) -> None:
        if available == self.available:
            return
        self.available = available
        if self.draining:
            return
        log.warning("audit database reachable again" if available else "audit database unreachable")
        await self._reporter.set_all(SERVING if available else NOT_SERVING)


class AvailabilityInterceptor(grpc.aio.ServerInterceptor):
    """Refuses API calls while the database is down or the server drains; reports database outages.

    Sits inside the interceptor that maps exceptions to statuses, so its refusals become UNAVAILABLE there.
    """

    def __init__(self, watchdog: DatabaseWatchdog) -> None:
        self._watchdog = watchdog
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no admitted API call is running; True if none is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)
        return self._idle.is_set()

    def _enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Wrap unary-unary and unary-stream behaviours of the API services."""
        handler: Any = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(GUARDED_PREFIX):
            return handler
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._wrap_unary(handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._wrap_stream(handler.unary_stream))
        return handler

    def _admit(self) -> None:
        if self._watchdog.draining:
            raise ServerDraining()
        if not self._watchdog.available:
            raise AuditUnavailable("audit database unavailable")

    def _wrap_unary(self, behaviour: Callable[[Any, Context], Awaitable[Any]]) -> Callable[..., Any]:
        async def unary(request: Any, context: Context) -> Any:
            self._admit()
            self._enter()
            try:
                return await behaviour(request, context)
            except AuditUnavailable:
                await self._watchdog.report_unavailable()
                raise
            finally:
                self._leave()

        return unary

    def _wrap_stream(
        self, behaviour: Callable[[Any, Context], AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            self._admit()
            self._enter()
            try:
                async for response in behaviour(request, context):
                    yield response
            except AuditUnavailable:
                await self._watchdog.report_unavailable()
                raise
            finally:
                self._leave()

        return stream


async def flush_pending_tasks(*, timeout: float, keep: Iterable[asyncio.Task[Any]] = ()) -> int:
    """Wait up to ``timeout`` seconds for the loop's other tasks (shielded audit writes) to finish.

    Returns how many were still running afterwards; those are left to the caller.
    """
    skip = {asyncio.current_task(), *keep}
    pending = [task for task in asyncio.all_tasks() if task not in skip]
    if not pending:
        return 0
    _, still_running = await asyncio.wait(pending, timeout=timeout)
    if still_running:
        log.warning(
            "tasks still running after the drain timeout", extra={"fields": {"count": len(still_running)}}
        )
    return len(still_running)
