"""Raw-bytes handlers and the one admission step every audited request goes through at the gRPC edge.

Requests arrive as raw bytes and are parsed here, so a malformed or oversized message gets INVALID_ARGUMENT /
RESOURCE_EXHAUSTED and an ``invalid`` audit record instead of the gRPC core's own error.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from custos.api.convert import parse_message
from custos.flows.errors import RequestError, ResourceExhausted
from custos.flows.types import Caller
from custos.security.auth import current_caller

M = TypeVar("M")
T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]
#: Audits a refused request as an ``invalid`` event: (caller, rpc, error).
RecordInvalid = Callable[[Caller, str, RequestError], Awaitable[object]]
# Principal of callers until authentication is configured.
ANONYMOUS = "anonymous"


def caller_from_context(context: Context) -> Caller:
    """Who is calling, as authenticated by the access interceptor."""
    return current_caller() or Caller(principal=ANONYMOUS, peer=context.peer() or "unknown")


def deadline_from_context(context: Context) -> float | None:
    """The caller's deadline on the monotonic clock, if it set one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class Admission:
    """Size check, parse and conversion to the domain call; every refusal is audited before it is raised."""

    def __init__(self, record_invalid: RecordInvalid, *, max_request_bytes: int | None) -> None:
        self._record_invalid = record_invalid
        # None: the service has no size check of its own (gRPC's receive limit still applies).
        self._max_request_bytes = max_request_bytes

    async def admit(
        self,
        raw: bytes,
        caller: Caller,
        rpc: str,
        message_type: type[M],
        from_pb: Callable[[M], T],
    ) -> T:
        """The domain call converted from ``raw``; a refusal gets an ``invalid`` record, then is raised."""
        try:
            limit = self._max_request_bytes
            if limit is not None and len(raw) > limit:
                raise ResourceExhausted(
                    f"request is {len(raw)} bytes, larger than the limit of {limit}",
                    reason="request_too_large",
                )
            return from_pb(parse_message(message_type, raw))
        except RequestError as exc:
            await self._record_invalid(caller, rpc, exc)
            raise


def raw_bytes_handler(service: ServiceDescriptor, servicer: object) -> grpc.GenericRpcHandler:
    """Handlers for every method of ``service`` that ``servicer`` implements, taking raw request bytes.

    Built from the descriptor, so the method table cannot drift from the .proto files.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        behaviour: Callable[..., Any] | None = getattr(servicer, method.name, None)
        if behaviour is None:
            continue
        serializer = message_factory.GetMessageClass(method.output_type).SerializeToString
        if method.client_streaming:
            raise NotImplementedError(f"client streaming is not used by the API ({method.full_name})")
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                behaviour, response_serializer=serializer
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour, response_serializer=serializer
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
