"""The OpenAI-compatible API: ``POST /v1/chat/completions`` (unary and SSE) and ``GET /v1/models``.

Translation only, in the order of the gRPC edge: availability (draining, database) -> access (the same
:class:`~custos.security.auth.AccessControl`, permission table and limits, under the gRPC method name the call
is equivalent to) -> admission (size, JSON, conversion; refusals audited as ``invalid``) -> the same
:class:`~custos.flows.generate.GenerateFlow`. The audit record's request id is the response's ``id`` and its
``x-request-id`` header. A client that disconnects, or whose ``x-request-timeout`` passes, cancels the flow,
which stops the engine within one decode step and audits the call as CANCELLED / DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from custos.audit.errors import AuditUnavailable
from custos.flows.context import (
    CallIds,
    RequestContext,
    accept_client_request_id,
    bind_call,
    new_request_id,
    unbind_call,
)
from custos.flows.errors import InvalidArgument, RequestError, ResourceExhausted, Unavailable
from custos.flows.generate import GenerateFlow
from custos.flows.status import MappedError, map_error
from custos.flows.types import Caller, GenerateCall, StreamDelta, StreamEvent, StreamFinished, StreamStarted
from custos.flows.validation import RequestLimits
from custos.http import convert
from custos.http.errors import (
    REQUEST_ID_HEADER,
    ClientDisconnected,
    DeadlineExceeded,
    Unimplemented,
    error_body,
    error_response,
    install_error_handlers,
)
from custos.http.schema import ChatCompletionRequest, parse_chat_request, parse_json_object
from custos.http.tls import CLIENT_CERT_STATE, client_auth_context
from custos.security.auth import AccessControl, bind_caller, guarded_fields
from custos.server.metrics import Metrics
from custos.telemetry.tracing import CallTrace, Tracing, carrier_of

T = TypeVar("T")
log = logging.getLogger("custos.http")
#: Audits a refused request as an ``invalid`` event: (caller, rpc, error).
RecordInvalid = Callable[[Caller, str, RequestError], Awaitable[object]]
#: The gRPC methods the HTTP routes are equivalent to: their permission, limits and audit ``rpc``.
GENERATE_METHOD = "/custos.v1.Inference/Generate"
STREAM_METHOD = "/custos.v1.Inference/GenerateStream"
#: The request message whose permission-guarded fields (``reidentify``) the chat body shares.
GENERATE_MESSAGE = "custos.v1.GenerateRequest"
TIMEOUT_HEADER = "x-request-timeout"
IDEMPOTENCY_HEADER = "idempotency-key"
CHAT_ROUTE = "POST /v1/chat/completions"
MODELS_ROUTE = "GET /v1/models"


class Availability(Protocol):
    """What the edge asks the database watchdog: refuse while draining or while the database is down."""

    draining: bool
    available: bool

    async def report_unavailable(self) -> None:
        """A call could not reach the database."""


@dataclass(frozen=True)
class HttpEdge:
    """The parts the HTTP edge calls, built once in the app wiring (the same objects the gRPC edge uses)."""

    generate: GenerateFlow
    access: AccessControl
    record_invalid: RecordInvalid
    limits: RequestLimits
    max_request_bytes: int
    model_name: str
    availability: Availability
    metrics: Metrics
    #: Starts each call's span (``otel_endpoint``); ``None``: no tracing.
    tracing: Tracing | None = None


class _ServerDraining(Unavailable):
    def __init__(self) -> None:
        super().__init__("server is shutting down; retry on another replica", error_code="SERVER_DRAINING")


class _Call:
    """Book-keeping of one HTTP call: request id, start time, final status; counted and logged once."""

    def __init__(self, edge: HttpEdge, route: str, request: Request) -> None:
        self.metrics = edge.metrics
        self.route = route
        # One id everywhere, as on gRPC: the call's first audit record takes it (custos.flows.context).
        self.ids = CallIds(client_request_id=accept_client_request_id(request.headers.get(REQUEST_ID_HEADER)))
        self.request_id = self.ids.request_id
        self.trace: CallTrace | None = None
        if edge.tracing is not None:
            _, _, path = route.rpartition(" ")
            self.trace = edge.tracing.start(
                route,
                carrier=carrier_of(list(request.headers.items())),
                attributes={
                    "http.request.method": request.method,
                    "http.route": path,
                    "custos.request_id": self.request_id,
                },
            )
            self.ids.trace_id = self.trace.trace_id
            self.ids.observer = self.trace
        self.token = bind_call(self.ids)
        self.started = time.perf_counter()
        self.status = "OK"
        self.http_status = 200
        self._done = False

    def mapped(self, exc: BaseException) -> MappedError:
        """How ``exc`` reaches the client; unknown errors are logged by type only, never by their text."""
        mapped = map_error(exc, self.request_id)
        self.status = mapped.status
        self.http_status = mapped.http_status
        if mapped.status == "INTERNAL":
            log.error("http call failed", exc_info=exc, extra={"fields": {"route": self.route}})
        return mapped

    def failed(self, exc: BaseException) -> JSONResponse:
        """The error response of ``exc``."""
        return error_response(self.mapped(exc), self.request_id)

    def done(self) -> None:
        """Count and log the outcome (once)."""
        if self._done:
            return
        self._done = True
        elapsed = time.perf_counter() - self.started
        self.metrics.requests.labels(rpc=self.route, code=self.status).inc()
        self.metrics.latency.labels(rpc=self.route).observe(elapsed)
        log.info(
            "http",
            extra={"fields": {"route": self.route, "code": self.status, "ms": round(elapsed * 1000, 2)}},
        )
        if self.trace is not None:
            http_status = 499 if self.status == "CANCELLED" else self.http_status
            self.trace.end(self.status, **{"http.response.status_code": http_status})
        with contextlib.suppress(ValueError):  # a stream finished in another context
            unbind_call(self.token)


# ---- reading the call off the request -------------------------------------------------------------


def _peer(request: Request) -> str:
    """The peer in gRPC's notation (``ipv4:127.0.0.1:5000``), so audit records read alike."""
    client = request.client
    if client is None:
        return "unknown"
    host, port = client.host, client.port
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _credentials(request: Request) -> Sequence[tuple[str, str]]:
    return [("authorization", value) for value in request.headers.getlist("authorization")]


