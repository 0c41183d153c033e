"""The one status table every edge maps errors through: status name -> gRPC code and HTTP status.

Domain errors carry a status name (gRPC's code names, also written into audit records). :func:`map_error`
turns any exception into a status name and a message safe for the client; the gRPC edge
(``custos.api.status``) and the HTTP edge (``custos.http.errors``) then look the name up here, so both
transports answer the same failure with the same meaning. Nothing here imports a transport.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from custos.audit.errors import AuditUnavailable, InvalidQuery, RecordNotFound
from custos.engine.types import (
    EngineBusy,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
    EngineUnsupported,
    InvalidSamplingParams,
    PromptTooLong,
)
from custos.flows.errors import InvalidArgument, RequestError, ResourceExhausted


@dataclass(frozen=True)
class Status:
    """One status: its gRPC code number, HTTP status and the OpenAI-style error ``type`` of HTTP bodies."""

    grpc_code: int
    http_status: int
    error_type: str


#: Status name -> codes. The gRPC numbers are the protocol's own (``grpc.StatusCode``), the HTTP statuses
#: those of Google's API design guide except FAILED_PRECONDITION, which is 409 (a state conflict) here.
STATUSES: Mapping[str, Status] = MappingProxyType(
    {
        "OK": Status(0, 200, ""),
        "CANCELLED": Status(1, 499, "cancelled"),
        "UNKNOWN": Status(2, 500, "server_error"),
        "INVALID_ARGUMENT": Status(3, 400, "invalid_request_error"),
        "DEADLINE_EXCEEDED": Status(4, 504, "timeout_error"),
        "NOT_FOUND": Status(5, 404, "not_found_error"),
        "ALREADY_EXISTS": Status(6, 409, "conflict_error"),
        "PERMISSION_DENIED": Status(7, 403, "permission_error"),
        "RESOURCE_EXHAUSTED": Status(8, 429, "rate_limit_error"),
        "FAILED_PRECONDITION": Status(9, 409, "failed_precondition_error"),
        "ABORTED": Status(10, 409, "conflict_error"),
        "OUT_OF_RANGE": Status(11, 400, "invalid_request_error"),
        "UNIMPLEMENTED": Status(12, 501, "not_implemented_error"),
        "INTERNAL": Status(13, 500, "server_error"),
        "UNAVAILABLE": Status(14, 503, "service_unavailable_error"),
        "DATA_LOSS": Status(15, 500, "server_error"),
        "UNAUTHENTICATED": Status(16, 401, "authentication_error"),
    }
)
#: Capacity refusals whose HTTP status is more precise than 429: a body too large is 413 on HTTP.
HTTP_STATUS_BY_REASON: Mapping[str, int] = MappingProxyType({"request_too_large": 413})

#: The domain of every error code (gRPC's ``ErrorInfo.domain``).
ERROR_DOMAIN = "custos"
#: Error codes of capacity refusals, by the limit that refused (``ResourceExhausted.reason``).
ERROR_CODE_BY_LIMIT: Mapping[str, str] = MappingProxyType(
    {
        "rate": "RATE_LIMITED",
        "concurrency": "TOO_MANY_IN_FLIGHT",
        "queue": "ENGINE_BUSY",
        "request_too_large": "REQUEST_TOO_LARGE",
        "idempotency_pending": "IDEMPOTENCY_PENDING",
    }
)
#: Error codes that differ from their status name when an error names none of its own.
ERROR_CODE_BY_STATUS: Mapping[str, str] = MappingProxyType({"INVALID_ARGUMENT": "INVALID_FIELD"})
#: Capacity refusals that a retry of the same request cannot pass: the client is told not to retry.
NOT_RETRYABLE_LIMITS = frozenset({"request_too_large"})


@dataclass(frozen=True)
class MappedError:
    """What the client learns of a failure: the status name, a safe message, and hints where known."""

    status: str
    message: str
    #: The request field at fault (INVALID_ARGUMENT), in the edge's own field names.
    field: str | None = None
    #: Seconds after which a retry may succeed (capacity limits).
    retry_after_s: float | None = None
    #: Why a capacity limit refused the call (``rate``, ``concurrency``, ``request_too_large``, ...).
    reason: str | None = None
    #: The stable machine-readable code (``RATE_LIMITED``, ``INVALID_FIELD``, ``PURPOSE_NOT_ALLOWED``, ...);
    #: empty: that of its limit or its status (:attr:`error_code`).
    code: str = ""

    @property
    def error_code(self) -> str:
        """The failure's code in :data:`ERROR_DOMAIN`: its own, that of its limit, or its status's."""
        if self.code:
            return self.code
        if self.reason is not None and self.reason in ERROR_CODE_BY_LIMIT:
            return ERROR_CODE_BY_LIMIT[self.reason]
        return ERROR_CODE_BY_STATUS.get(self.status, self.status)

    @property
    def retryable(self) -> bool | None:
        """Whether retrying the same call may succeed.

        True with a retry hint, False for a limit no retry passes, None when unknown (the client decides).
        """
        if self.reason is not None and self.reason in NOT_RETRYABLE_LIMITS:
            return False
        return True if self.retry_after_s is not None else None

    @property
    def codes(self) -> Status:
        """The status's row of :data:`STATUSES`."""
        return STATUSES[self.status]

    @property
    def http_status(self) -> int:
        """The HTTP status: the table's, or the more precise one of a capacity refusal's reason."""
        if self.reason is not None and self.reason in HTTP_STATUS_BY_REASON:
            return HTTP_STATUS_BY_REASON[self.reason]
        return self.codes.http_status

    @property
    def retry_after_header(self) -> str | None:
        """``Retry-After`` in whole seconds (HTTP has no fractions), rounded up; ``None`` without a hint."""
        if self.retry_after_s is None:
            return None
        return str(max(1, math.ceil(self.retry_after_s)))


