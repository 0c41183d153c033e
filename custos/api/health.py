"""Fail closed and drain: health follows the audit database and the server's lifecycle.

A :class:`DatabaseWatchdog` probes the audit database periodically and flips every health status to
NOT_SERVING the moment the database is unreachable (a failed probe, or a call that lost the connection; a
call that only timed out waiting for a lock triggers a probe instead), and back to SERVING when a probe
succeeds again, so service resumes without a restart. Health is per service: Inference also follows the
model engine, the other services the database alone. The
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
from custos.audit.errors import AuditBusy, AuditUnavailable
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
        super().__init__("server is shutting down; retry on another replica")


class HealthReporter:
    """What the health service says, per API service, from the dependencies each needs.

    Every service (and the server as a whole, name ``""``) follows the audit database; the services in
    ``engine_services`` (Inference) follow the engine too.
    """

    def __init__(self, health: Any, services: Iterable[str], *, engine_services: Iterable[str] = ()) -> None:
        self._health = health
        self._names = ["", *services]
        self._engine_services = frozenset(engine_services)

    async def set_all(self, status: int) -> None:
        """Set every name to ``status`` (ignored by the health service once it is shutting down)."""
        for name in self._names:
            await self._health.set(name, status)

    async def report(self, *, database: bool, engine: bool) -> None:
        """Set each name from the state of the dependencies it needs."""
        for name in self._names:
            serving = database and (engine or name not in self._engine_services)
            await self._health.set(name, SERVING if serving else NOT_SERVING)


class DatabaseWatchdog:
    """Probes the audit database (and asks the engine) and keeps health and admission in step with them.

    ``available`` is False from the first failure (probe, or a call that lost the database) until a probe
    succeeds again. A call that only waited too long for a lock (:class:`AuditBusy`: the database answered)
    wakes a probe instead, and health changes only if the probe fails. Probes run on their own thread, so
    a busy worker pool cannot delay noticing an outage or a recovery.
    """

    def __init__(
        self,
        engine: Engine,
        reporter: HealthReporter,
        *,
        interval_s: float,
        engine_available: Callable[[], bool] = lambda: True,
    ) -> None:
        self._engine = engine
        self._reporter = reporter
        self._interval_s = interval_s
        self._engine_available = engine_available
        self._probe_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="custos-db-probe")
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.available = True
        #: Whether the model engine can take work (Inference's health follows it).
        self.engine_ok = True
        self.draining = False
        self._stopping = False

    def probe_once(self) -> None:
        """One cheap round trip (``SELECT 1``); raises AuditUnavailable when the database cannot answer."""
        with translate_db_errors(), self._engine.connect() as conn:
            # A deferred read: on SQLite the probe must not take the write lock that appends need.
            conn.execution_options(**{DEFERRED_READ: True}).execute(text("SELECT 1"))

    async def start(self) -> None:
        """Report SERVING and start probing."""
        self.engine_ok = self._engine_ok()
        await self._reporter.report(database=True, engine=self.engine_ok)
        self._task = asyncio.create_task(self._run(), name="custos-db-watchdog")

    async def stop(self) -> None:
        """Stop probing (health stays as it is)."""
        # The flag as well as the cancel: on Python 3.11 a wait_for whose wait has just finished can swallow
        # a cancellation (a wake-up right before stopping), and the loop must end all the same.
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._probe_executor.shutdown(wait=False, cancel_futures=True)

    async def report_unavailable(self, error: BaseException | None = None) -> None:
        """A call failed to reach the database: flip to NOT_SERVING now and probe again soon.

        A lock wait that timed out (``error`` is :class:`AuditBusy`) is not an outage: it only wakes the
        probe, which flips health if the database really does not answer.
        """
        if not isinstance(error, AuditBusy):
            await self._set(available=False, engine_ok=self.engine_ok)
        self._wake.set()

    def _engine_ok(self) -> bool:
        try:
            return bool(self._engine_available())
        except Exception:  # a failing check says the engine cannot take work
            log.warning("engine availability check failed", exc_info=True)
            return False

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                await loop.run_in_executor(self._probe_executor, self.probe_once)
            except AuditUnavailable:
                available = False
            except Exception:  # an unexpected probe error is an outage too; never stop probing
                log.warning("database probe failed unexpectedly", exc_info=True)
                available = False
            else:
                available = True
            await self._set(available=available, engine_ok=self._engine_ok())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)

    async def _set(self, *, available: bool, engine_ok: bool) -> None:
        if available == self.available and engine_ok == self.engine_ok:
            return
        if available != self.available:
            log.warning("audit database reachable again" if available else "audit database unreachable")
        if engine_ok != self.engine_ok:
            log.warning("engine available again" if engine_ok else "engine unavailable")
        self.available = available
        self.engine_ok = engine_ok
        if self.draining:
            return
        await self._reporter.report(database=available, engine=engine_ok)


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
        # The access interceptor (inside this one) takes unary requests as streams: wrapped the same way.
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._wrap_unary(handler.stream_unary))
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=self._wrap_stream(handler.stream_stream))
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
            except AuditUnavailable as exc:
                await self._watchdog.report_unavailable(exc)
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
            except AuditUnavailable as exc:
                await self._watchdog.report_unavailable(exc)
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
