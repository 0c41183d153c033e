"""The audit store: appends to the hash chain, reads, queries, verifies; and the sealed-transcript store.

Appends are serialised twice: a process-local lock keeps this process's threads from queueing on the
database lock, and the database lock (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``pg_advisory_xact_lock``)
serialises processes and replicas. Under that lock the head is read, the next record is built from it and
inserted, all in one transaction, so the chain stays linear; ``UNIQUE(prev_hash)`` and the ``seq`` primary
key refuse a fork should anything bypass the lock.

:func:`append_in` takes a :class:`~sqlalchemy.Connection` whose transaction the caller owns, for callers
that must commit audit records together with other rows (group commit); it assumes the append lock is held
(see :func:`lock_chain`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, cast

import psycopg
from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Select,
    delete,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg
from sqlalchemy.exc import IntegrityError

from custos.audit.chain import (
    GENESIS_HASH,
    SCHEMA_VERSION,
    ChainHead,
    PayloadTemplate,
    VerifyReport,
    compute_row_hash,
    payload_template,
)
from custos.audit.db import DEFERRED_READ, translate_db_errors
from custos.audit.errors import AuditUnavailable, ChainConflict, DuplicateId, InvalidQuery, RecordNotFound
from custos.audit.events import AuditEvent, EventType, Phase, StoredRecord, check_aware, check_text
from custos.audit.group import GroupCommitter
from custos.audit.models import AuditRecordRow, TranscriptRow
from custos.audit.verify import verify_chain

__all__ = [
    "APPEND_LOCK_KEY",
    "MAX_PAGE_SIZE",
    "AuditFilter",
    "AuditStore",
    "PreparedRecord",
    "SealedTranscript",
    "TranscriptStore",
    "VerifyReport",
    "append_in",
    "lock_chain",
    "read_head",
]

log = logging.getLogger("custos.audit")

APPEND_LOCK_KEY = 0x637573746F736175  # "custosau"; the PostgreSQL advisory lock held while appending
MAX_PAGE_SIZE = 1000
_APPEND_ATTEMPTS = 3
_VERIFY_BATCH = 1000
_VERIFY_FETCH = 5000
_PAGE_TOKEN_PREFIX = "s"  # noqa: S105 - a format marker, not a secret

_RECORD_COLUMNS = tuple(AuditRecordRow.__table__.columns)
_ENTITY_TYPE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_EVENT_TYPE_VALUES = frozenset(e.value for e in EventType)
_PHASE_VALUES = frozenset(p.value for p in Phase)
# Filters that are not "column equals value".
_RANGE_FILTERS = frozenset({"since", "until", "entity_type"})
_HEX_REF = re.compile(r"[0-9a-f]{16,128}")
_RECORD_ID = re.compile(r"[0-9A-Fa-f-]{1,36}")


def safe_record_id(value: str) -> str:
    """``value`` if it looks like a record id we issue, else a fixed marker (it could be anything)."""
    return value if _RECORD_ID.fullmatch(value) else "(not a record id)"


@dataclass(frozen=True, kw_only=True)
class AuditFilter:
    """Which records a query, scan, count or export reads; every field optional, all given ones must match.

    The one filter type from the API (and the CLI) to the store. ``since`` is inclusive and ``until``
    exclusive, on ``start_time``; ``entity_type`` matches records whose PII findings include that type;
    references are blind indexes as stored. Values are checked when the store runs the filter
    (:class:`InvalidQuery` names the field).
    """

    since: datetime | None = None
    until: datetime | None = None
    event_type: str | None = None
    actor: str | None = None
    status: str | None = None
    model: str | None = None
    entity_type: str | None = None
    conversation_ref: str | None = None
    subject_ref: str | None = None
    request_id: str | None = None
    phase: str | None = None
    purpose: str | None = None
    transcript_id: str | None = None
    retention_class: str | None = None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The filter fields, in declaration order."""
        return tuple(f.name for f in fields(cls))

    def given(self) -> dict[str, Any]:
        """The fields that are set, by name."""
        return {name: value for name in self.names() if (value := getattr(self, name)) is not None}

    def to_json(self) -> dict[str, Any]:
        """The set fields as plain JSON (times in ISO 8601)."""
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in self.given().items()}

    def for_audit(self) -> dict[str, Any]:
        """The set fields as plain JSON for an ``audit_read`` record.

        References and ids are kept only when they have the shape we issue (hex blind indexes, uuids): a raw
        identifier typed in by mistake must not land in the trail.
        """
        out = self.to_json()
        for key in ("conversation_ref", "subject_ref"):
            if key in out and not _HEX_REF.fullmatch(out[key]):
                out[key] = "(not a reference)"
        if "request_id" in out:
            out["request_id"] = safe_record_id(out["request_id"])
        return out