def map_error(exc: BaseException, request_id: str) -> MappedError:
    """Translate any exception to the status and message the client receives.

    Known errors keep their safe message; everything else becomes a fixed "internal error" with the
    request id, so neither exception text nor user text reaches the client.
    """
    code = (exc.error_code or "") if isinstance(exc, RequestError) else ""
    if isinstance(exc, InvalidArgument):
        return MappedError(exc.status, exc.message, field=exc.field, code=code)
    if isinstance(exc, ResourceExhausted):
        return MappedError(
            exc.status, exc.message, retry_after_s=exc.retry_after_s, reason=exc.reason, code=code
        )
    if isinstance(exc, RequestError):
        return MappedError(exc.status, exc.message, code=code)
    if isinstance(exc, AuditUnavailable):
        return MappedError(
            "UNAVAILABLE",
            f"audit database unavailable, nothing was processed (request id {request_id})",
            code="AUDIT_UNAVAILABLE",
        )
    if isinstance(exc, InvalidQuery):
        return MappedError("INVALID_ARGUMENT", f"{exc.field}: {exc}", field=exc.field)
    if isinstance(exc, RecordNotFound):
        return MappedError("NOT_FOUND", "record not found")
    if isinstance(exc, InvalidSamplingParams):
        return MappedError("INVALID_ARGUMENT", f"parameters.{exc}", field=f"parameters.{exc.field}")
    if isinstance(exc, PromptTooLong):
        return MappedError("INVALID_ARGUMENT", f"messages: {exc}", field="messages")
    if isinstance(exc, EngineBusy):
        return MappedError("RESOURCE_EXHAUSTED", str(exc), reason="queue")
    if isinstance(exc, EngineUnavailable):
        return MappedError("UNAVAILABLE", str(exc), retry_after_s=exc.retry_after_s, reason=exc.reason)
    if isinstance(exc, EngineTimeout):
        return MappedError("DEADLINE_EXCEEDED", str(exc), retry_after_s=exc.retry_after_s, reason=exc.reason)
    if isinstance(exc, EngineUnsupported):
        return MappedError("UNIMPLEMENTED", f"{exc.setting}: {exc}")
    if isinstance(exc, EngineRejected):
        return MappedError("INVALID_ARGUMENT", f"messages: {exc}", field="messages")
    return MappedError("INTERNAL", f"internal error (request id {request_id})")
