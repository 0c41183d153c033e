"""Read access to the audit trail; every read is itself an ``audit_read`` event."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any, TypeVar

from custos.audit.errors import InvalidQuery
from custos.audit.events import AuditEvent, StoredRecord
from custos.audit.store import AuditStore, VerifyReport
from custos.server.errors import InvalidArgument
from custos.server.requests import Caller

T = TypeVar("T")


class ComplianceService:
    """Query, get and verify, run off the event loop and recorded in the trail they read."""

    def __init__(self, audit: AuditStore, executor: Executor) -> None:
        self._audit = audit
        self._executor = executor

    async def query(
        self,
        caller: Caller,
        *,
        since: datetime | None,
        until: datetime | None,
        event_type: str | None,
        actor: str | None,
        status: str | None,
        page_size: int,
        page_token: str | None,
    ) -> tuple[list[StoredRecord], str | None]:
        """A page of matching records, newest first."""
        try:
            records, next_token = await self._run(
                lambda: self._audit.query(
                    since=since,
                    until=until,
                    event_type=event_type,
                    actor=actor,
                    status=status,
                    page_size=page_size,
                    page_token=page_token,
                )
            )
        except InvalidQuery as exc:
            raise InvalidArgument(exc.field, str(exc)) from None
        filters = {
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "event_type": event_type,
            "actor": actor,
            "status": status,
        }
        await self._record(caller, "Query", "query", {"filters": filters, "returned": len(records)})
        return records, next_token

    async def get(self, caller: Caller, record_id: str) -> StoredRecord:
        """One record by id."""
        record = await self._run(lambda: self._audit.get(record_id))
        await self._record(caller, "Get", "get", {"record_id": record_id})
        return record

    async def verify(self, caller: Caller) -> VerifyReport:
        """Verify the chain."""
        report = await self._run(self._audit.verify)
        await self._record(
            caller,
            "Verify",
            "verify",
            {
                "ok": report.ok,
                "count": report.count,
                "first_bad_seq": report.first_bad_seq,
            },
        )
        return report

    async def _record(self, caller: Caller, rpc: str, kind: str, details: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        event = AuditEvent(
            event_type="audit_read",
            phase="event",
            request_id=None,
            start_time=now,
            end_time=now,
            actor=caller.principal,
            rpc=rpc,
            status="OK",
            model=None,
            conversation_ref=None,
            subject_ref=None,
            transcript_id=None,
            details={"kind": kind, **details, "actor": {"principal": caller.principal, "peer": caller.peer}},
        )
        await self._run(lambda: self._audit.append(event))

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
