"""Server interceptors: request ids, the one place where exceptions become gRPC statuses, and metrics.

Each call gets its request id here (:class:`~custos.flows.context.CallIds`), before anything else runs: the
call's first audit record takes it as its id, log lines carry it, an internal error names it, and every reply,
success or error, returns it in the ``x-request-id`` trailer. An ``x-request-id`` the caller sent is recorded
beside it in the audit record when it is well-formed, and never used as the id.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from custos.api.status import map_exception
from custos.flows.context import CallIds, accept_client_request_id, bind_call, unbind_call
from custos.server.metrics import Metrics
from custos.telemetry.tracing import CallTrace, Tracing, carrier_of

log = logging.getLogger("custos.rpc")
Context = grpc.aio.ServicerContext[Any, Any]
#: Metadata key of the request id, in the caller's metadata and in every reply's trailers.
REQUEST_ID_KEY = "x-request-id"


class ObservingInterceptor(grpc.aio.ServerInterceptor):
    """Gives every call a request id, maps exceptions to statuses, logs and counts the outcome."""

    def __init__(self, metrics: Metrics, tracing: Tracing | None = None) -> None:
        self._metrics = metrics
        #: Starts each call's span (``otel_endpoint``); ``None``: no tracing, nothing is done per call.
        self._tracing = tracing

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Wrap unary-unary and unary-stream behaviours; other kinds pass through unchanged."""
        handler: Any = await continuation(handler_call_details)
        if handler is None:  # unknown method: the core answers UNIMPLEMENTED
            return None  # type: ignore[return-value]
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._wrap_unary(method, handler.unary_unary))
        if handler.unary_stream is not None:
            if not inspect.isasyncgenfunction(handler.unary_stream):
                # A stream behaviour that writes with context.write() and returns (grpc.health's Watch):
                # awaited like a unary one.
                return handler._replace(unary_stream=self._wrap_unary(method, handler.unary_stream))
            return handler._replace(unary_stream=self._wrap_stream(method, handler.unary_stream))
        return handler

    def _wrap_unary(
        self, method: str, behaviour: Callable[[Any, Context], Awaitable[Any]]
    ) -> Callable[..., Any]:
        async def unary(request: Any, context: Context) -> Any:
            call = _Call(self, method, context)
            try:
                return await behaviour(request, context)
            except BaseException as exc:
                await call.fail(exc, context)
                raise
            finally:
                call.done()

        return unary

    def _wrap_stream(
        self, method: str, behaviour: Callable[[Any, Context], AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            call = _Call(self, method, context)
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as exc:
                await call.fail(exc, context)
                raise
            finally:
                call.done()

        return stream


def client_request_id(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The caller's ``x-request-id``, if it sent one that may be recorded (see accept_client_request_id)."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            return accept_client_request_id(value)
    return None


class _Call:
    """Book-keeping of one RPC: request id, start time, final code, and its span when tracing is on."""

    def __init__(self, interceptor: ObservingInterceptor, method: str, context: Context) -> None:
        self.metrics = interceptor._metrics
        service, _, self.rpc = method.lstrip("/").rpartition("/")
        metadata = tuple(context.invocation_metadata() or ())
        self.ids = CallIds(client_request_id=client_request_id(metadata))
        self.request_id = self.ids.request_id
        self.trace: CallTrace | None = None
        if interceptor._tracing is not None:
            self.trace = interceptor._tracing.start(
                f"{service}/{self.rpc}",
                carrier=carrier_of(metadata),
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": service,
                    "rpc.method": self.rpc,
                    "custos.request_id": self.request_id,
                },
            )
            self.ids.trace_id = self.trace.trace_id
            self.ids.observer = self.trace
        self.token = bind_call(self.ids)
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK
        # Sent with every reply; an error below adds its own trailers to it.
        context.set_trailing_metadata(self.trailers())

    def trailers(self, *extra: tuple[str, str | bytes]) -> tuple[tuple[str, str | bytes], ...]:
        """The reply's trailing metadata: the request id, then ``extra``."""
        return ((REQUEST_ID_KEY, self.request_id), *extra)

    def _fields(self, **fields: object) -> dict[str, object]:
        # The id is named on the line itself, so a handler formatting it elsewhere still has it.
        return {"fields": {"rpc": self.rpc, "request_id": self.request_id, **fields}}

    async def fail(self, exc: BaseException, context: Context) -> None:
        """Abort with the mapped status (raises AbortError) unless the call is already over."""
        if isinstance(exc, asyncio.CancelledError):
            self.code = grpc.StatusCode.CANCELLED
            return
        if isinstance(exc, grpc.aio.AbortError):
            self.code = context.code() or grpc.StatusCode.UNKNOWN
            return
        if isinstance(exc, GeneratorExit):
            self.code = grpc.StatusCode.CANCELLED
            return
        mapped = map_exception(exc, self.request_id)
        self.code = mapped.code
        if mapped.code is grpc.StatusCode.INTERNAL:
            log.error("rpc failed", exc_info=exc, extra=self._fields())
        extra: tuple[tuple[str, str | bytes], ...] = mapped.trailers
        if mapped.retry_after_s is not None:
            extra = (("retry-after-ms", str(int(mapped.retry_after_s * 1000))), *extra)
        await context.abort(mapped.code, mapped.message, trailing_metadata=self.trailers(*extra))

    def done(self) -> None:
        """Count and log the outcome."""
        elapsed = time.perf_counter() - self.started
        self.metrics.requests.labels(rpc=self.rpc, code=self.code.name).inc()
        self.metrics.latency.labels(rpc=self.rpc).observe(elapsed)
        log.info("rpc", extra=self._fields(code=self.code.name, ms=round(elapsed * 1000, 2)))
        if self.trace is not None:
            self.trace.end(self.code.name, **{"rpc.grpc.status_code": self.code.value[0]})
        with contextlib.suppress(ValueError):  # a stream finalised from another context
            unbind_call(self.token)