def _where(where: AuditFilter | None, given: Mapping[str, Any]) -> AuditFilter:
    """``where`` with the fields given by keyword on top (the keyword form is for scripts and tests)."""
    if where is None:
        return AuditFilter(**given)
    return replace(where, **given) if given else where


@dataclass(frozen=True, kw_only=True)
class SealedTranscript:
    """An encrypted transcript as stored; the caller encrypts it (bound to its id) and decrypts it."""

    id: str
    created_at: datetime
    conversation_ref: str | None
    subject_ref: str | None
    key_version: int
    format_version: int
    ciphertext: bytes

    def __post_init__(self) -> None:
        check_text("id", self.id, optional=False)
        check_text("conversation_ref", self.conversation_ref, optional=True)
        check_text("subject_ref", self.subject_ref, optional=True)
        check_aware("created_at", self.created_at)
        for name in ("key_version", "format_version"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int")
        if not isinstance(self.ciphertext, bytes):
            raise TypeError("ciphertext must be bytes")


def _record_from_row(row: Row[Any]) -> StoredRecord:
    # Reading must still work on a tampered row, so that an investigator can look at it: undecodable bytes
    # are replaced and unparsable details read as empty. verify() is what judges integrity, never this.
    payload = bytes(row.payload)
    payload_json = payload.decode("utf-8", errors="replace")
    try:
        body = json.loads(payload_json)
    except ValueError:
        body = None
    details = body.get("details") if isinstance(body, dict) else None
    return StoredRecord(
        seq=row.seq,
        id=row.id,
        prev_hash=row.prev_hash,
        row_hash=row.row_hash,
        schema_version=row.schema_version,
        event_type=row.event_type,
        phase=row.phase,
        request_id=row.request_id,
        start_time=row.start_time,
        end_time=row.end_time,
        actor=row.actor,
        rpc=row.rpc,
        status=row.status,
        model=row.model,
        conversation_ref=row.conversation_ref,
        subject_ref=row.subject_ref,
        transcript_id=row.transcript_id,
        payload=payload,
        payload_json=payload_json,
        details=MappingProxyType(details if isinstance(details, dict) else {}),
        purpose=row.purpose,
        retention_class=row.retention_class,
        entity_types=row.entity_types,
    )


def _transcript_from_row(row: Row[Any]) -> SealedTranscript:
    return SealedTranscript(
        id=row.id,
        created_at=row.created_at,
        conversation_ref=row.conversation_ref,
        subject_ref=row.subject_ref,
        key_version=row.key_version,
        format_version=row.format_version,
        ciphertext=bytes(row.ciphertext),
    )


def _encode_page_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_PAGE_TOKEN_PREFIX}{seq}".encode()).decode("ascii").rstrip("=")


_MALFORMED_PAGE = "page_token is malformed; pass back a token returned by a previous query"


def _decode_page_token(token: str) -> int:
    """Return the seq a page token continues below; InvalidQuery when it was not made by :meth:`query`."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        if not raw.startswith(_PAGE_TOKEN_PREFIX) or not raw[1:].isdigit():
            raise ValueError
        seq = int(raw[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidQuery("page_token", _MALFORMED_PAGE) from None
    if seq < 1:
        raise InvalidQuery("page_token", _MALFORMED_PAGE)
    return seq


def _require_aware(name: str, value: datetime | None) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise InvalidQuery(name, f"{name} must be timezone-aware")


def _filtered(stmt: Select[Any], where: AuditFilter) -> Select[Any]:
    """Add the filter to ``stmt``; :class:`InvalidQuery` names a bad field."""
    _require_aware("since", where.since)
    _require_aware("until", where.until)
    if where.event_type is not None and where.event_type not in _EVENT_TYPE_VALUES:
        raise InvalidQuery("event_type", "event_type is not a known audit event type")
    if where.phase is not None and where.phase not in _PHASE_VALUES:
        raise InvalidQuery("phase", "phase must be one of: request, completion, event")
    if where.entity_type is not None and not _ENTITY_TYPE.fullmatch(where.entity_type):
        raise InvalidQuery("entity_type", "entity_type must be upper-case letters, digits and _")
    if where.since is not None:
        stmt = stmt.where(AuditRecordRow.start_time >= where.since)
    if where.until is not None:
        stmt = stmt.where(AuditRecordRow.start_time < where.until)
    if where.entity_type is not None:
        stmt = stmt.where(AuditRecordRow.entity_types.like(f"%,{where.entity_type},%"))
    for name, value in where.given().items():
        if name not in _RANGE_FILTERS:
            stmt = stmt.where(getattr(AuditRecordRow, name) == value)
    return stmt


def lock_chain(conn: Connection) -> None:
    """Take the cross-process append lock for the rest of ``conn``'s transaction.

    On PostgreSQL this is ``pg_advisory_xact_lock`` (released at commit or rollback; bounded by the engine's
    ``lock_timeout``). On SQLite the engine's ``BEGIN IMMEDIATE`` already holds the write lock, so nothing is
    emitted.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK_KEY})


