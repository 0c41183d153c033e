"""Exports of the audit log: verifiable JSON lines, or CSV for spreadsheets; and offline verification.

A JSONL export is self-contained evidence. Line by line:

1. ``{"type": "header", ...}``: format version, the Ed25519 public key of the checkpoints, the filters, and
   where the exported stretch of the chain starts (``start``: the seq and hash before its first row);
2. for every row of the live log in that stretch, in ``seq`` order: a ``record`` line (the row's hashes and
   its exact payload) when the row matches the filters, else a ``link`` line (only seq and the two hashes),
   so the chain can be followed end to end without disclosing records outside the filter;
3. ``{"type": "checkpoint", ...}`` lines: the signed checkpoints inside the stretch;
4. ``{"type": "end", ...}``: the number of rows and the head.

:func:`verify_export` re-hashes every record's payload, follows every link, checks each checkpoint's signature
and that the chain passes through it, and names the first bad seq. It needs nothing but the file (and,
to trust the key, its fingerprint from the operator).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from custos.audit.canonical import format_timestamp
from custos.audit.chain import GENESIS_HASH, ChainHead, compute_row_hash
from custos.audit.checkpoints import Checkpoint, CheckpointError, public_key_from_hex
from custos.audit.db import translate_db_errors
from custos.audit.events import StoredRecord
from custos.audit.models import AuditRecordRow

__all__ = [
    "CSV_COLUMNS",
    "EXPORT_FORMAT",
    "FORMATS",
    "ExportReport",
    "export_csv",
    "export_digest",
    "export_jsonl",
    "record_json",
    "verify_export",
]

EXPORT_FORMAT = "custos-audit-export/1"
FORMATS = ("jsonl", "csv")
CSV_COLUMNS = (
    "seq",
    "id",
    "event_type",
    "phase",
    "request_id",
    "start_time",
    "end_time",
    "actor",
    "rpc",
    "status",
    "model",
    "purpose",
    "retention_class",
    "entity_types",
    "conversation_ref",
    "subject_ref",
    "transcript_id",
    "prev_hash",
    "row_hash",
)
_BATCH = 1000


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def record_json(record: StoredRecord) -> dict[str, Any]:
    """The JSON form of a record used by exports and ``--format json``: typed fields plus the payload."""
    out: dict[str, Any] = {}
    for name in CSV_COLUMNS:
        value = getattr(record, name)
        out[name] = format_timestamp(value) if isinstance(value, datetime) else value
    out["payload"] = record.payload_json
    return out


def export_csv(records: Iterable[StoredRecord]) -> Iterator[bytes]:
    """CSV with a header row and one row per record (no payload; for reading, not for verification)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue().encode()
    for record in records:
        buffer.seek(0)
        buffer.truncate()
        row = record_json(record)
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
        yield buffer.getvalue().encode()


