"""custos.v1.Feedback: ratings linked to requests, and satisfaction for compliance and quality staff."""

from __future__ import annotations

from custos.api import convert_tasks
from custos.api.admit import Admission, Context, caller_from_context
from custos.api.convert import parse_message
from custos.flows.context import RequestContext
from custos.flows.feedback import FeedbackFlow
from custos.v1 import feedback_pb2


class FeedbackServicer:
    """custos.v1.Feedback."""

    def __init__(self, *, feedback: FeedbackFlow, admission: Admission) -> None:
        self._feedback = feedback
        self._admission = admission

    async def Submit(self, raw: bytes, context: Context) -> feedback_pb2.FeedbackResponse:
        """Store a rating and the anonymized comment, linked to the caller's request."""
        caller = caller_from_context(context)
        call = await self._admission.admit(
            raw, caller, "Submit", feedback_pb2.FeedbackRequest, convert_tasks.feedback_call_from_pb
        )
        outcome = await self._feedback.submit(RequestContext(caller, "Submit"), call)
        return convert_tasks.feedback_outcome_to_pb(outcome)

    async def Satisfaction(self, raw: bytes, context: Context) -> feedback_pb2.SatisfactionResponse:
        """Count, mean rating and share satisfied by task, model and period; the read is audited."""
        caller = caller_from_context(context)
        query = convert_tasks.satisfaction_query_from_pb(parse_message(feedback_pb2.SatisfactionRequest, raw))
        rows = await self._feedback.satisfaction(RequestContext(caller, "Satisfaction"), query)
        return convert_tasks.satisfaction_to_pb(rows)
