"""Errors of the request layer and the one table that maps every domain error to a gRPC status.

Messages of these errors are written for the client: they name fields and limits, never user text.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from custos.audit.errors import AuditUnavailable, InvalidQuery, RecordNotFound
from custos.engine.types import EngineBusy, InvalidSamplingParams, PromptTooLong


class RequestError(Exception):
    """Base of errors whose message is safe to return to the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(RequestError):
    """A request field is missing, malformed or out of range."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class ResourceExhausted(RequestError):
    """A capacity limit was hit; the caller may retry later or with a smaller request."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, reason: str, retry_after_s: float | None = None) -> None:
        hint = f" (retry after {retry_after_s:g} s)" if retry_after_s is not None else ""
        super().__init__(message + hint)
        self.reason = reason
        self.retry_after_s = retry_after_s


class NotFound(RequestError):
    """The addressed object does not exist."""

    code = grpc.StatusCode.NOT_FOUND


@dataclass(frozen=True)
class MappedStatus:
    """A gRPC status and the message the client sees."""

    code: grpc.StatusCode
    message: str


def map_exception(exc: BaseException, request_id: str) -> MappedStatus:
    """Translate any exception to the status the client receives.

    Known errors keep their safe message; everything else becomes a fixed "internal error" with the
    request id, so neither exception text nor user text reaches the client.
    """
    if isinstance(exc, RequestError):
        return MappedStatus(exc.code, exc.message)
    if isinstance(exc, AuditUnavailable):
        return MappedStatus(
            grpc.StatusCode.UNAVAILABLE,
            f"audit database unavailable, nothing was processed (request id {request_id})",
        )
    if isinstance(exc, InvalidQuery):
        return MappedStatus(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc}")
    if isinstance(exc, RecordNotFound):
        return MappedStatus(grpc.StatusCode.NOT_FOUND, "record not found")
    if isinstance(exc, InvalidSamplingParams):
        return MappedStatus(grpc.StatusCode.INVALID_ARGUMENT, f"parameters.{exc}")
    if isinstance(exc, PromptTooLong):
        return MappedStatus(grpc.StatusCode.INVALID_ARGUMENT, f"messages: {exc}")
    if isinstance(exc, EngineBusy):
        return MappedStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    return MappedStatus(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")
