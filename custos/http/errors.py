"""Errors of the HTTP edge in OpenAI's shape, with the status from the table shared with gRPC.

``{"error": {"message", "type", "param", "code"}}``: ``message`` is the same safe text a gRPC client gets,
``code`` the status name (``INVALID_ARGUMENT``), ``param`` the field at fault, ``type`` and the HTTP status
from :data:`custos.flows.status.STATUSES`. Capacity refusals carry ``Retry-After`` (seconds) and
``retry-after-ms``, both of which the OpenAI SDK honours.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from custos.flows.errors import RequestError
from custos.flows.status import MappedError, map_error
from custos.http.schema import invalid_from_validation

REQUEST_ID_HEADER = "x-request-id"


class DeadlineExceeded(RequestError):
    """The caller's ``x-request-timeout`` passed before the answer was complete."""

    status = "DEADLINE_EXCEEDED"


class Unimplemented(RequestError):
    """An OpenAI endpoint this server does not implement."""

    status = "UNIMPLEMENTED"


class ClientDisconnected(Exception):
    """The client went away before the answer was complete; generation was cancelled."""


def error_body(mapped: MappedError) -> dict[str, Any]:
    """The OpenAI error object of ``mapped``."""
    return {
        "error": {
            "message": mapped.message,
            "type": mapped.codes.error_type,
            "param": mapped.field,
            "code": mapped.status,
        }
    }


def error_headers(mapped: MappedError, request_id: str) -> dict[str, str]:
    """The request id, retry hints of capacity limits, and the challenge of a missing credential."""
    headers = {REQUEST_ID_HEADER: request_id}
    retry_after = mapped.retry_after_header
    if retry_after is not None and mapped.retry_after_s is not None:
        headers["retry-after"] = retry_after
        headers["retry-after-ms"] = str(max(1, round(mapped.retry_after_s * 1000)))
    if mapped.status == "UNAUTHENTICATED":
        headers["www-authenticate"] = "Bearer"
    return headers


def error_response(mapped: MappedError, request_id: str) -> JSONResponse:
    """The response of a mapped error."""
    return JSONResponse(
        error_body(mapped), status_code=mapped.http_status, headers=error_headers(mapped, request_id)
    )


def install_error_handlers(app: FastAPI, new_request_id: Any) -> None:
    """Framework errors in OpenAI's shape too: validation is 400 naming the field (never 422), 404, 405."""

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        request_id = new_request_id()
        return error_response(
            map_error(invalid_from_validation(exc.errors(), skip=1), request_id), request_id
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = {404: "NOT_FOUND", 405: "UNIMPLEMENTED"}.get(exc.status_code, "INVALID_ARGUMENT")
        message = "no such endpoint" if exc.status_code == 404 else "method not allowed here"
        mapped = MappedError(status, message)
        request_id = new_request_id()
        response = error_response(mapped, request_id)
        response.status_code = exc.status_code
        return response

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
