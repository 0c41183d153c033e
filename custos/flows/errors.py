"""Domain errors of the request flows: each carries the status name that its audit record and the edge use.

Messages of these errors are written for the client: they name fields and limits, never user text. The edge
turns them into its own status codes (``custos.api.status`` for gRPC); nothing here knows a transport.
"""

from __future__ import annotations


class RequestError(Exception):
    """Base of errors whose message is safe to return to the caller."""

    #: The status name (gRPC's code names): written into audit records and mapped by every edge.
    status: str = "INTERNAL"

    def __init__(self, message: str, *, error_code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: A stable machine-readable code of this failure (gRPC's ``ErrorInfo.reason``, domain ``custos``);
        #: ``None``: the status's default of :func:`custos.flows.status.error_code`.
        self.error_code = error_code


class InvalidArgument(RequestError):
    """A request field is missing, malformed or out of range."""

    status = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str, *, error_code: str | None = None) -> None:
        super().__init__(f"{field}: {problem}", error_code=error_code)
        self.field = field
        self.problem = problem


class ResourceExhausted(RequestError):
    """A capacity limit was hit; the caller may retry later or with a smaller request."""

    status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, reason: str, retry_after_s: float | None = None) -> None:
        hint = f" (retry after {retry_after_s:g} s)" if retry_after_s is not None else ""
        super().__init__(message + hint)
        self.reason = reason
        self.retry_after_s = retry_after_s


class NotFound(RequestError):
    """The addressed object does not exist."""

    status = "NOT_FOUND"


class FailedPrecondition(RequestError):
    """The request cannot be served as asked or in the object's current state.

    Blocked entity types, a language without a pipeline, an erased subject, a retired key.
    """

    status = "FAILED_PRECONDITION"


class Unauthenticated(RequestError):
    """Missing, malformed, expired, revoked or wrong credentials."""

    status = "UNAUTHENTICATED"


class PermissionDenied(RequestError):
    """The caller is known but lacks a permission the call (or one of its fields) needs."""

    status = "PERMISSION_DENIED"


class DeadlineExceeded(RequestError):
    """The caller's deadline passed before the work it asked for was done; nothing was returned."""

    status = "DEADLINE_EXCEEDED"


class Unavailable(RequestError):
    """The server cannot take the call now; the caller should retry (elsewhere)."""

    status = "UNAVAILABLE"


def refusal_field(error: RequestError) -> tuple[str, str]:
    """(field, problem) of a refused request for its ``invalid`` record: our text, never the caller's."""
    if isinstance(error, InvalidArgument):
        return error.field, error.problem
    return "request", error.message
