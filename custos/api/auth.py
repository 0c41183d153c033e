"""The gRPC adapter of ``custos.security.auth``: every non-public call is admitted before its handler runs.

The decisions (who, which permission, which limits, the ``denied`` records) are :class:`AccessControl`'s;
this interceptor only reads the credentials and the guarded request fields off the call: the credentials
first, from the metadata, and the request message only once they are good.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError

from custos.flows.errors import InvalidArgument, PermissionDenied, RequestError
from custos.flows.types import Caller
from custos.security.auth import (
    PUBLIC_SERVICES,
    AccessControl,
    bind_caller,
    guarded_fields,
    unbind_caller,
)

Context = grpc.aio.ServicerContext[Any, Any]


class Unimplemented(RequestError):
    """The API declares the method, this server does not implement it yet."""

    status = "UNIMPLEMENTED"


def method_table(services: Sequence[ServiceDescriptor]) -> dict[str, MethodDescriptor]:
    """Full gRPC method name -> descriptor, for every method of ``services``."""
    return {f"/{s.full_name}/{m.name}": m for s in services for m in s.methods}


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Authenticate -> authorize (RPC and fields) -> capacity limits, then run the call as that caller.

    Sits inside the observing interceptor, which turns the errors raised here into statuses. Refusals are
    audited as ``denied`` events (by :class:`AccessControl`).
    """

    def __init__(self, *, services: Sequence[ServiceDescriptor], access: AccessControl) -> None:
        self._methods = method_table(services)
        self._access = access

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Wrap every non-public method; a declared, unimplemented one is authorized, then UNIMPLEMENTED.

        The wrapped handler takes its request as a stream, so the caller is authenticated from the call's
        metadata before the request message is read: an unauthenticated caller's body is never read.
        """
        name = handler_call_details.method
        if name.split("/")[1] in PUBLIC_SERVICES:
            return await continuation(handler_call_details)
        handler: Any = await continuation(handler_call_details)
        descriptor = self._methods.get(name)
        if handler is None:
            if descriptor is None:
                return None  # type: ignore[return-value]  # not part of the API: the core says UNIMPLEMENTED
            handler = _unimplemented_handler(descriptor)
        deserialize: Callable[[bytes], Any] | None = handler.request_deserializer
        if handler.unary_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(name, descriptor, handler.unary_unary, deserialize),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(name, descriptor, handler.unary_stream, deserialize),
                response_serializer=handler.response_serializer,
            )
        return _denying_handler(name)

    def _wrap_unary(
        self,
        name: str,
        descriptor: MethodDescriptor | None,
        behaviour: Callable[[Any, Context], Awaitable[Any]],
        deserialize: Callable[[bytes], Any] | None,
    ) -> Callable[..., Any]:
        async def unary(requests: AsyncIterator[bytes], context: Context) -> Any:
            caller = await self._authenticate(name, context)
            raw = await _single_request(requests)
            release = await self._authorize(caller, name, descriptor, raw)
            token = bind_caller(caller)
            try:
                return await behaviour(deserialize(raw) if deserialize else raw, context)
            finally:
                release()
                unbind_caller(token)

        return unary

    def _wrap_stream(
        self,
        name: str,
        descriptor: MethodDescriptor | None,
        behaviour: Callable[[Any, Context], AsyncIterator[Any]],
        deserialize: Callable[[bytes], Any] | None,
    ) -> Callable[..., AsyncIterator[Any]]:
        async def stream(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
            caller = await self._authenticate(name, context)
            raw = await _single_request(requests)
            release = await self._authorize(caller, name, descriptor, raw)
            bind_caller(caller)
            try:
                async for response in behaviour(deserialize(raw) if deserialize else raw, context):
                    yield response
            finally:
                release()

        return stream

    async def _authenticate(self, name: str, context: Context) -> Caller:
        return await self._access.authenticate(
            method=name,
            peer=context.peer() or "unknown",
            metadata=tuple(context.invocation_metadata() or ()),
            auth_context=context.auth_context(),
        )

    async def _authorize(
        self, caller: Caller, name: str, descriptor: MethodDescriptor | None, raw: bytes
    ) -> Callable[[], None]:
        def fields_set() -> list[tuple[str, str]]:
            if descriptor is None or not isinstance(raw, bytes):
                return []
            return _fields_set(descriptor, raw)

        return await self._access.authorize_call(caller, method=name, fields_set=fields_set)


async def _single_request(requests: AsyncIterator[bytes]) -> bytes:
    """The one request message of a unary-request call (read only once the caller is authenticated)."""
    async for raw in requests:
        return raw
    raise InvalidArgument("request", "the call carried no request message")


def _fields_set(descriptor: MethodDescriptor, raw: bytes) -> list[tuple[str, str]]:
    """(field, permission) for each permission-guarded field that ``raw`` sets.

    Unparsable input is left to the servicer, which answers INVALID_ARGUMENT.
    """
    guarded = guarded_fields(descriptor.input_type.full_name)
    if not guarded:
        return []
    try:
        message = message_factory.GetMessageClass(descriptor.input_type).FromString(raw)
    except DecodeError:
        return []
    return [(field, perm) for field, perm in guarded if getattr(message, field)]


def _unimplemented_handler(descriptor: MethodDescriptor) -> grpc.RpcMethodHandler[Any, Any]:
    async def unary(request: bytes, context: Context) -> Any:
        raise Unimplemented(f"{descriptor.full_name} is not implemented by this server")

    async def stream(request: bytes, context: Context) -> AsyncIterator[Any]:
        raise Unimplemented(f"{descriptor.full_name} is not implemented by this server")
        yield  # pragma: no cover - makes this an async generator

    if descriptor.client_streaming:
        raise NotImplementedError(f"client streaming is not used by the API ({descriptor.full_name})")
    if descriptor.server_streaming:
        return grpc.unary_stream_rpc_method_handler(stream)
    return grpc.unary_unary_rpc_method_handler(unary)


def _denying_handler(name: str) -> grpc.RpcMethodHandler[Any, Any]:
    async def unary(request: bytes, context: Context) -> Any:
        raise PermissionDenied(f"{name} is not available")

    return grpc.unary_unary_rpc_method_handler(unary)
