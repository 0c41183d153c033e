"""The audited-event assembly of the flows: how a call, its caller and its refusals become audit events.

Every record names its actor (principal, role, peer, certificate fingerprint) in ``details["actor"]``;
appends run on the executor. Refusals keep our own text (field and problem), never the caller's. The first
request or single record of a call takes the call's request id (:class:`~custos.flows.context.CallIds`), and
every record of the call notes the caller's own ``x-request-id`` beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from custos.audit.events import AuditEvent, StoredRecord
from custos.audit.store import AuditStore, SealedTranscript
from custos.flows.context import RequestContext, current_call, in_executor, utc_now
from custos.flows.errors import RequestError, refusal_field
from custos.flows.types import Caller


def actor_of(caller: Caller, *, fingerprint: bool = True) -> dict[str, Any]:
    """The ``actor`` block of a record's details (audit reads have always been written without one)."""
    actor: dict[str, Any] = {"principal": caller.principal, "role": caller.role, "peer": caller.peer}
    if fingerprint:
        actor["fingerprint"] = caller.fingerprint
    return actor


def call_event(
    ctx: RequestContext,
    phase: str,
    *,
    status: str,
    event_type: str,
    details: Mapping[str, Any],
    model: str | None = None,
    request_id: str | None = None,
    conversation_ref: str | None = None,
    subject_ref: str | None = None,
    transcript_id: str | None = None,
) -> AuditEvent:
    """A record of the call in ``ctx``: from its start time until now, with its actor.

    A request or single record without ``request_id`` takes the call's id if no record has yet.
    """
    record_id = ctx.ids.claim() if phase != "completion" and request_id is None else None
    return AuditEvent(
        event_type=event_type,
        phase=phase,
        request_id=request_id,
        record_id=record_id,
        start_time=ctx.start_time,
        end_time=ctx.now(),
        actor=ctx.caller.principal,
        rpc=ctx.rpc,
        status=status,
        model=model,
        conversation_ref=conversation_ref,
        subject_ref=subject_ref,
        transcript_id=transcript_id,
        details={**details, **ctx.ids.audit_details(), "actor": actor_of(ctx.caller)},
    )


def caller_event(
    caller: Caller,
    rpc: str,
    *,
    event_type: str,
    status: str,
    details: Mapping[str, Any],
    actor: Mapping[str, Any] | None,
    conversation_ref: str | None = None,
    subject_ref: str | None = None,
    transcript_id: str | None = None,
) -> AuditEvent:
    """A single ``event`` record of what ``caller`` did just now (``actor``: the details' actor block).

    Inside a call (its ids bound to this context by the edge) the record takes the call's id if it is the
    call's first record.
    """
    now = utc_now()
    ids = current_call()
    noted = {} if ids is None else ids.audit_details()
    return AuditEvent(
        event_type=event_type,
        phase="event",
        record_id=None if ids is None else ids.claim(),
        start_time=now,
        end_time=now,
        actor=caller.principal,
        rpc=rpc,
        status=status,
        conversation_ref=conversation_ref,
        subject_ref=subject_ref,
        transcript_id=transcript_id,
        details={**details, **noted, "actor": actor} if actor is not None else {**details, **noted},
    )


class AuditEvents:
    """Appends the flows' audit events on the executor; the store's transaction rules are its own."""

    def __init__(self, audit: AuditStore, executor: Executor) -> None:
        self._audit = audit
        self._executor = executor

    @property
    def store(self) -> AuditStore:
        """The audit store appended to."""
        return self._audit

    async def append(self, event: AuditEvent) -> StoredRecord:
        """Append ``event``; returns the stored record once it is durable."""
        return await in_executor(self._executor, self._audit.append, event)

    async def append_with(self, event: AuditEvent, transcript: SealedTranscript) -> StoredRecord:
        """Append ``event`` and store ``transcript`` in the same transaction (both or neither)."""
        return await in_executor(
            self._executor, lambda: self._audit.append_with(event, transcript=transcript)
        )

    async def record_invalid(self, caller: Caller, rpc: str, error: RequestError) -> StoredRecord:
        """Audit a refused request (bad input or capacity) as ``invalid``; the problem is our text."""
        field, problem = refusal_field(error)
        event = caller_event(
            caller,
            rpc,
            event_type="invalid",
            status=error.status,
            details={"field": field, "problem": problem},
            actor=actor_of(caller),
        )
        return await self.append(event)