def read_head(conn: Connection) -> ChainHead:
    """Return the last record's position and hash (seq 0 and the genesis hash for an empty chain)."""
    row = conn.execute(
        select(AuditRecordRow.seq, AuditRecordRow.row_hash).order_by(AuditRecordRow.seq.desc()).limit(1)
    ).first()
    return _head_of(row)


def _head_of(row: Sequence[Any] | None) -> ChainHead:
    """The head given the last record's ``(seq, row_hash)`` (``None``: the chain is empty)."""
    return ChainHead(0, GENESIS_HASH) if row is None else ChainHead(row[0], row[1])


def _existing(conn: Connection, column: Any, values: Sequence[str]) -> bool:
    """Whether any of ``values`` is already in ``column`` (one statement for a whole group)."""
    if not values:
        return False
    return conn.execute(select(column).where(column.in_(values)).limit(1)).first() is not None


@dataclass(frozen=True)
class PreparedRecord:
    """An event ready to append: ids chosen and payload built, all but its chain position (no lock needed)."""

    event: AuditEvent
    record_id: str
    request_id: str
    chosen_id: bool
    template: PayloadTemplate

    @classmethod
    def of(cls, event: AuditEvent) -> PreparedRecord:
        """Prepare ``event``; :class:`~custos.audit.errors.CanonicalizationError` for bad ``details``."""
        record_id = event.record_id if event.record_id is not None else str(uuid.uuid4())
        request_id = event.request_id if event.request_id is not None else record_id
        template = payload_template(event, record_id=record_id, request_id=request_id)
        return cls(event, record_id, request_id, event.record_id is not None, template)


def append_in(conn: Connection, events: Sequence[AuditEvent | PreparedRecord]) -> list[StoredRecord]:
    """Append ``events`` in order inside the caller's transaction, which must hold :func:`lock_chain`.

    Nothing is durable until the caller commits. Raises :class:`DuplicateId` for a caller-chosen record id
    that already exists, :class:`~custos.audit.errors.CanonicalizationError` for unserialisable ``details``.
    Events prepared beforehand (:class:`PreparedRecord`) leave only the chain position, the hash and the
    insert for the time the lock is held.
    """
    prepared = [e if isinstance(e, PreparedRecord) else PreparedRecord.of(e) for e in events]
    if _existing(conn, AuditRecordRow.id, [p.record_id for p in prepared if p.chosen_id]):
        raise DuplicateId("audit record id already exists")
    rows, stored = _chain_rows(prepared, read_head(conn))
    if rows:
        conn.execute(insert(AuditRecordRow), rows)  # one executemany for a whole group
    return stored