async def _read_body(request: Request, limit: int) -> tuple[bytes | None, int]:
    """The body, or ``None`` with the size seen once it passes ``limit`` (the rest is never read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None, int(declared)
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None, size
        parts.append(chunk)
    return b"".join(parts), size


def _deadline(request: Request) -> float | None:
    """The caller's deadline on the monotonic clock, from ``x-request-timeout`` (seconds)."""
    value = request.headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidArgument(TIMEOUT_HEADER, "must be a positive number of seconds")
    return time.monotonic() + seconds


async def _wait_disconnect(request: Request) -> None:
    """Return when the client goes away (the body is read by then, so only ``http.disconnect`` is left)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _guarded(request: Request, work: Coroutine[Any, Any, T], deadline: float | None) -> T:
    """Run ``work`` until it finishes, the client disconnects or the deadline passes (then it is cancelled).

    Cancelling the flow is how generation stops: the flow sets the engine's cancel flag, which the engine
    polls every decode step, and writes the completion record as CANCELLED or DEADLINE_EXCEEDED.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        if watcher in done:
            raise ClientDisconnected()
        raise DeadlineExceeded("the deadline (x-request-timeout) passed before the answer was complete")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


async def _next_event(events: AsyncIterator[StreamEvent]) -> StreamEvent:
    return await events.__anext__()


# ---- the app --------------------------------------------------------------------------------------


