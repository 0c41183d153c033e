"""The gRPC side of the one status table (``custos.flows.status``): domain errors -> status, message, details.

Besides the code and message, every error carries gRPC's standard rich details (``grpc-status-details-bin``,
read with ``grpc_status.rpc_status.from_call``): an ``ErrorInfo`` with the error code in domain ``custos``,
a ``BadRequest.FieldViolation`` naming the field of an INVALID_ARGUMENT, and a ``RetryInfo`` on a capacity
limit that gives a retry hint. A capacity refusal also sets ``grpc-retry-pushback-ms``, which a client
retrying by the published service config (``service_config.json``) obeys: the hint, or ``-1`` (do not
retry) where no retry of the same request can pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from custos.flows.status import ERROR_DOMAIN, STATUSES, MappedError, map_error

#: The trailer by which a server tells a retrying client when (or, negative, whether not) to retry.
PUSHBACK_KEY = "grpc-retry-pushback-ms"
#: The client service config shipped with the package: the retry policy clients are advised to use.
SERVICE_CONFIG_FILE = "service_config.json"


@dataclass(frozen=True)
class MappedStatus:
    """A gRPC status, the message the client sees, and the trailers of its standard details."""

    code: grpc.StatusCode
    message: str
    #: ``grpc-status-details-bin`` and, on capacity limits, ``grpc-retry-pushback-ms``.
    trailers: tuple[tuple[str, str | bytes], ...] = ()
    retry_after_s: float | None = None


def status_code(name: str) -> grpc.StatusCode:
    """The gRPC code of a domain status name (``"INVALID_ARGUMENT"``); the names are gRPC's own."""
    code = grpc.StatusCode[name]
    assert code.value[0] == STATUSES[name].grpc_code, name  # the shared table and grpc agree
    return code


def rich_status(mapped: MappedError) -> status_pb2.Status:
    """The ``google.rpc.Status`` of a mapped error: ErrorInfo, then BadRequest or RetryInfo where known."""
    metadata: dict[str, str] = {}
    if mapped.field is not None:
        metadata["field"] = mapped.field
    if mapped.reason is not None:
        metadata["limit"] = mapped.reason
    details: list[Any] = [
        error_details_pb2.ErrorInfo(reason=mapped.error_code, domain=ERROR_DOMAIN, metadata=metadata)
    ]
    if mapped.field is not None:
        # The description is the message's problem part: our text, naming limits, never the caller's.
        description = mapped.message.removeprefix(f"{mapped.field}: ")
        violation = error_details_pb2.BadRequest.FieldViolation(field=mapped.field, description=description)
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if mapped.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(retry_after_ms(mapped.retry_after_s))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        wrapped = any_pb2.Any()
        wrapped.Pack(detail)
        packed.append(wrapped)
    return status_pb2.Status(code=STATUSES[mapped.status].grpc_code, message=mapped.message, details=packed)


def retry_after_ms(seconds: float) -> int:
    """A retry hint in whole milliseconds, at least 1."""
    return max(1, round(seconds * 1000))


def pushback_ms(mapped: MappedError) -> str | None:
    """The ``grpc-retry-pushback-ms`` value: the hint, ``-1`` for a limit no retry passes, else None."""
    retryable = mapped.retryable
    if retryable is False:
        return "-1"
    if retryable and mapped.retry_after_s is not None:
        return str(retry_after_ms(mapped.retry_after_s))
    return None


def map_exception(exc: BaseException, request_id: str) -> MappedStatus:
    """Translate any exception to the status the client receives (see :func:`custos.flows.status.map_error`).

    Known errors keep their safe message; everything else becomes a fixed "internal error" with the
    request id, so neither exception text nor user text reaches the client.
    """
    mapped = map_error(exc, request_id)
    code = status_code(mapped.status)
    # to_status packs the details into the trailer under the key grpc's own clients read.
    details = rpc_status.to_status(rich_status(mapped))
    trailers: list[tuple[str, str | bytes]] = list(details.trailing_metadata)
    pushback = pushback_ms(mapped)
    if pushback is not None:
        trailers.append((PUSHBACK_KEY, pushback))
    return MappedStatus(code, mapped.message, tuple(trailers), mapped.retry_after_s)


def service_config() -> dict[str, Any]:
    """The published client service config (its retry policy), as the dict grpc's channel option takes."""
    text = resources.files("custos.api").joinpath(SERVICE_CONFIG_FILE).read_text(encoding="utf-8")
    config: dict[str, Any] = json.loads(text)
    return config


def service_config_json() -> str:
    """The published client service config as JSON, the value of the ``grpc.service_config`` option."""
    return json.dumps(service_config())
