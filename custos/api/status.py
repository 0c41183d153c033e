"""The one table that maps every domain error to the gRPC status (code and message) the client receives."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from custos.audit.errors import AuditUnavailable, InvalidQuery, RecordNotFound
from custos.engine.types import EngineBusy, InvalidSamplingParams, PromptTooLong
from custos.flows.errors import RequestError


@dataclass(frozen=True)
class MappedStatus:
    """A gRPC status and the message the client sees."""

    code: grpc.StatusCode
    message: str


def status_code(name: str) -> grpc.StatusCode:
    """The gRPC code of a domain status name (``"INVALID_ARGUMENT"``); the names are gRPC's own."""
    return grpc.StatusCode[name]


def map_exception(exc: BaseException, request_id: str) -> MappedStatus:
    """Translate any exception to the status the client receives.

    Known errors keep their safe message; everything else becomes a fixed "internal error" with the
    request id, so neither exception text nor user text reaches the client.
    """
    if isinstance(exc, RequestError):
        return MappedStatus(status_code(exc.status), exc.message)
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
