"""Audit event types and the immutable value objects that cross the package boundary.

:class:`AuditEvent` is what callers hand to the store; :class:`StoredRecord` is what the store hands back.
Neither imports SQLAlchemy or protobuf: the server converts ``StoredRecord`` to protobuf at its edge.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

__all__ = [
    "MAX_LENGTHS",
    "AuditEvent",
    "EventType",
    "Phase",
    "StoredRecord",
    "check_aware",
    "check_text",
]


class EventType(enum.StrEnum):
    """The one list of audit event types; other packages extend it here (and nowhere else).

    Adding a member needs no migration: the column is a plain string validated on append.
    """

    GENERATE = "generate"
    CLASSIFY = "classify"
    ANONYMIZE = "anonymize"
    DENIED = "denied"
    INVALID = "invalid"
    TRANSCRIPT_READ = "transcript_read"
    AUDIT_READ = "audit_read"  # query, get, verify, export: the kind goes in details
    FEEDBACK = "feedback"
    KEY_ROTATE = "key_rotate"
    KEY_REWRAP = "key_rewrap"
    ERASE_SUBJECT = "erase_subject"
    TRANSCRIPT_PURGE = "transcript_purge"
    TOKEN_CHANGE = "token_change"  # noqa: S105 - an event name, not a secret
    CONFIG_CHANGE = "config_change"
    RESTORE = "restore"
    REPLAY = "replay"  # an idempotent retry answered with a stored reply; details name the original request


class Phase(enum.StrEnum):
    """Where a record sits in a request's life.

    ``request`` is committed before any model output leaves; ``completion`` closes it (pointing at the request
    record through ``request_id``); ``event`` is a self-contained record (denial, key rotation, …).
    """

    REQUEST = "request"
    COMPLETION = "completion"
    EVENT = "event"


# Column widths, shared by validation here and by the models, so an over-long value fails with a clear
# ValueError before reaching the database (where PostgreSQL would raise and SQLite would silently accept).
MAX_LENGTHS: Mapping[str, int] = MappingProxyType(
    {
        "id": 36,
        "request_id": 36,
        "transcript_id": 36,
        "event_type": 32,
        "phase": 16,
        "status": 32,
        "actor": 512,
        "rpc": 256,
        "model": 256,
        "conversation_ref": 128,
        "subject_ref": 128,
        "purpose": 128,
        "retention_class": 64,
        "entity_types": 2048,
    }
)


def check_text(name: str, value: object, *, optional: bool) -> None:
    """Validate a text field against :data:`MAX_LENGTHS`; errors name the field, never the value."""
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str{' or None' if optional else ''}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    if len(value) > MAX_LENGTHS[name]:
        raise ValueError(f"{name} is longer than {MAX_LENGTHS[name]} characters")


def check_aware(name: str, value: object) -> None:
    """Require a timezone-aware datetime; errors name the field."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """One thing to record; the store assigns ``id`` (unless ``record_id`` is given), ``seq`` and hashes.

    Everything that is not a typed, queryable column goes into ``details`` (PII findings as types, offsets
    and scores; generation parameters; token counts; latency by stage; model digest; precision; …).
    ``details`` must be canonical-JSON serialisable and must never contain raw PII.

    ``request_id`` is the id of the request record this one belongs to: required for ``completion`` records.
    For ``request`` records and single ``event`` records it equals the record's own id: leave both it and
    ``record_id`` ``None`` for a fresh uuid4, or set either one (or both, equal) to a caller-chosen id.

    Fields are keyword-only. Construction validates types, enum values, lengths and timezone-awareness,
    raising ``TypeError``/``ValueError`` that name the field.
    """

    event_type: str
    phase: str
    request_id: str | None = None
    start_time: datetime
    end_time: datetime
    actor: str
    rpc: str
    status: str
    model: str | None = None
    conversation_ref: str | None = None
    subject_ref: str | None = None
    transcript_id: str | None = None
    details: Mapping[str, object] = field(default_factory=dict)
    record_id: str | None = None
    """Optional id for the new record, for callers that must know it before the append (e.g. to correlate a
    completion or to print it in an error); a fresh uuid4 when ``None``."""

    @classmethod
    def single(
        cls,
        event_type: str,
        *,
        actor: str,
        rpc: str,
        details: Mapping[str, object],
        started: datetime | None = None,
        status: str = "OK",
        **fields: Any,
    ) -> AuditEvent:
        """A single ``event`` record of something that ran from ``started`` (default: now) until now."""
        now = datetime.now(UTC)
        return cls(
            event_type=event_type,
            phase="event",
            start_time=started or now,
            end_time=now,
            actor=actor,
            rpc=rpc,
            status=status,
            details=details,
            **fields,
        )

    def __post_init__(self) -> None:
        try:
            event_type = EventType(self.event_type)
        except ValueError:
            raise ValueError(f"event_type must be one of: {', '.join(e.value for e in EventType)}") from None
        try:
            phase = Phase(self.phase)
        except ValueError:
            raise ValueError(f"phase must be one of: {', '.join(p.value for p in Phase)}") from None
        object.__setattr__(self, "event_type", event_type)
        object.__setattr__(self, "phase", phase)

        for name in ("actor", "rpc", "status"):
            check_text(name, getattr(self, name), optional=False)
        for name in ("request_id", "model", "conversation_ref", "subject_ref", "transcript_id"):
            check_text(name, getattr(self, name), optional=True)
        if self.record_id is not None:
            check_text("id", self.record_id, optional=False)
        check_aware("start_time", self.start_time)
        check_aware("end_time", self.end_time)
        if self.end_time < self.start_time:
            raise ValueError("end_time must not be before start_time")
        if not isinstance(self.details, Mapping):
            raise TypeError("details must be a mapping")

        if phase is Phase.COMPLETION:
            if self.request_id is None:
                raise ValueError("request_id is required for a completion record")
            if self.record_id is not None and self.request_id == self.record_id:
                raise ValueError("a completion record cannot be its own request record")
        else:
            # Request records and single events are their own request: request_id == id. Either field may
            # carry a caller-chosen id (e.g. one generated up front for error messages); both must agree.
            both = self.request_id is not None and self.record_id is not None
            if both and self.request_id != self.record_id:
                raise ValueError(f"request_id and record_id of a {phase.value} record must be equal")
            chosen = self.record_id if self.record_id is not None else self.request_id
            object.__setattr__(self, "record_id", chosen)
            object.__setattr__(self, "request_id", chosen)


@dataclass(frozen=True, kw_only=True)
class StoredRecord:
    """A committed audit record, as read back from its row.

    Typed fields come from the typed columns; ``payload`` holds the exact hashed bytes, ``payload_json`` the
    same as text and ``details`` the parsed ``details`` object of the payload (datetimes inside it come back
    as their canonical ISO strings). ``event_type`` and ``phase`` are plain strings so that rows written by a
    newer version still load. Reading never judges integrity, :meth:`AuditStore.verify` does: a tampered
    payload still loads, with undecodable bytes replaced and unparsable ``details`` empty.
    """

    seq: int
    id: str
    prev_hash: str
    row_hash: str
    schema_version: int
    event_type: str
    phase: str
    request_id: str
    start_time: datetime
    end_time: datetime
    actor: str
    rpc: str
    status: str
    model: str | None
    conversation_ref: str | None
    subject_ref: str | None
    transcript_id: str | None
    payload: bytes
    payload_json: str
    details: Mapping[str, object]
    purpose: str | None = None
    retention_class: str | None = None
    entity_types: str | None = None
