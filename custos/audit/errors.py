"""Domain errors of the audit package.

The server maps these to gRPC status codes in one interceptor. Messages are fixed texts or name a field or a
type; they never carry a payload value, so they are safe to log.
"""

from __future__ import annotations


class AuditError(Exception):
    """Base class for every error the audit package raises on purpose."""


class AuditUnavailable(AuditError):
    """The audit database cannot be reached, or stayed locked past the configured timeout.

    Fail-closed: the caller must not release model output when an append raises this (gRPC UNAVAILABLE).
    """


class AuditBusy(AuditUnavailable):
    """The audit database answered but stayed locked past the timeout: busy, not down.

    Still fail-closed for the call; health turns NOT_SERVING only if a probe then finds the database gone.
    """


class RecordNotFound(AuditError):
    """No audit record (or transcript) exists with the requested id."""


class CanonicalizationError(AuditError):
    """A value cannot be turned into canonical JSON; the message names its type, never the value."""


class ChainConflict(AuditError):
    """The chain head moved under an append although the append lock was held.

    This means another writer bypassed the lock (an older build, or a manual insert); the
    ``UNIQUE(prev_hash)`` and ``seq`` primary-key fork guards refused the row, so nothing was written.
    """


class DuplicateId(AuditError):
    """A caller-chosen record id or a transcript id is already taken; nothing was written (ALREADY_EXISTS)."""


class InvalidQuery(AuditError, ValueError):
    """A query argument is invalid (INVALID_ARGUMENT); ``field`` names it, the message says what is wrong.

    A ``ValueError`` too, so callers that catch ``ValueError`` keep working.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