def export_jsonl(
    store: Any,
    *,
    checkpoints: Sequence[Checkpoint],
    public_key_hex: str | None,
    filters: dict[str, Any] | None = None,
    through_seq: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """Yield the lines of a verifiable export of the live log (see the module docstring).

    ``store`` is an :class:`~custos.audit.store.AuditStore`. ``through_seq`` ends the stretch early
    (archiving); otherwise it ends at the head read when the export starts.
    """
    filters = {k: v for k, v in (filters or {}).items() if v is not None}
    head = store.head()
    last = head.seq if through_seq is None else min(through_seq, head.seq)
    first = store.first_seq() or 1
    start_hash = GENESIS_HASH
    links = _links(store, first, last)
    first_link = next(links, None)
    if first_link is not None:
        start_hash = first_link[1]
    inside = [c for c in checkpoints if first - 1 <= c.seq <= last]
    yield _line(
        {
            "type": "header",
            "format": EXPORT_FORMAT,
            "created": format_timestamp(datetime.now(UTC)),
            "public_key": public_key_hex,
            "filters": {k: format_timestamp(v) if isinstance(v, datetime) else v for k, v in filters.items()},
            "start": {"seq": first - 1, "row_hash": start_hash},
        }
    )
    matching = store.scan(**filters)
    pending = next(matching, None)
    count = 0
    head_hash = start_hash
    try:
        chain = [first_link] if first_link is not None else []
        for seq, prev_hash, row_hash in _chain(chain, links):
            while pending is not None and pending.seq < seq:
                pending = next(matching, None)
            if pending is not None and pending.seq == seq:
                yield _line({"type": "record", **record_json(pending)})
            else:
                yield _line({"type": "link", "seq": seq, "prev_hash": prev_hash, "row_hash": row_hash})
            count += 1
            head_hash = row_hash
            if progress is not None and count % _BATCH == 0:
                progress(count)
    finally:
        matching.close()
    for checkpoint in inside:
        yield _line({"type": "checkpoint", **checkpoint.to_json()})
    yield _line({"type": "end", "rows": count, "head": {"seq": first - 1 + count, "row_hash": head_hash}})
    if progress is not None:
        progress(count)


def _chain(
    first: list[tuple[int, str, str]], rest: Iterator[tuple[int, str, str]]
) -> Iterator[tuple[int, str, str]]:
    yield from first
    yield from rest


def _links(store: Any, first: int, last: int) -> Iterator[tuple[int, str, str]]:
    stmt = (
        select(AuditRecordRow.seq, AuditRecordRow.prev_hash, AuditRecordRow.row_hash)
        .where(AuditRecordRow.seq >= first, AuditRecordRow.seq <= last)
        .order_by(AuditRecordRow.seq)
    )
    with translate_db_errors(), store._read() as conn:
        result = conn.execution_options(yield_per=_BATCH).execute(stmt)
        try:
            for row in result:
                yield int(row.seq), str(row.prev_hash), str(row.row_hash)
        finally:
            result.close()


@dataclass(frozen=True)
class ExportReport:
    """Outcome of :func:`verify_export`."""

    ok: bool
    rows: int
    records: int
    checkpoints: int
    first_bad_seq: int | None
    reason: str
    public_key: str | None
    head: ChainHead | None


def verify_export(
    lines: Iterable[bytes | str],
    *,
    expected_public_key: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportReport:
    """Check a JSONL export offline; stops at the first problem and names its seq (or the line).

    With ``expected_public_key`` (hex, from the operator), an export signed by another key fails.
    """
    state = _ExportVerifier(expected_public_key)
    for number, raw in enumerate(lines, start=1):
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        try:
            item = json.loads(text)
        except ValueError:
            return state.fail(None, f"line {number} is not JSON")
        if not isinstance(item, dict):
            return state.fail(None, f"line {number} is not a JSON object")
        if not state.feed(number, item):
            return state.report()
        if progress is not None and state.rows % _BATCH == 0 and item.get("type") in ("record", "link"):
            progress(state.rows)
    return state.finish()


class _ExportVerifier:
    def __init__(self, expected_public_key: str | None) -> None:
        self.expected = expected_public_key
        self.public_key: str | None = None
        self.header = False
        self.ended = False
        self.head: ChainHead | None = None
        self.hashes: dict[int, str] = {}
        self.rows = 0
        self.records = 0
        self.checkpoints = 0
        self.first_bad_seq: int | None = None
        self.reason = ""
        self.failed = False

    def fail(self, seq: int | None, reason: str) -> ExportReport:
        self.failed, self.first_bad_seq, self.reason = True, seq, reason
        return self.report()

    def report(self) -> ExportReport:
        return ExportReport(
            ok=not self.failed,
            rows=self.rows,
            records=self.records,
            checkpoints=self.checkpoints,
            first_bad_seq=self.first_bad_seq,
            reason=self.reason,
            public_key=self.public_key,
            head=self.head,
        )

    def feed(self, number: int, item: dict[str, Any]) -> bool:
        kind = item.get("type")
        if not self.header:
            if kind != "header" or item.get("format") != EXPORT_FORMAT:
                self.fail(None, "line 1 is not a custos audit export header")
                return False
            self.header = True
            self.public_key = item.get("public_key")
            if self.expected is not None and self.public_key != self.expected:
                self.fail(None, "the export is signed with a different public key than expected")
                return False
            start = item.get("start") or {}
            self.head = ChainHead(int(start.get("seq", 0)), str(start.get("row_hash", GENESIS_HASH)))
            self.hashes[self.head.seq] = self.head.row_hash
            return True
        if self.ended:
            self.fail(None, f"line {number} follows the end line")
            return False
        assert self.head is not None
        if kind in ("record", "link"):
            return self._row(item, kind)
        if kind == "checkpoint":
            return self._checkpoint(item)
        if kind == "end":
            self.ended = True
            end = item.get("head") or {}
            if item.get("rows") != self.rows or end.get("seq") != self.head.seq:
                self.fail(self.head.seq + 1, "rows missing at the end (truncated export)")
                return False
            if end.get("row_hash") != self.head.row_hash:
                self.fail(self.head.seq, "head hash differs from the end line")
                return False
            return True
        self.fail(None, f"line {number} has an unknown type")
        return False

    def _row(self, item: dict[str, Any], kind: str) -> bool:
        assert self.head is not None
        seq = item.get("seq")
        expected = self.head.seq + 1
        if seq != expected:
            self.fail(expected, "gap" if isinstance(seq, int) and seq > expected else "unexpected seq")
            return False
        prev_hash, row_hash = item.get("prev_hash"), item.get("row_hash")
        if prev_hash != self.head.row_hash:
            self.fail(seq, "broken link")
            return False
        if kind == "record":
            payload = str(item.get("payload", "")).encode("utf-8")
            if compute_row_hash(str(prev_hash), payload) != row_hash:
                self.fail(seq, "row_hash mismatch")
                return False
            try:
                body = json.loads(payload)
            except ValueError:
                self.fail(seq, "payload is not valid JSON")
                return False
            if not isinstance(body, dict) or body.get("seq") != seq or body.get("id") != item.get("id"):
                self.fail(seq, "record fields disagree with payload")
                return False
            self.records += 1
        elif not isinstance(row_hash, str) or len(row_hash) != 64:
            self.fail(seq, "link has no row_hash")
            return False
        self.rows += 1
        self.head = ChainHead(int(seq), str(row_hash))
        self.hashes[int(seq)] = str(row_hash)
        return True

    def _checkpoint(self, item: dict[str, Any]) -> bool:
        try:
            checkpoint = Checkpoint.from_json({k: v for k, v in item.items() if k != "type"})
        except CheckpointError:
            self.fail(None, "a checkpoint line is malformed")
            return False
        if self.public_key is None:
            self.fail(checkpoint.seq, "checkpoints present but no public key in the header")
            return False
        try:
            key = public_key_from_hex(self.public_key)
        except CheckpointError:
            self.fail(None, "the header's public key is malformed")
            return False
        if not checkpoint.verify(key):
            self.fail(checkpoint.seq, "checkpoint signature invalid")
            return False
        if self.hashes.get(checkpoint.seq) != checkpoint.row_hash:
            self.fail(checkpoint.seq, "checkpoint hash mismatch")
            return False
        self.checkpoints += 1
        return True

    def finish(self) -> ExportReport:
        if not self.failed and not self.header:
            return self.fail(None, "empty export")
        if not self.failed and not self.ended:
            assert self.head is not None
            return self.fail(self.head.seq + 1, "no end line (truncated export)")
        return self.report()


def export_digest(lines: Iterable[bytes]) -> str:
    """SHA-256 of an export's bytes (printed next to a written file so it can be checked after shipping)."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line)
    return digest.hexdigest()
