"""Read access to the audit trail; every read is itself an ``audit_read`` event."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from custos.audit.chain import VerifyReport
from custos.audit.errors import InvalidQuery, RecordNotFound
from custos.audit.events import AuditEvent, StoredRecord
from custos.audit.export import FORMATS
from custos.audit.maintenance import require_checkpoint
from custos.audit.store import AuditStore
from custos.audit.trail import AuditTrail
from custos.flows.errors import InvalidArgument
from custos.flows.types import Caller

T = TypeVar("T")

EXPORT_LINES_PER_CHUNK = 256


@dataclass(frozen=True)
class AuditFilter:
    """The filters of Query and Export (all optional); references are blind indexes as stored."""

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

    def as_kwargs(self) -> dict[str, Any]:
        """The set filters, as keyword arguments of :meth:`AuditStore.query` / ``scan``."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def for_audit(self) -> dict[str, Any]:
        """The set filters as plain JSON for the ``audit_read`` record.

        References and ids are kept only when they have the shape we issue (hex blind indexes, uuids): a raw
        identifier typed in by mistake must not land in the trail.
        """
        out: dict[str, Any] = {}
        for key, value in self.as_kwargs().items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
            elif key in ("conversation_ref", "subject_ref"):
                out[key] = value if _HEX_REF.fullmatch(value) else "(not a reference)"
            elif key == "request_id":
                out[key] = safe_record_id(value)
            else:
                out[key] = value
        return out


_HEX_REF = re.compile(r"[0-9a-f]{16,128}")
_RECORD_ID = re.compile(r"[0-9A-Fa-f-]{1,36}")


def safe_record_id(value: str) -> str:
    """``value`` if it looks like a record id we issue, else a fixed marker (it could be anything)."""
    return value if _RECORD_ID.fullmatch(value) else "(not a record id)"


class ComplianceService:
    """Query, get, verify and export, run off the event loop and recorded in the trail they read."""

    def __init__(self, audit: AuditStore | AuditTrail, executor: Executor) -> None:
        self._trail = audit if isinstance(audit, AuditTrail) else None
        self._audit = audit.store if isinstance(audit, AuditTrail) else audit
        self._executor = executor

    async def query(
        self,
        caller: Caller,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        event_type: str | None = None,
        actor: str | None = None,
        status: str | None = None,
        page_size: int,
        page_token: str | None,
        filters: AuditFilter | None = None,
    ) -> tuple[list[StoredRecord], str | None]:
        """A page of matching records, newest first (``filters`` adds to the named ones)."""
        merged = AuditFilter(
            **{
                **(filters.as_kwargs() if filters else {}),
                **{
                    k: v
                    for k, v in {
                        "since": since,
                        "until": until,
                        "event_type": event_type,
                        "actor": actor,
                        "status": status,
                    }.items()
                    if v is not None
                },
            }
        )
        try:
            records, next_token = await self._run(
                lambda: self._audit.query(**merged.as_kwargs(), page_size=page_size, page_token=page_token)
            )
        except InvalidQuery as exc:
            await self._refused(caller, "Query", "query", exc)
            raise InvalidArgument(exc.field, str(exc)) from None
        await self._record(
            caller, "Query", "query", {"filters": merged.for_audit(), "returned": len(records)}
        )
        return records, next_token

    async def get(self, caller: Caller, record_id: str) -> StoredRecord:
        """One record by id."""
        try:
            record = await self._run(lambda: self._audit.get(record_id))
        except RecordNotFound:
            await self._record(
                caller, "Get", "get", {"record_id": safe_record_id(record_id)}, status="NOT_FOUND"
            )
            raise
        await self._record(caller, "Get", "get", {"record_id": record_id})
        return record

    async def verify(self, caller: Caller) -> VerifyReport:
        """Verify the chain against the signed checkpoints; a non-empty chain without any fails."""
        report, _ = await self.verify_with_checkpoints(caller)
        return report

    async def verify_with_checkpoints(self, caller: Caller) -> tuple[VerifyReport, int]:
        """Verify the chain; the report and the number of signed checkpoints it was checked against."""
        trail = self._trail
        if trail is not None:
            report, checkpoints = await self._run(trail.verify)
        else:  # no checkpoint trail: a non-empty chain is not verified, only found consistent
            report, checkpoints = require_checkpoint(await self._run(self._audit.verify), 0), 0
        await self._record(
            caller,
            "Verify",
            "verify",
            {
                "ok": report.ok,
                "count": report.count,
                "first_bad_seq": report.first_bad_seq,
                "checkpoints": checkpoints,
            },
        )
        return report, checkpoints

    async def export(self, caller: Caller, filters: AuditFilter, fmt: str) -> AsyncGenerator[bytes, None]:
        """Chunks of an export; the ``audit_read`` record is committed before the first byte leaves."""
        if fmt not in FORMATS:
            await self._refused(caller, "Export", "export", InvalidQuery("format", "unknown export format"))
            raise InvalidArgument("format", f"must be one of: {', '.join(FORMATS)}")
        trail = self._trail
        if trail is None:
            raise InvalidArgument("format", "exports need the checkpoint trail, which is not configured")
        try:
            await self._run(lambda: self._audit.count(**filters.as_kwargs()))  # validates the filters
        except InvalidQuery as exc:
            await self._refused(caller, "Export", "export", exc)
            raise InvalidArgument(exc.field, str(exc)) from None
        await self._record(caller, "Export", "export", {"filters": filters.for_audit(), "format": fmt})
        lines: Iterator[bytes] = await self._run(lambda: trail.export(fmt, filters.as_kwargs()))
        try:
            while True:
                chunk = await self._run(lambda: _take(lines, EXPORT_LINES_PER_CHUNK))
                if not chunk:
                    return
                yield chunk
        finally:
            close = getattr(lines, "close", None)
            if close is not None:
                await self._run(close)

    async def _refused(self, caller: Caller, rpc: str, kind: str, exc: InvalidQuery) -> None:
        """Audit a refused read: the field and our own message, never the caller's value."""
        await self._record(
            caller, rpc, kind, {"field": exc.field, "problem": str(exc)}, status="INVALID_ARGUMENT"
        )

    async def _record(
        self, caller: Caller, rpc: str, kind: str, details: dict[str, Any], *, status: str = "OK"
    ) -> None:
        now = datetime.now(UTC)
        event = AuditEvent(
            event_type="audit_read",
            phase="event",
            request_id=None,
            start_time=now,
            end_time=now,
            actor=caller.principal,
            rpc=rpc,
            status=status,
            model=None,
            conversation_ref=None,
            subject_ref=None,
            transcript_id=None,
            details={
                "kind": kind,
                **details,
                "actor": {"principal": caller.principal, "role": caller.role, "peer": caller.peer},
            },
        )
        await self._run(lambda: self._audit.append(event))

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)


def _take(lines: Iterator[bytes], count: int) -> bytes:
    parts: list[bytes] = []
    for line in lines:
        parts.append(line)
        if len(parts) >= count:
            break
    return b"".join(parts)
