"""Authentication, the permission table and capacity admission: the one place that decides who may call what.

Every RPC of the Custos services needs the permission listed in :data:`RPC_PERMISSIONS`; an RPC without an
entry is denied to everyone (fail closed). Request fields that need a permission of their own (``reidentify``)
are listed in :data:`FIELD_PERMISSIONS`. Health and reflection are open, so probes and generic clients work
without credentials.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError

from custos.audit.events import AuditEvent
from custos.audit.store import AuditStore
from custos.flows.errors import PermissionDenied, RequestError, ResourceExhausted, Unauthenticated
from custos.flows.types import Caller
from custos.security.limits import CapacityLimiter
from custos.security.tls import certificate_fingerprint
from custos.security.tokens import TokenError, TokenStore

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

# ---- the table of ARCHITECTURE.md ---------------------------------------------------------------

PERMISSIONS = frozenset(
    {
        "generate",
        "reidentify",
        "anonymize",
        "classify",
        "feedback.submit",
        "feedback.read",
        "audit.read",
        "transcript.read",
        "keys.admin",
        "subjects.admin",
        "tokens.admin",
    }
)
_INFERENCE = frozenset({"generate", "reidentify", "anonymize", "classify", "feedback.submit"})
_COMPLIANCE = frozenset({"audit.read", "feedback.read"})
ROLES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "inference": _INFERENCE,
        "compliance": _COMPLIANCE,
        "compliance-transcripts": _COMPLIANCE | {"transcript.read"},
        # For services that must only ever see placeholders: inference without re-identification.
        "inference-anonymous": _INFERENCE - {"reidentify"},
        "admin": frozenset({"keys.admin", "subjects.admin", "tokens.admin"}),
    }
)
# Full gRPC method name -> the permission it needs. Missing entries are denied.
RPC_PERMISSIONS: Mapping[str, str] = MappingProxyType(
    {
        "/custos.v1.Inference/Generate": "generate",
        "/custos.v1.Inference/GenerateStream": "generate",
        "/custos.v1.Audit/Query": "audit.read",
        "/custos.v1.Audit/Get": "audit.read",
        "/custos.v1.Audit/Verify": "audit.read",
        "/custos.v1.Audit/Export": "audit.read",
        "/custos.v1.Privacy/Anonymize": "anonymize",
        "/custos.v1.Audit/GetTranscript": "transcript.read",
        "/custos.v1.Admin/EraseSubject": "subjects.admin",
        "/custos.v1.Admin/ExportSubject": "subjects.admin",
        "/custos.v1.Inference/Classify": "classify",
        "/custos.v1.Feedback/Submit": "feedback.submit",
        "/custos.v1.Feedback/Satisfaction": "feedback.read",
    }
)
# "message.field" -> the permission a request needs when that field is set.
FIELD_PERMISSIONS: Mapping[str, str] = MappingProxyType(
    {"custos.v1.GenerateRequest.reidentify": "reidentify"}
)
# Reachable without credentials.
PUBLIC_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
UNAUTHENTICATED_ACTOR = "unauthenticated"

assert all(p in PERMISSIONS for perms in ROLES.values() for p in perms)
assert all(p in PERMISSIONS for p in (*RPC_PERMISSIONS.values(), *FIELD_PERMISSIONS.values()))


def permissions_of(roles: Sequence[str]) -> frozenset[str]:
    """The union of the permissions of ``roles`` (unknown role names grant nothing)."""
    return frozenset().union(*(ROLES.get(r, frozenset()) for r in roles))


# ---- errors -------------------------------------------------------------------------------------


class Unimplemented(RequestError):
    """The API declares the method, this server does not implement it yet."""

    status = "UNIMPLEMENTED"


# ---- who is calling -----------------------------------------------------------------------------

_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("custos_caller", default=None)


def current_caller() -> Caller | None:
    """The authenticated caller of the RPC running in this context (set by :class:`AccessInterceptor`)."""
    return _CALLER.get()


@dataclass(frozen=True)
class _Identity:
    principal: str
    roles: tuple[str, ...]
    fingerprint: str | None
    method: str


class Authenticator:
    """Bearer token (``authorization: Bearer id.secret``) first, else the verified client certificate."""

    def __init__(self, tokens: TokenStore, cert_roles: Mapping[str, Sequence[str]]) -> None:
        self._tokens = tokens
        self._cert_roles = cert_roles

    def authenticate(
        self, metadata: Sequence[tuple[str, str | bytes]], auth_context: Mapping[str, Any]
    ) -> _Identity:
        """Blocking (database lookup): run on the executor. Raises :class:`Unauthenticated`."""
        values = [v for k, v in metadata if k == "authorization"]
        if len(values) > 1:
            raise Unauthenticated("more than one authorization header")
        if values:
            value = values[0].decode() if isinstance(values[0], bytes) else values[0]
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("authorization must be 'Bearer <token>'")
            try:
                info = self._tokens.verify(token.strip())
            except TokenError as exc:
                raise _Refusal(str(exc)) from None
            return _Identity(info.principal, info.roles, None, f"token:{info.id}")
        pem = auth_context.get("x509_pem_cert")
        if pem:
            names = [n.decode() for n in auth_context.get("x509_common_name", [])] or [
                n.decode() for n in auth_context.get("x509_subject_alternative_name", [])
            ]
            if names:
                principal = names[0]
                return _Identity(
                    principal,
                    tuple(self._cert_roles.get(principal, ())),
                    certificate_fingerprint(pem[0]),
                    "mtls",
                )
        raise _Refusal("missing")


class _Refusal(Unauthenticated):
    """Unauthenticated with a reason for the audit trail; the client sees one fixed message."""

    def __init__(self, reason: str) -> None:
        super().__init__("missing or invalid credentials")
        self.reason = reason


# ---- the interceptor ----------------------------------------------------------------------------


def method_table(services: Sequence[ServiceDescriptor]) -> dict[str, MethodDescriptor]:
    """Full gRPC method name -> descriptor, for every method of ``services``."""
    return {f"/{s.full_name}/{m.name}": m for s in services for m in s.methods}


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Authenticate -> authorize (RPC and fields) -> capacity limits, then run the call as that caller.

    Sits inside the observing interceptor, which turns the errors raised here into statuses. Refusals are
    audited as ``denied`` events.
    """

    def __init__(
        self,
        *,
        services: Sequence[ServiceDescriptor],
        authenticator: Authenticator,
        limiter: CapacityLimiter,
        audit: AuditStore,
        executor: Executor,
    ) -> None:
        self._methods = method_table(services)
        self._authenticator = authenticator
        self._limiter = limiter
        self._audit = audit
        self._executor = executor

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Wrap every non-public method; a declared, unimplemented one is authorized, then UNIMPLEMENTED."""
        name = handler_call_details.method
        if name.split("/")[1] in PUBLIC_SERVICES:
            return await continuation(handler_call_details)
        handler: Any = await continuation(handler_call_details)
        descriptor = self._methods.get(name)
        if handler is None:
            if descriptor is None:
                return None  # type: ignore[return-value]  # not part of the API: the core says UNIMPLEMENTED
            handler = _unimplemented_handler(descriptor)
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._wrap_unary(name, descriptor, handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._wrap_stream(name, descriptor, handler.unary_stream))
        return _denying_handler(name)

    def _wrap_unary(
        self,
        name: str,
        descriptor: MethodDescriptor | None,
        behaviour: Callable[[Any, Context], Awaitable[Any]],
    ) -> Callable[..., Any]:
        async def unary(request: Any, context: Context) -> Any:
            caller, release = await self._admit(name, descriptor, request, context)
            token = _CALLER.set(caller)
            try:
                return await behaviour(request, context)
            finally:
                release()
                _CALLER.reset(token)

        return unary

    def _wrap_stream(
        self,
        name: str,
        descriptor: MethodDescriptor | None,
        behaviour: Callable[[Any, Context], AsyncIterator[Any]],
    ) -> Callable[..., AsyncIterator[Any]]:
        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            caller, release = await self._admit(name, descriptor, request, context)
            _CALLER.set(caller)
            try:
                async for response in behaviour(request, context):
                    yield response
            finally:
                release()

        return stream

    async def _admit(
        self, name: str, descriptor: MethodDescriptor | None, request: Any, context: Context
    ) -> tuple[Caller, Callable[[], None]]:
        peer = context.peer() or "unknown"
        rpc = name.rsplit("/", 1)[-1]
        try:
            identity = await self._run(
                self._authenticator.authenticate,
                tuple(context.invocation_metadata() or ()),
                context.auth_context(),
            )
        except _Refusal as exc:
            await self._deny(None, peer, name, rpc, exc, reason=exc.reason)
            raise
        except Unauthenticated as exc:
            await self._deny(None, peer, name, rpc, exc, reason="malformed header")
            raise
        caller = Caller(
            principal=identity.principal,
            peer=peer,
            role=",".join(identity.roles) or "none",
            roles=identity.roles,
            permissions=permissions_of(identity.roles),
            fingerprint=identity.fingerprint,
        )
        needed = RPC_PERMISSIONS.get(name)
        if needed is None or needed not in caller.permissions:
            denied = PermissionDenied(f"the caller lacks the permission for {rpc}")
            await self._deny(caller, peer, name, rpc, denied, reason="rpc", permission=needed)
            raise denied
        if descriptor is not None and isinstance(request, bytes):
            for field, permission in _field_permissions(descriptor, request):
                if permission not in caller.permissions:
                    refused = PermissionDenied(f"{field}: requires the {permission} permission")
                    await self._deny(caller, peer, name, rpc, refused, reason="field", permission=permission)
                    raise refused
        try:
            release = self._limiter.acquire(caller.principal)
        except ResourceExhausted as exc:
            await self._deny(caller, peer, name, rpc, exc, reason=exc.reason)
            raise
        return caller, release

    async def _deny(
        self,
        caller: Caller | None,
        peer: str,
        name: str,
        rpc: str,
        exc: RequestError,
        *,
        reason: str,
        permission: str | None = None,
    ) -> None:
        now = datetime.now(UTC)
        principal = caller.principal if caller else UNAUTHENTICATED_ACTOR
        actor: dict[str, object] = {"principal": principal, "peer": peer}
        if caller is not None:
            actor.update(role=caller.role, fingerprint=caller.fingerprint)
        event = AuditEvent(
            event_type="denied",
            phase="event",
            start_time=now,
            end_time=now,
            actor=principal,
            rpc=rpc,
            status=exc.status,
            details={"method": name, "reason": reason, "permission": permission, "actor": actor},
        )
        await self._run(self._audit.append, event)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _field_permissions(descriptor: MethodDescriptor, raw: bytes) -> list[tuple[str, str]]:
    """(field, permission) for each permission-guarded field that ``raw`` sets.

    Unparsable input is left to the servicer, which answers INVALID_ARGUMENT.
    """
    guarded = [
        (key.rsplit(".", 1)[1], perm)
        for key, perm in FIELD_PERMISSIONS.items()
        if key.rsplit(".", 1)[0] == descriptor.input_type.full_name
    ]
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
