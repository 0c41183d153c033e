"""Read access to the audit trail; every read is itself an ``audit_read`` event."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

from custos.audit.chain import VerifyReport
from custos.audit.errors import InvalidQuery, RecordNotFound
from custos.audit.events import StoredRecord
from custos.audit.export import FORMATS
from custos.audit.maintenance import require_checkpoint
from custos.audit.store import AuditFilter, AuditStore, safe_record_id
from custos.audit.trail import AuditTrail
from custos.flows.context import in_executor
from custos.flows.errors import InvalidArgument
from custos.flows.events import actor_of, caller_event
from custos.flows.types import Caller

T = TypeVar("T")

EXPORT_LINES_PER_CHUNK = 256


class ComplianceService:
    """Query, get, verify and export, run off the event loop and recorded in the trail they read."""

    def __init__(
        self, audit: AuditStore | AuditTrail, executor: Executor, *, channel: str | None = None
    ) -> None:
        # ``channel`` (the console's "console"): the records' kind, the read's own kind kept as ``read``.
        self._channel = channel
        self._trail = audit if isinstance(audit, AuditTrail) else None
        self._audit = audit.store if isinstance(audit, AuditTrail) else audit
        self._executor = executor

    async def query(
        self, caller: Caller, where: AuditFilter, *, page_size: int, page_token: str | None
    ) -> tuple[list[StoredRecord], str | None]:
        """A page of records matching ``where``, newest first."""
        try:
            records, next_token = await self._run(
                lambda: self._audit.query(where, page_size=page_size, page_token=page_token)
            )
        except InvalidQuery as exc:
            await self._refused(caller, "Query", "query", exc)
            raise InvalidArgument(exc.field, str(exc)) from None
        await self._record(caller, "Query", "query", {"filters": where.for_audit(), "returned": len(records)})
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
            await self._run(lambda: self._audit.count(filters))  # validates the filters
        except InvalidQuery as exc:
            await self._refused(caller, "Export", "export", exc)
            raise InvalidArgument(exc.field, str(exc)) from None
        await self._record(caller, "Export", "export", {"filters": filters.for_audit(), "format": fmt})
        lines: Iterator[bytes] = await self._run(lambda: trail.export(fmt, filters.given()))
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
        event = caller_event(
            caller,
            rpc,
            event_type="audit_read",
            status=status,
            details={"kind": kind, **details}
            if self._channel is None
            else {"kind": self._channel, "read": kind, **details},
            actor=actor_of(caller, fingerprint=False),
        )
        await self._run(lambda: self._audit.append(event))

    async def _run(self, fn: Callable[[], T]) -> T:
        return await in_executor(self._executor, fn)


def _take(lines: Iterator[bytes], count: int) -> bytes:
    parts: list[bytes] = []
    for line in lines:
        parts.append(line)
        if len(parts) >= count:
            break
    return b"".join(parts)
