"""Feedback: ratings linked to the caller's own requests, and the satisfaction report, both audited.

Submit: 1 find the caller's request -> 2 anonymize the comment -> 3 the ``feedback`` record -> 4 store it.
The stored comment is erased with the request's subject (``custos.privacy.erasure``).
Satisfaction: 1 the ``audit_read`` record -> 2 the report.
"""

from __future__ import annotations

from custos.flows.context import RequestContext
from custos.flows.errors import NotFound
from custos.flows.events import caller_event
from custos.flows.privacy_step import PrivacyRefusal
from custos.flows.services import FlowServices
from custos.flows.types import FeedbackCall, FeedbackOutcome, SatisfactionQuery
from custos.privacy.subject_keys import anonymous_subject_ref
from custos.tasks.feedback import FeedbackEntry, FeedbackStore, SatisfactionRow, task_of


class FeedbackFlow:
    """The Feedback use cases: Submit and Satisfaction."""

    def __init__(self, services: FlowServices, *, store: FeedbackStore) -> None:
        self._services = services
        self._store = store

    async def submit(self, ctx: RequestContext, call: FeedbackCall) -> FeedbackOutcome:
        """Link a rating (and the anonymized comment) to the caller's own request record, audited."""
        services = self._services
        caller = ctx.caller
        # 1 the request the rating is about, if it is the caller's.
        record = await services.run(self._store.request_record, services.events.store, call.request_id)
        if record is None or record.actor != caller.principal:
            # Someone else's request is reported as missing: the caller learns nothing about it.
            raise NotFound("request_id: no Generate or Classify request with this id from this caller")

        # 2 the comment is anonymized in the request's conversation, like its messages were, and for the
        # request's subject: the conversation's map stays sealed for that subject only.
        comment: str | None = None
        findings: list[dict[str, object]] = []
        if call.comment is not None:
            conversation_ref = record.conversation_ref or services.conversation_ref(caller, call.request_id)
            subject_ref = record.subject_ref or anonymous_subject_ref(
                services.keys, caller.principal, call.request_id
            )
            try:
                decision = await services.run(
                    lambda: services.privacy.run(
                        [call.comment or ""], conversation_ref, mode="mask", subject_ref=subject_ref
                    )
                )
            except PrivacyRefusal as refusal:
                raise refusal.error from None
            comment = decision.anon.texts[0]
            findings = [f.to_audit() for f in decision.anon.findings]
        entry = FeedbackEntry.new(
            request_id=record.id,
            rating=call.rating,
            comment=comment,
            task=task_of(record),
            model=record.model,
            actor=caller.principal,
        )

        # 3 the audit record first: feedback exists only once its record is durable; 4 the feedback.
        event = services.event(
            ctx,
            "event",
            status="OK",
            event_type="feedback",
            conversation_ref=record.conversation_ref,
            subject_ref=record.subject_ref,
            details={
                "feedback_id": entry.id,
                "linked_request_id": record.id,
                "rating": call.rating,
                "task": entry.task,
                "comment_digest": services.digest("feedback", comment) if comment else None,
                "pii": {"findings": findings},
            },
        )
        await services.events.append(event)
        await services.run(self._store.add, entry)
        return FeedbackOutcome(feedback_id=entry.id, request_id=record.id, comment=comment)

    async def satisfaction(self, ctx: RequestContext, query: SatisfactionQuery) -> list[SatisfactionRow]:
        """Count, mean rating and share satisfied by task, model and period; the read is audited first."""
        services = self._services
        # The satisfaction read has always been recorded without an actor block; kept so.
        event = caller_event(
            ctx.caller,
            ctx.rpc,
            event_type="audit_read",
            status="OK",
            details={"kind": "satisfaction", "period": query.period},
            actor=None,
        )
        await services.events.append(event)
        return await services.run(
            lambda: self._store.satisfaction(since=query.since, until=query.until, period=query.period)
        )
