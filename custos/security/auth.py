"""Authentication, the permission table and capacity admission: the one place that decides who may call what.

Every RPC of the Custos services needs the permission listed in :data:`RPC_PERMISSIONS`; an RPC without an
entry is denied to everyone (fail closed). Request fields that need a permission of their own (``reidentify``)
are listed in :data:`FIELD_PERMISSIONS`. Health and reflection are open, so probes and generic clients work
without credentials.

Transport-neutral: :class:`AccessControl` takes the method name, the peer, the credentials and the request's
guarded fields as plain values; the gRPC interceptor (``custos.api.auth``) adapts it, an HTTP edge would too.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar

from custos.audit.events import AuditEvent
from custos.audit.store import AuditStore
from custos.flows.errors import PermissionDenied, RequestError, ResourceExhausted, Unauthenticated
from custos.flows.types import Caller
from custos.security.limits import CapacityLimiter
from custos.security.tls import certificate_fingerprint
from custos.security.tokens import TokenError, TokenStore

T = TypeVar("T")

# ---- the permission table (the README lists it by role) ----------------------------------------

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
        # The compliance console (custos/console): signing in, and a transcript read there.
        "/custos.console/SignIn": "audit.read",
        "/custos.console/Transcript": "transcript.read",
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


def required_permission(method: str) -> str | None:
    """The permission ``method`` (a full method name) needs; ``None``: not in the table, denied to all."""
    return RPC_PERMISSIONS.get(method)


def guarded_fields(message_type: str) -> list[tuple[str, str]]:
    """(field, permission) for each field of ``message_type`` (full name) that needs its own permission."""
    return [
        (key.rsplit(".", 1)[1], permission)
        for key, permission in FIELD_PERMISSIONS.items()
        if key.rsplit(".", 1)[0] == message_type
    ]


# ---- who is calling -----------------------------------------------------------------------------

_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("custos_caller", default=None)


def current_caller() -> Caller | None:
    """The authenticated caller of the call running in this context (set by the edge after admission)."""
    return _CALLER.get()


def bind_caller(caller: Caller) -> contextvars.Token[Caller | None]:
    """Make ``caller`` the current caller of this context; the token undoes it."""
    return _CALLER.set(caller)


def unbind_caller(token: contextvars.Token[Caller | None]) -> None:
    """Undo :func:`bind_caller`."""
    _CALLER.reset(token)


@dataclass(frozen=True)
class Identity:
    """Who authenticated, with which roles, and how (``token:<id>`` or ``mtls``)."""

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
    ) -> Identity:
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
            return Identity(info.principal, info.roles, None, f"token:{info.id}")
        pem = auth_context.get("x509_pem_cert")
        if pem:
            names = [n.decode() for n in auth_context.get("x509_common_name", [])] or [
                n.decode() for n in auth_context.get("x509_subject_alternative_name", [])
            ]
            if names:
                principal = names[0]
                return Identity(
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


# ---- admission ----------------------------------------------------------------------------------

#: Lists the (field, permission) pairs whose field the request sets; called only once the RPC is permitted.
GuardedFieldsSet = Callable[[], Sequence[tuple[str, str]]]


class AccessControl:
    """Authenticate -> authorize (method and fields) -> capacity limits; refusals are ``denied`` events."""

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        limiter: CapacityLimiter,
        audit: AuditStore,
        executor: Executor,
    ) -> None:
        self._authenticator = authenticator
        self._limiter = limiter
        self._audit = audit
        self._executor = executor

    async def admit(
        self,
        *,
        method: str,
        peer: str,
        metadata: Sequence[tuple[str, str | bytes]],
        auth_context: Mapping[str, Any],
        fields_set: GuardedFieldsSet,
    ) -> tuple[Caller, Callable[[], None]]:
        """The admitted caller and the release of its capacity slot; a refusal is audited, then raised."""
        rpc = method.rsplit("/", 1)[-1]
        try:
            identity = await self._run(self._authenticator.authenticate, metadata, auth_context)
        except _Refusal as exc:
            await self._deny(None, peer, method, rpc, exc, reason=exc.reason)
            raise
        except Unauthenticated as exc:
            await self._deny(None, peer, method, rpc, exc, reason="malformed header")
            raise
        caller = Caller(
            principal=identity.principal,
            peer=peer,
            role=",".join(identity.roles) or "none",
            roles=identity.roles,
            permissions=permissions_of(identity.roles),
            fingerprint=identity.fingerprint,
        )
        needed = required_permission(method)
        if needed is None or needed not in caller.permissions:
            denied = PermissionDenied(
                f"the caller lacks the permission for {rpc}", error_code="RPC_NOT_PERMITTED"
            )
            await self._deny(caller, peer, method, rpc, denied, reason="rpc", permission=needed)
            raise denied
        for field, permission in fields_set():
            if permission not in caller.permissions:
                refused = PermissionDenied(
                    f"{field}: requires the {permission} permission", error_code="FIELD_NOT_PERMITTED"
                )
                await self._deny(caller, peer, method, rpc, refused, reason="field", permission=permission)
                raise refused
        try:
            release = self._limiter.acquire(caller.principal)
        except ResourceExhausted as exc:
            await self._deny(caller, peer, method, rpc, exc, reason=exc.reason)
            raise
        return caller, release

    async def authorize(self, caller: Caller, *, method: str, peer: str) -> None:
        """Check an already authenticated caller (a console session) for ``method``; a refusal is audited."""
        needed = required_permission(method)
        if needed is None or needed not in caller.permissions:
            rpc = method.rsplit("/", 1)[-1]
            denied = PermissionDenied(f"the caller lacks the permission for {rpc}")
            await self._deny(caller, peer, method, rpc, denied, reason="rpc", permission=needed)
            raise denied

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