def _chain_rows(
    prepared: Sequence[PreparedRecord], head: ChainHead
) -> tuple[list[dict[str, Any]], list[StoredRecord]]:
    """Column values (in table order) and records of ``prepared`` appended after ``head``."""
    seq, prev_hash = head.seq, head.row_hash
    stored: list[StoredRecord] = []
    rows: list[dict[str, Any]] = []
    for item in prepared:
        event = item.event
        seq += 1
        payload = item.template.payload(seq)
        row_hash = compute_row_hash(prev_hash, payload)
        values: dict[str, Any] = {
            "seq": seq,
            "id": item.record_id,
            "prev_hash": prev_hash,
            "row_hash": row_hash,
            "schema_version": SCHEMA_VERSION,
            "event_type": str(event.event_type),
            "phase": str(event.phase),
            "request_id": item.request_id,
            "start_time": event.start_time.astimezone(UTC),
            "end_time": event.end_time.astimezone(UTC),
            "actor": event.actor,
            "rpc": event.rpc,
            "status": event.status,
            "model": event.model,
            "conversation_ref": event.conversation_ref,
            "subject_ref": event.subject_ref,
            "transcript_id": event.transcript_id,
            "payload": payload,
            **item.template.derived,
        }
        rows.append(values)
        stored.append(
            StoredRecord(
                **values,
                payload_json=payload.decode("utf-8"),
                details=MappingProxyType(item.template.details),
            )
        )
        prev_hash = row_hash
    return rows, stored


def _transcript_values(transcript: SealedTranscript) -> dict[str, Any]:
    return {
        "id": transcript.id,
        "created_at": transcript.created_at,
        "conversation_ref": transcript.conversation_ref,
        "subject_ref": transcript.subject_ref,
        "key_version": transcript.key_version,
        "format_version": transcript.format_version,
        "ciphertext": transcript.ciphertext,
    }


# INSERT statements as SQLAlchemy compiles them for psycopg (``%(name)s`` parameters), run on the raw
# connection by the pipelined append.
_PG_DIALECT = postgresql_psycopg.dialect()
_PG_INSERT_RECORD = str(insert(AuditRecordRow).compile(dialect=_PG_DIALECT))
_PG_INSERT_TRANSCRIPT = str(insert(TranscriptRow).compile(dialect=_PG_DIALECT))


def _append_postgres(
    raw: psycopg.Connection[Any],
    prepared: Sequence[PreparedRecord],
    transcripts: Sequence[SealedTranscript],
) -> list[StoredRecord]:
    """One append transaction on PostgreSQL in two round trips, using psycopg's pipeline mode.

    First the append lock, the duplicate-id checks and the head (each statement runs after the one before,
    so the head is read under the lock); then the inserts and the commit. Raises :class:`DuplicateId`; a
    ``psycopg.IntegrityError`` means the fork guard fired; the transaction is rolled back on any error.
    """
    chosen = [p.record_id for p in prepared if p.chosen_id]
    try:
        with raw.pipeline() as pipeline:
            raw.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK_KEY,))
            ids = raw.execute("SELECT 1 FROM audit_records WHERE id = ANY(%s) LIMIT 1", (chosen,))
            taken = raw.execute(
                "SELECT 1 FROM transcripts WHERE id = ANY(%s) LIMIT 1", ([t.id for t in transcripts],)
            )
            head_cursor = raw.execute("SELECT seq, row_hash FROM audit_records ORDER BY seq DESC LIMIT 1")
            pipeline.sync()
            if ids.fetchone() is not None:
                raise DuplicateId("audit record id already exists")
            if taken.fetchone() is not None:
                raise DuplicateId("transcript id already exists")
            rows, stored = _chain_rows(prepared, _head_of(head_cursor.fetchone()))
            cursor = raw.cursor()
            if transcripts:
                cursor.executemany(_PG_INSERT_TRANSCRIPT, [_transcript_values(t) for t in transcripts])
            cursor.executemany(_PG_INSERT_RECORD, rows)
            raw.commit()
    except BaseException:
        raw.rollback()
        raise
    return stored


def _insert_transcripts(conn: Connection, transcripts: Sequence[SealedTranscript]) -> None:
    conn.execute(insert(TranscriptRow), [_transcript_values(t) for t in transcripts])


