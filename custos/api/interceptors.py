"""Server interceptors: request ids, the one place where exceptions become gRPC statuses, and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from custos.api.status import map_exception
from custos.flows.errors import ResourceExhausted
from custos.server.logs import REQUEST_ID
from custos.server.metrics import Metrics

log = logging.getLogger("custos.rpc")
Context = grpc.aio.ServicerContext[Any, Any]


class ObservingInterceptor(grpc.aio.ServerInterceptor):
    """Gives every call a request id, maps exceptions to statuses, logs and counts the outcome."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Wrap unary-unary and unary-stream behaviours; other kinds pass through unchanged."""
        handler: Any = await continuation(handler_call_details)
        if handler is None:  # unknown method: the core answers UNIMPLEMENTED
            return None  # type: ignore[return-value]
        rpc = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._wrap_unary(rpc, handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._wrap_stream(rpc, handler.unary_stream))
        return handler

    def _wrap_unary(
        self, rpc: str, behaviour: Callable[[Any, Context], Awaitable[Any]]
    ) -> Callable[..., Any]:
        async def unary(request: Any, context: Context) -> Any:
            call = _Call(self, rpc)
            try:
                return await behaviour(request, context)
            except BaseException as exc:
                await call.fail(exc, context)
                raise
            finally:
                call.done()

        return unary

    def _wrap_stream(
        self, rpc: str, behaviour: Callable[[Any, Context], AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            call = _Call(self, rpc)
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as exc:
                await call.fail(exc, context)
                raise
            finally:
                call.done()

        return stream


class _Call:
    """Book-keeping of one RPC: request id, start time and final code."""

    def __init__(self, interceptor: ObservingInterceptor, rpc: str) -> None:
        self.metrics = interceptor._metrics
        self.rpc = rpc
        self.request_id = uuid.uuid4().hex[:16]
        self.token = REQUEST_ID.set(self.request_id)
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK

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
            log.error("rpc failed", exc_info=exc, extra={"fields": {"rpc": self.rpc}})
        if isinstance(exc, ResourceExhausted) and exc.retry_after_s is not None:
            context.set_trailing_metadata((("retry-after-ms", str(int(exc.retry_after_s * 1000))),))
        await context.abort(mapped.code, mapped.message)

    def done(self) -> None:
        """Count and log the outcome."""
        elapsed = time.perf_counter() - self.started
        self.metrics.requests.labels(rpc=self.rpc, code=self.code.name).inc()
        self.metrics.latency.labels(rpc=self.rpc).observe(elapsed)
        log.info(
            "rpc", extra={"fields": {"rpc": self.rpc, "code": self.code.name, "ms": round(elapsed * 1000, 2)}}
        )
        with contextlib.suppress(ValueError):  # a stream finalised from another context
            REQUEST_ID.reset(self.token)
