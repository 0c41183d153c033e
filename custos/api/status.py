"""The gRPC side of the one status table (``custos.flows.status``): domain errors -> status and message."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from custos.flows.status import STATUSES, map_error


@dataclass(frozen=True)
class MappedStatus:
    """A gRPC status and the message the client sees."""

    code: grpc.StatusCode
    message: str
    retry_after_s: float | None = None


def status_code(name: str) -> grpc.StatusCode:
    """The gRPC code of a domain status name (``"INVALID_ARGUMENT"``); the names are gRPC's own."""
    code = grpc.StatusCode[name]
    assert code.value[0] == STATUSES[name].grpc_code, name  # the shared table and grpc agree
    return code


def map_exception(exc: BaseException, request_id: str) -> MappedStatus:
    """Translate any exception to the status the client receives (see :func:`custos.flows.status.map_error`).

    Known errors keep their safe message; everything else becomes a fixed "internal error" with the
    request id, so neither exception text nor user text reaches the client.
    """
    mapped = map_error(exc, request_id)
    return MappedStatus(status_code(mapped.status), mapped.message, mapped.retry_after_s)