class _ReadTransaction:
    """Context manager: a read-only transaction, rolled back and closed on exit (reads never commit).

    It begins with a deferred ``BEGIN`` on SQLite so reads neither take nor wait for the write lock (WAL gives
    them a snapshot). Enter it inside :func:`translate_db_errors`: connecting may fail.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None

    def __enter__(self) -> Connection:
        conn = self._engine.connect()
        self._conn = conn
        try:
            conn.execution_options(**{DEFERRED_READ: True})
            conn.begin()
        except BaseException:
            conn.close()
            raise
        return conn

    def __exit__(self, *exc_info: object) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.rollback()
        finally:
            conn.close()


class AuditStore:
    """Thread-safe access to the audit chain; every method is one short transaction on ``engine``.

    Methods raise :class:`~custos.audit.errors.AuditUnavailable` when the database cannot be reached or its
    lock is not obtained within the engine's lock timeout. ``ValueError``/``TypeError`` mean a bad argument.
    """

    def __init__(self, engine: Engine, *, group_commit: bool = True, max_group: int = 256) -> None:
        """Use ``engine``; with ``group_commit``, concurrent appends share transactions (:mod:`.group`)."""
        self._engine = engine
        self._append_lock = threading.Lock()
        self._group = GroupCommitter(self._commit_group, max_group=max_group) if group_commit else None
        self._listeners: list[Callable[[int], None]] = []

    @property
    def engine(self) -> Engine:
        """The engine this store writes to (for the transcript store and health checks)."""
        return self._engine

    @property
    def transactions(self) -> int | None:
        """Append transactions committed by this store's group committer (``None`` without group commit)."""
        return None if self._group is None else self._group.transactions

    def add_commit_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(number_of_records)`` after each caller's committed append (checkpoints).

        It runs in the appending caller's thread once its own records are durable, outside the group
        commit and the append lock.
        """
        self._listeners.append(listener)

    def append(self, event: AuditEvent) -> StoredRecord:
        """Append one record; when this returns, the record is committed (fail-closed callers rely on it)."""
        return self.append_many([event])[0]

    def append_with(self, event: AuditEvent, *, transcript: SealedTranscript | None = None) -> StoredRecord:
        """Append ``event`` and insert ``transcript`` in the same transaction: both commit or neither does.

        ``event.transcript_id`` must equal ``transcript.id``. Raises :class:`DuplicateId` if the transcript id
        is taken.
        """
        if transcript is None:
            return self.append(event)
        if event.transcript_id != transcript.id:
            raise ValueError("event.transcript_id must equal transcript.id")
        return self.append_many([event], transcripts=[transcript])[0]

    def append_many(
        self, events: Sequence[AuditEvent], *, transcripts: Sequence[SealedTranscript] = ()
    ) -> list[StoredRecord]:
        """Append several records (and transcripts) in one transaction, in order.

        Either all are committed when this returns or none is. Concurrent callers may share the transaction
        (group commit); each still gets exactly its own records, in its own order.
        """
        if not events:
            return []
        for event in events:
            if not isinstance(event, AuditEvent):
                raise TypeError("events must be AuditEvent instances")
        chosen = [e.record_id for e in events if e.record_id is not None]
        if len(chosen) != len(set(chosen)):
            raise ValueError("record ids within one append must be distinct")
        transcript_ids = [t.id for t in transcripts]
        if len(transcript_ids) != len(set(transcript_ids)):
            raise ValueError("transcript ids within one append must be distinct")
        # Payloads are built here, in the caller's thread and before any lock (bad details fail here too):
        # under the lock only chain positions, hashes and the insert remain.
        prepared = [PreparedRecord.of(event) for event in events]
        if self._group is not None:
            stored = self._group.submit(prepared, transcripts)
        else:
            stored = self._commit_group([(prepared, transcripts)])[0]
        self._notify(len(stored))
        return stored

    def _notify(self, count: int) -> None:
        """Tell the listeners about ``count`` committed records, in the caller's thread.

        Never inside the group commit: a listener's work (a checkpoint's fsync) would otherwise hold up
        every caller of the group and the next transaction.
        """
        for listener in self._listeners:
            # Committed is committed: a failing listener (e.g. a full disk for checkpoints) is logged, never
            # turned into an append error that would make a caller retry a record that already exists.
            try:
                listener(count)
            except Exception as exc:
                fields = {"error": type(exc).__name__}
                log.error("audit commit listener failed", extra={"fields": fields})

    def _commit_group(
        self, callers: Sequence[tuple[Sequence[PreparedRecord], Sequence[SealedTranscript]]]
    ) -> list[list[StoredRecord]]:
        """Commit every caller's events and transcripts in one transaction; return each caller's records."""
        events = [e for caller_events, _ in callers for e in caller_events]
        transcripts = [t for _, caller_transcripts in callers for t in caller_transcripts]
        chosen = [e.record_id for e in events if e.chosen_id]
        if len(chosen) != len(set(chosen)):
            raise DuplicateId("audit record id already exists")
        if len({t.id for t in transcripts}) != len(transcripts):
            raise DuplicateId("transcript id already exists")
        for attempt in range(_APPEND_ATTEMPTS):
            try:
                if self._engine.dialect.name == "postgresql":
                    stored = self._commit_postgres(events, transcripts)
                    break
                with self._append_lock, translate_db_errors(), self._engine.begin() as conn:
                    lock_chain(conn)
                    if transcripts:
                        if _existing(conn, TranscriptRow.id, [t.id for t in transcripts]):
                            raise DuplicateId("transcript id already exists")
                        _insert_transcripts(conn, transcripts)
                    stored = append_in(conn, events)
                break
            except (IntegrityError, psycopg.IntegrityError) as err:
                # Ids were checked under the lock, so this is the fork guard: someone appended without the
                # lock. Re-read the head and try again; persistently failing means a misbehaving writer.
                if attempt == _APPEND_ATTEMPTS - 1:
                    raise ChainConflict(
                        "the chain head moved during append; another writer bypasses the lock"
                    ) from err
        out: list[list[StoredRecord]] = []
        offset = 0
        for caller_events, _ in callers:
            out.append(stored[offset : offset + len(caller_events)])
            offset += len(caller_events)
        return out

    def _commit_postgres(
        self, events: Sequence[PreparedRecord], transcripts: Sequence[SealedTranscript]
    ) -> list[StoredRecord]:
        with self._append_lock, translate_db_errors(), self._engine.connect() as conn:
            raw = cast("psycopg.Connection[Any]", conn.connection.driver_connection)
            try:
                return _append_postgres(raw, events, transcripts)
            except (psycopg.OperationalError, psycopg.InterfaceError) as err:
                if raw.closed or raw.broken:
                    conn.invalidate(err)
                raise AuditUnavailable("audit database unavailable") from err

    def head(self) -> ChainHead:
        """Return the current head (for signed checkpoints and health checks)."""
        with translate_db_errors(), self._read() as conn:
            return read_head(conn)

    def get(self, record_id: str) -> StoredRecord:
        """Return the record with ``record_id``; :class:`RecordNotFound` if there is none."""
        with translate_db_errors(), self._read() as conn:
            row = conn.execute(select(*_RECORD_COLUMNS).where(AuditRecordRow.id == record_id)).first()
        if row is None:
            raise RecordNotFound("audit record not found")
        return _record_from_row(row)

    def query(
        self,
        where: AuditFilter | None = None,
        /,
        *,
        page_size: int = 50,
        page_token: str | None = None,
        **given: Any,
    ) -> tuple[list[StoredRecord], str | None]:
        """Return one page of records matching ``where`` (and filter fields given by keyword), newest first.

        The second element is the token for the next page, ``None`` on the last one. Pagination is by
        ``seq``, so records appended meanwhile never shift pages. Raises :class:`InvalidQuery` (a
        ``ValueError`` naming the argument in ``field``) for a malformed token, an unknown event type or
        phase, a naive datetime or a page size outside 1..:data:`MAX_PAGE_SIZE`.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidQuery("page_size", f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        stmt = _filtered(select(*_RECORD_COLUMNS), _where(where, given))
        if page_token is not None:
            stmt = stmt.where(AuditRecordRow.seq < _decode_page_token(page_token))
        stmt = stmt.order_by(AuditRecordRow.seq.desc()).limit(page_size + 1)
        with translate_db_errors(), self._read() as conn:
            rows = conn.execute(stmt).all()
        records = [_record_from_row(row) for row in rows[:page_size]]
        next_token = _encode_page_token(records[-1].seq) if len(rows) > page_size else None
        return records, next_token

    def scan(self, where: AuditFilter | None = None, /, **given: Any) -> Iterator[StoredRecord]:
        """Yield every record matching the filter (as for :meth:`query`), oldest first, streaming.

        One read transaction (a consistent snapshot) for the whole scan; close the iterator to end it early.
        """
        stmt = _filtered(select(*_RECORD_COLUMNS), _where(where, given)).order_by(AuditRecordRow.seq)
        with translate_db_errors(), self._read() as conn:
            result = conn.execution_options(yield_per=_VERIFY_BATCH).execute(stmt)
            try:
                for row in result:
                    yield _record_from_row(row)
            finally:
                result.close()

    def count(self, where: AuditFilter | None = None, /, **given: Any) -> int:
        """Number of records matching the filter (as for :meth:`query`)."""
        stmt = _filtered(select(func.count()).select_from(AuditRecordRow), _where(where, given))
        with translate_db_errors(), self._read() as conn:
            return int(conn.execute(stmt).scalar_one())

    def first_seq(self) -> int | None:
        """The lowest seq still in the live log (above 1 after archiving), ``None`` when empty."""
        with translate_db_errors(), self._read() as conn:
            value = conn.execute(select(func.min(AuditRecordRow.seq))).scalar_one()
        return None if value is None else int(value)

    def verify(
        self,
        *,
        checkpoint: ChainHead | None = None,
        checkpoints: Sequence[ChainHead] = (),
        start: ChainHead | None = None,
        progress: Callable[[int], None] | None = None,
        workers: int | None = None,
    ) -> VerifyReport:
        """Re-verify the whole chain from genesis (or from ``start``), streaming rows in ``seq`` order.

        Re-hashes each stored payload, checks the links, seq continuity and that typed columns agree with the
        payload; stops at the first bad record and names it. Every head in ``checkpoint``/``checkpoints``
        (from signed checkpoints) must be in the chain with its hash, so truncation and rollback fail too.
        ``start`` is the closing checkpoint of archived records: the live log must continue right after it.
        ``progress`` is called with the number of rows checked so far, every few thousand rows. Long chains
        are checked in ``workers`` processes by seq range (see :mod:`custos.audit.verify`).
        """
        heads = [*checkpoints, *([checkpoint] if checkpoint is not None else [])]
        return verify_chain(
            self._engine, checkpoints=heads, start=start, workers=workers, progress=progress
        ).report

    def delete_through(self, seq: int, *, expected_hash: str) -> int:
        """Remove records ``1..seq`` (archiving), after checking record ``seq`` still has ``expected_hash``.

        Run by the maintenance role after the records were exported with a closing checkpoint. On
        PostgreSQL the append lock is held and the ``custos.maintenance`` setting is set for the
        transaction, which the immutability trigger (see :mod:`custos.audit.hardening`) lets through.
        """
        with self._append_lock, translate_db_errors(), self._engine.begin() as conn:
            lock_chain(conn)
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT set_config('custos.maintenance', 'archive', true)"))
            found = conn.execute(
                select(AuditRecordRow.row_hash).where(AuditRecordRow.seq == seq)
            ).scalar_one_or_none()
            if found != expected_hash:
                raise InvalidQuery("seq", "the record to archive through is not the one checkpointed")
            deleted = conn.execute(delete(AuditRecordRow).where(AuditRecordRow.seq <= seq)).rowcount
        return int(deleted)

    def _read(self) -> _ReadTransaction:
        return _ReadTransaction(self._engine)


class TranscriptStore:
    """Sealed transcripts: stores and returns ciphertext by id; encryption is the caller's job."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def put(
        self,
        *,
        transcript_id: str,
        conversation_ref: str | None,
        subject_ref: str | None,
        key_version: int,
        format_version: int,
        ciphertext: bytes,
        created_at: datetime | None = None,
    ) -> None:
        """Insert a transcript (``created_at`` defaults to now); :class:`DuplicateId` if the id exists.

        To commit a transcript atomically with its completion record use :meth:`AuditStore.append_with`.
        """
        transcript = SealedTranscript(
            id=transcript_id,
            created_at=created_at if created_at is not None else datetime.now(UTC),
            conversation_ref=conversation_ref,
            subject_ref=subject_ref,
            key_version=key_version,
            format_version=format_version,
            ciphertext=ciphertext,
        )
        try:
            with translate_db_errors(), self._engine.begin() as conn:
                _insert_transcripts(conn, [transcript])
        except IntegrityError as err:
            raise DuplicateId("transcript id already exists") from err

    def get(self, transcript_id: str) -> SealedTranscript:
        """Return the sealed transcript; :class:`RecordNotFound` if absent (never stored, or purged)."""
        columns = tuple(TranscriptRow.__table__.columns)
        with translate_db_errors(), _ReadTransaction(self._engine) as conn:
            row = conn.execute(select(*columns).where(TranscriptRow.id == transcript_id)).first()
        if row is None:
            raise RecordNotFound("transcript not found")
        return _transcript_from_row(row)

    def delete(self, transcript_id: str) -> bool:
        """Delete a transcript (purge); return whether it existed. The audit chain is unaffected."""
        with translate_db_errors(), self._engine.begin() as conn:
            deleted = conn.execute(delete(TranscriptRow).where(TranscriptRow.id == transcript_id)).rowcount
        return bool(deleted)
