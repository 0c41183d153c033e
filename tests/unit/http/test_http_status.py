"""One status table for both edges: every failure gets the same status name, gRPC code and HTTP status."""

from __future__ import annotations

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from custos.api.auth import Unimplemented as GrpcUnimplemented
from custos.api.status import map_exception
from custos.audit.errors import AuditUnavailable
from custos.engine.types import EngineBusy
from custos.flows.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from custos.flows.status import STATUSES, map_error
from custos.http.errors import (
    DeadlineExceeded,
    Unimplemented,
    error_body,
    error_headers,
    install_error_handlers,
)


def test_the_table_has_every_grpc_code_with_its_number() -> None:
    assert set(STATUSES) == {code.name for code in grpc.StatusCode}
    for code in grpc.StatusCode:
        assert STATUSES[code.name].grpc_code == code.value[0]


CASES = [
    (InvalidArgument("max_tokens", "too many"), "INVALID_ARGUMENT", 400),
    (Unauthenticated("missing or invalid credentials"), "UNAUTHENTICATED", 401),
    (PermissionDenied("reidentify: requires the reidentify permission"), "PERMISSION_DENIED", 403),
    (FailedPrecondition("messages: contain blocked entity types"), "FAILED_PRECONDITION", 409),
    (ResourceExhausted("request is 5000 bytes", reason="request_too_large"), "RESOURCE_EXHAUSTED", 413),
    (ResourceExhausted("rate", reason="rate", retry_after_s=0.2), "RESOURCE_EXHAUSTED", 429),
    (EngineBusy(queued=3, limit=3), "RESOURCE_EXHAUSTED", 429),
    (Unimplemented("not here"), "UNIMPLEMENTED", 501),
    (GrpcUnimplemented("not here"), "UNIMPLEMENTED", 501),
    (Unavailable("draining"), "UNAVAILABLE", 503),
    (AuditUnavailable("db down"), "UNAVAILABLE", 503),
    (DeadlineExceeded("too late"), "DEADLINE_EXCEEDED", 504),
    (RuntimeError("Jane Doe's card 4111"), "INTERNAL", 500),
]


@pytest.mark.parametrize(("exc", "status", "http_status"), CASES)
def test_both_edges_map_through_the_same_table(exc: Exception, status: str, http_status: int) -> None:
    mapped = map_error(exc, "rid-1")
    assert mapped.status == status
    assert mapped.http_status == http_status
    grpc_status = map_exception(exc, "rid-1")
    assert grpc_status.code.name == status
    assert grpc_status.message == mapped.message
    body = error_body(mapped)["error"]
    assert body["code"] == status and body["message"] == mapped.message


def test_unknown_errors_never_show_their_text() -> None:
    mapped = map_error(RuntimeError("Jane Doe's card 4111"), "rid-9")
    assert mapped.message == "internal error (request id rid-9)"


def test_invalid_argument_names_its_field() -> None:
    assert (
        error_body(map_error(InvalidArgument("messages[2].content", "must not be empty"), "r"))["error"][
            "param"
        ]
        == "messages[2].content"
    )


def test_capacity_refusals_carry_retry_hints_in_whole_seconds_and_ms() -> None:
    headers = error_headers(map_error(ResourceExhausted("rate", reason="rate", retry_after_s=0.2), "r"), "r")
    assert headers["retry-after"] == "1" and headers["retry-after-ms"] == "200"
    headers = error_headers(map_error(ResourceExhausted("rate", reason="rate", retry_after_s=2.5), "r"), "r")
    assert headers["retry-after"] == "3" and headers["retry-after-ms"] == "2500"
    assert "retry-after" not in error_headers(map_error(EngineBusy(queued=1, limit=1), "r"), "r")


class _Body(BaseModel):
    count: int


def test_framework_validation_is_400_naming_the_field_never_422() -> None:
    app = FastAPI()
    install_error_handlers(app, lambda: "rid")

    @app.post("/things")
    async def things(body: _Body, limit: int = 10) -> dict[str, int]:
        return {"count": body.count, "limit": limit}

    client = TestClient(app)
    assert client.post("/things", json={"count": 1}).status_code == 200
    response = client.post("/things", json={"count": "many"})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "count: Input should be a valid integer, unable to parse string as an integer",
        "type": "invalid_request_error",
        "param": "count",
        "code": "INVALID_ARGUMENT",
    }
    assert client.post("/things?limit=x", json={"count": 1}).json()["error"]["param"] == "limit"
    assert client.get("/missing").status_code == 404
    assert client.get("/things").status_code == 405


ERROR_CODES = [
    (InvalidArgument("max_tokens", "too many"), "INVALID_FIELD"),
    (InvalidArgument("purpose", "not configured", error_code="PURPOSE_NOT_ALLOWED"), "PURPOSE_NOT_ALLOWED"),
    (ResourceExhausted("rate", reason="rate", retry_after_s=0.2), "RATE_LIMITED"),
    (ResourceExhausted("in flight", reason="concurrency", retry_after_s=0.1), "TOO_MANY_IN_FLIGHT"),
    (ResourceExhausted("request is 5000 bytes", reason="request_too_large"), "REQUEST_TOO_LARGE"),
    (EngineBusy(queued=3, limit=3), "ENGINE_BUSY"),
    (AuditUnavailable("db down"), "AUDIT_UNAVAILABLE"),
    (Unavailable("draining"), "UNAVAILABLE"),
    (PermissionDenied("reidentify: no", error_code="REIDENTIFY_NOT_PERMITTED"), "REIDENTIFY_NOT_PERMITTED"),
    (RuntimeError("Jane Doe's card 4111"), "INTERNAL"),
]


@pytest.mark.parametrize(("exc", "code"), ERROR_CODES)
def test_every_failure_has_an_error_code(exc: Exception, code: str) -> None:
    assert map_error(exc, "rid-1").error_code == code


@pytest.mark.parametrize(
    ("exc", "pushback"),
    [
        (ResourceExhausted("rate", reason="rate", retry_after_s=0.25), "250"),
        (ResourceExhausted("request is 5000 bytes", reason="request_too_large"), "-1"),
        (EngineBusy(queued=3, limit=3), None),
        (InvalidArgument("max_tokens", "too many"), None),
    ],
)
def test_capacity_refusals_push_back(exc: Exception, pushback: str | None) -> None:
    trailers = dict(map_exception(exc, "rid-1").trailers)
    assert trailers.get("grpc-retry-pushback-ms") == pushback
    assert isinstance(trailers["grpc-status-details-bin"], bytes)