class _Routes:
    """The endpoint handlers over one :class:`HttpEdge`."""

    def __init__(self, edge: HttpEdge) -> None:
        self.edge = edge
        self.served_models = frozenset({edge.model_name})
        self.created = int(time.time())

    def _check_available(self) -> None:
        if self.edge.availability.draining:
            raise _ServerDraining()
        if not self.edge.availability.available:
            raise AuditUnavailable("audit database unavailable")

    async def _admit(
        self, request: Request, method: str, data: dict[str, Any] | None
    ) -> tuple[Caller, Callable[[], None]]:
        def fields_set() -> list[tuple[str, str]]:
            if data is None:
                return []  # an unreadable body is refused (and audited) after admission, as on gRPC
            return [(f, p) for f, p in guarded_fields(GENERATE_MESSAGE) if data.get(f) is True]

        return await self.edge.access.admit(
            method=method,
            peer=_peer(request),
            metadata=_credentials(request),
            auth_context=client_auth_context(getattr(request.state, CLIENT_CERT_STATE, None)),
            fields_set=fields_set,
        )

    async def models(self, request: Request) -> Response:
        """``GET /v1/models``: the served model (for callers with the generate permission)."""
        return await self._simple(
            request,
            MODELS_ROUTE,
            lambda: convert.models_body(sorted(self.served_models), created=self.created),
        )

    async def model(self, request: Request, model: str) -> Response:
        """``GET /v1/models/{model}``."""

        def body() -> dict[str, Any]:
            if model not in self.served_models:
                raise _NotFound("model: not a model this server serves")
            return convert.model_body(model, created=self.created)

        return await self._simple(request, MODELS_ROUTE, body)

    async def _simple(self, request: Request, route: str, body: Callable[[], dict[str, Any]]) -> Response:
        call = _Call(self.edge, route, request)
        try:
            self._check_available()
            _, release = await self._admit(request, GENERATE_METHOD, None)
            release()
            return JSONResponse(body(), headers={REQUEST_ID_HEADER: call.request_id})
        except Exception as exc:
            return call.failed(exc)
        finally:
            call.done()

    async def unimplemented(self, request: Request) -> Response:
        """OpenAI endpoints this server does not offer: 501 in the error shape."""
        call = _Call(self.edge, "unimplemented", request)
        try:
            return call.failed(Unimplemented("this endpoint is not implemented by this server"))
        finally:
            call.done()

    async def health(self, request: Request) -> Response:
        """For load balancers: 200 while serving, 503 while draining or without the audit database."""
        availability = self.edge.availability
        serving = availability.available and not availability.draining
        return JSONResponse(
            {"status": "SERVING" if serving else "NOT_SERVING"}, status_code=200 if serving else 503
        )

    async def chat_completions(self, request: Request) -> Response:
        """``POST /v1/chat/completions``."""
        call = _Call(self.edge, CHAT_ROUTE, request)
        release: Callable[[], None] | None = None
        handed_over = False  # a streaming response releases and counts the call when it ends
        try:
            self._check_available()
            body, size = await _read_body(request, self.edge.max_request_bytes)
            data: dict[str, Any] | None = None
            unreadable: RequestError | None = None
            if body is not None:
                try:
                    data = parse_json_object(body)
                except RequestError as exc:
                    unreadable = exc
            stream = data is not None and data.get("stream") is True
            method = STREAM_METHOD if stream else GENERATE_METHOD
            caller, release = await self._admit(request, method, data)
            bind_caller(caller)
            rpc = method.rsplit("/", 1)[-1]
            try:
                if body is None:
                    raise ResourceExhausted(
                        f"request is {size} bytes or more, larger than the limit of "
                        f"{self.edge.max_request_bytes}",
                        reason="request_too_large",
                    )
                if unreadable is not None:
                    raise unreadable
                assert data is not None
                parsed = parse_chat_request(data)
                deadline = _deadline(request)
                generate_call = convert.generate_call(
                    parsed,
                    self.edge.limits,
                    served_models=self.served_models,
                    idempotency_key=request.headers.get(IDEMPOTENCY_HEADER),
                )
            except RequestError as exc:
                await self.edge.record_invalid(caller, rpc, exc)
                raise
            ctx = RequestContext(caller, rpc, deadline=deadline)
            if not stream:
                return await self._unary(request, ctx, generate_call, parsed, body, deadline)
            response = await self._stream(request, call, ctx, generate_call, parsed, release, deadline)
            handed_over = True
            return response
        except ClientDisconnected:
            call.status = "CANCELLED"
            return Response(status_code=499)
        except Exception as exc:
            if isinstance(exc, AuditUnavailable):
                await self.edge.availability.report_unavailable()
            return call.failed(exc)
        finally:
            if not handed_over:
                if release is not None:
                    release()
                call.done()

    async def _unary(
        self,
        request: Request,
        ctx: RequestContext,
        call: GenerateCall,
        parsed: ChatCompletionRequest,
        body: bytes,
        deadline: float | None,
    ) -> Response:
        outcome = await _guarded(
            request, self.edge.generate.generate(ctx, call, request_bytes=body), deadline
        )
        if outcome.finish_reason == "cancelled":  # the engine stopped at the deadline
            raise DeadlineExceeded("the deadline (x-request-timeout) passed before the answer was complete")
        return JSONResponse(
            convert.completion_body(outcome, model=parsed.model, created=int(time.time())),
            headers={REQUEST_ID_HEADER: outcome.request_id},
        )

    async def _stream(
        self,
        request: Request,
        http_call: _Call,
        ctx: RequestContext,
        call: GenerateCall,
        parsed: ChatCompletionRequest,
        release: Callable[[], None],
        deadline: float | None,
    ) -> Response:
        events = await _guarded(request, self.edge.generate.generate_stream(ctx, call), deadline)
        try:
            # The request record is durable once the stream has started; the next event (the first safe
            # text, or the end) is awaited before the status line: a full queue is a 429, not a broken stream.
            started = await _guarded(request, _next_event(events), deadline)
            assert isinstance(started, StreamStarted)
            first = await _guarded(request, _next_event(events), deadline)
        except BaseException:
            await events.aclose()
            raise
        include_usage = parsed.stream_options is not None and parsed.stream_options.include_usage
        body = self._sse(http_call, events, started, first, parsed.model, include_usage, release, deadline)
        return StreamingResponse(
            body,
            media_type="text/event-stream",
            headers={REQUEST_ID_HEADER: started.request_id, "cache-control": "no-cache"},
        )

    async def _sse(
        self,
        http_call: _Call,
        events: AsyncGenerator[StreamEvent, None],
        started: StreamStarted,
        first: StreamEvent,
        model: str,
        include_usage: bool,
        release: Callable[[], None],
        deadline: float | None,
    ) -> AsyncIterator[bytes]:
        """The stream in OpenAI's chunks; a client that goes away cancels it (Starlette cancels this task)."""
        created = int(time.time())
        extra = {
            "custos": {"request_id": started.request_id, "redaction": convert.redaction(started.redaction)}
        }

        def chunk(**fields: Any) -> bytes:
            return convert.sse(convert.chunk_body(started.request_id, model=model, created=created, **fields))

        try:
            yield chunk(delta={"role": "assistant", "content": ""}, extra=extra)
            event = first
            while True:
                if isinstance(event, StreamDelta):
                    yield chunk(delta={"content": event.text})
                elif isinstance(event, StreamFinished):
                    if event.finish_reason == "cancelled":
                        raise DeadlineExceeded(
                            "the deadline (x-request-timeout) passed before the answer was complete"
                        )
                    yield chunk(delta={}, finish_reason=convert.FINISH_REASONS[event.finish_reason])
                    if include_usage:
                        yield chunk(usage_block=convert.usage(event.prompt_tokens, event.completion_tokens))
                    break
                if deadline is None:
                    event = await events.__anext__()
                else:
                    try:
                        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                            event = await events.__anext__()
                    except TimeoutError:
                        raise DeadlineExceeded(
                            "the deadline (x-request-timeout) passed before the answer was complete"
                        ) from None
            yield convert.sse("[DONE]")
        except (asyncio.CancelledError, GeneratorExit):
            http_call.status = "CANCELLED"
            raise
        except Exception as exc:
            # Headers are sent: the error travels as an event, which the OpenAI SDK raises as an APIError.
            yield convert.sse(error_body(http_call.mapped(exc)))
            yield convert.sse("[DONE]")
        finally:
            release()
            http_call.done()
            with contextlib.suppress(BaseException):
                await events.aclose()


class _NotFound(RequestError):
    status = "NOT_FOUND"


def build_app(edge: HttpEdge) -> FastAPI:
    """The ASGI app of the edge; no documentation routes (the API is OpenAI's, documented in the README)."""
    routes = _Routes(edge)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, title="Custos")
    install_error_handlers(app, new_request_id)
    app.add_api_route("/v1/chat/completions", routes.chat_completions, methods=["POST"])
    app.add_api_route("/v1/models", routes.models, methods=["GET"])
    app.add_api_route("/v1/models/{model}", routes.model, methods=["GET"])
    app.add_api_route("/health", routes.health, methods=["GET"])
    app.add_api_route(
        "/v1/{path:path}", routes.unimplemented, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]
    )
    return app
