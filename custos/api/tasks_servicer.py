"""gRPC servicers of the customer-service tasks: Generate with a task, Classify, and Feedback.

They translate protobuf <-> domain and call the pipeline; every refusal is audited before it is returned.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

import grpc

from custos.api import convert, tasks_convert
from custos.api.servicers import InferenceServicer, caller_from_context
from custos.audit.events import AuditEvent
from custos.audit.store import AuditStore
from custos.flows.errors import InvalidArgument, RequestError, ResourceExhausted
from custos.flows.types import Caller, GenerateCall
from custos.tasks.feedback import PERIODS, FeedbackStore
from custos.v1 import feedback_pb2, inference_pb2

Context = grpc.aio.ServicerContext[Any, Any]


class TaskInferenceServicer(InferenceServicer):
    """custos.v1.Inference with task templates on Generate and the Classify method."""

    async def Generate(self, raw: bytes, context: Context) -> inference_pb2.GenerateResponse:
        """Answer a conversation, or a task's template filled with its variables."""
        response = await super().Generate(raw, context)
        request = convert.parse_message(inference_pb2.GenerateRequest, raw)
        if request.HasField("task"):
            template = self._pipeline.templates.get(request.task)
            response.template.CopyFrom(
                inference_pb2.TemplateRef(id=template.id, version=template.version, sha256=template.sha256)
            )
        return response

    async def _admit(self, raw: bytes, caller: Caller, rpc: str) -> GenerateCall:
        call = await super()._admit(raw, caller, rpc)
        try:
            self._pipeline.check_task(call)
        except InvalidArgument as exc:
            await self._pipeline.record_invalid(
                caller, rpc, status=exc.status, field=exc.field, problem=exc.problem
            )
            raise
        return call

    async def Classify(self, raw: bytes, context: Context) -> inference_pb2.ClassifyResponse:
        """Score every label of a label set and return the distribution."""
        caller = caller_from_context(context)
        try:
            if len(raw) > self._max_request_bytes:
                raise ResourceExhausted(
                    f"request is {len(raw)} bytes, larger than the limit of {self._max_request_bytes}",
                    reason="request_too_large",
                )
            request = convert.parse_message(inference_pb2.ClassifyRequest, raw)
            call = tasks_convert.classify_call_from_pb(request, self._limits)
            self._purposes.check(caller.principal, call.request.purpose)
            self._pipeline.resolve_label_set(call)
        except RequestError as exc:
            field = exc.field if isinstance(exc, InvalidArgument) else "request"
            problem = exc.problem if isinstance(exc, InvalidArgument) else exc.message
            await self._pipeline.record_invalid(
                caller, "Classify", status=exc.status, field=field, problem=problem
            )
            raise
        outcome = await self._pipeline.classify(call, caller)
        return tasks_convert.classify_outcome_to_pb(outcome)


class FeedbackServicer:
    """custos.v1.Feedback: ratings linked to requests, and satisfaction for compliance and quality staff."""

    def __init__(self, pipeline: Any, store: FeedbackStore, audit: AuditStore, executor: Executor) -> None:
        self._pipeline = pipeline
        self._store = store
        self._audit = audit
        self._executor = executor

    async def Submit(self, raw: bytes, context: Context) -> feedback_pb2.FeedbackResponse:
        """Store a rating and the anonymized comment, linked to the caller's request."""
        caller = caller_from_context(context)
        try:
            request = convert.parse_message(feedback_pb2.FeedbackRequest, raw)
            call = tasks_convert.feedback_call_from_pb(request)
        except InvalidArgument as exc:
            await self._pipeline.record_invalid(
                caller, "Submit", status=exc.status, field=exc.field, problem=exc.problem
            )
            raise
        outcome = await self._pipeline.submit_feedback(call, caller)
        return feedback_pb2.FeedbackResponse(
            feedback_id=outcome.feedback_id, request_id=outcome.request_id, comment=outcome.comment or ""
        )

    async def Satisfaction(self, raw: bytes, context: Context) -> feedback_pb2.SatisfactionResponse:
        """Count, mean rating and share satisfied by task, model and period; the read is audited."""
        caller = caller_from_context(context)
        request = convert.parse_message(feedback_pb2.SatisfactionRequest, raw)
        period = request.period or "day"
        if period not in PERIODS:
            raise InvalidArgument("period", f"must be one of {', '.join(PERIODS)}")
        since = _time(request, "since")
        until = _time(request, "until")
        loop = asyncio.get_running_loop()
        now = datetime.now(UTC)
        event = AuditEvent(
            event_type="audit_read",
            phase="event",
            start_time=now,
            end_time=now,
            actor=caller.principal,
            rpc="Satisfaction",
            status="OK",
            details={"kind": "satisfaction", "period": period},
        )
        await loop.run_in_executor(self._executor, self._audit.append, event)
        rows = await loop.run_in_executor(
            self._executor, lambda: self._store.satisfaction(since=since, until=until, period=period)
        )
        return feedback_pb2.SatisfactionResponse(
            rows=[
                feedback_pb2.SatisfactionRow(
                    task=r.task,
                    model=r.model,
                    period=r.period,
                    count=r.count,
                    mean_rating=r.mean_rating,
                    satisfied=r.satisfied,
                )
                for r in rows
            ]
        )


def _time(request: feedback_pb2.SatisfactionRequest, field: str) -> datetime | None:
    if not request.HasField(field):  # type: ignore[arg-type]
        return None
    try:
        value: datetime = getattr(request, field).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(field, "timestamp out of range") from None
    return value
