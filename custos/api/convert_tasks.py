"""Protobuf <-> domain conversion of Classify and the Feedback service, validation naming the field."""

from __future__ import annotations

from datetime import UTC, datetime

from custos.api.convert import (
    PURPOSE_PATTERN,
    PURPOSE_RULE,
    RequestLimits,
    generate_call_from_pb,
    privacy_policy_from_pb,
    redaction_to_pb,
)
from custos.flows.errors import InvalidArgument
from custos.flows.types import (
    ClassifyCall,
    ClassifyOutcome,
    FeedbackCall,
    FeedbackOutcome,
    SatisfactionQuery,
)
from custos.tasks.feedback import PERIODS, SatisfactionRow
from custos.tasks.labels import MAX_LABEL_CHARS, MAX_LABELS
from custos.v1 import common_pb2, feedback_pb2, inference_pb2

MAX_COMMENT_CHARS = 4000


def classify_call_from_pb(request: inference_pb2.ClassifyRequest, limits: RequestLimits) -> ClassifyCall:
    """Validate a ClassifyRequest: the message as one user turn, exactly one of label_set and labels."""
    if not request.message.strip():
        raise InvalidArgument("message", "required")
    equivalent = inference_pb2.GenerateRequest(
        conversation_id=request.conversation_id,
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=request.message)],
    )
    if request.HasField("subject_id"):
        equivalent.subject_id = request.subject_id
    if request.HasField("purpose"):
        if not PURPOSE_PATTERN.fullmatch(request.purpose):
            raise InvalidArgument("purpose", PURPOSE_RULE)
        equivalent.purpose = request.purpose
    call = generate_call_from_pb(equivalent, limits)
    mode, block = privacy_policy_from_pb(request.privacy_mode, request.block_entity_types)
    if bool(request.label_set) == bool(request.labels):
        raise InvalidArgument("label_set", "give exactly one of label_set and labels")
    labels = tuple(request.labels)
    if labels:
        if not 2 <= len(labels) <= MAX_LABELS:
            raise InvalidArgument("labels", f"give 2..{MAX_LABELS} labels")
        for index, label in enumerate(labels):
            if not label.strip() or len(label) > MAX_LABEL_CHARS or not label.isprintable():
                raise InvalidArgument(
                    f"labels[{index}]", f"must be 1..{MAX_LABEL_CHARS} printable characters"
                )
        if len(set(labels)) != len(labels):
            raise InvalidArgument("labels", "must be unique")
    return ClassifyCall(
        request=type(call)(
            conversation_id=call.conversation_id,
            turns=call.turns,
            params=call.params,
            subject_id=call.subject_id,
            purpose=call.purpose,
            privacy_mode=mode,
            block_entities=block,
        ),
        label_set=request.label_set or None,
        labels=labels,
    )


def classify_outcome_to_pb(outcome: ClassifyOutcome) -> inference_pb2.ClassifyResponse:
    """The response message of a Classify call."""
    return inference_pb2.ClassifyResponse(
        request_id=outcome.request_id,
        label=outcome.label,
        distribution=[
            inference_pb2.LabelProbability(label=s.label, probability=s.probability, logprob=s.logprob)
            for s in outcome.distribution
        ],
        calibrated=outcome.calibrated,
        label_set=outcome.label_set,
        label_set_version=outcome.label_set_version,
        redaction=redaction_to_pb(outcome.redaction),
    )


def feedback_call_from_pb(request: feedback_pb2.FeedbackRequest) -> FeedbackCall:
    """Validate a FeedbackRequest."""
    if not request.request_id:
        raise InvalidArgument("request_id", "required")
    if len(request.request_id) > 36 or not request.request_id.isprintable():
        raise InvalidArgument("request_id", "not a request id")
    if not 1 <= request.rating <= 5:
        raise InvalidArgument("rating", "must be between 1 and 5")
    comment: str | None = None
    if request.HasField("comment") and request.comment.strip():
        if len(request.comment) > MAX_COMMENT_CHARS:
            raise InvalidArgument("comment", f"longer than {MAX_COMMENT_CHARS} characters")
        comment = request.comment
    return FeedbackCall(request_id=request.request_id, rating=request.rating, comment=comment)


def feedback_outcome_to_pb(outcome: FeedbackOutcome) -> feedback_pb2.FeedbackResponse:
    """The stored feedback's id, its request and the comment as stored (anonymized)."""
    return feedback_pb2.FeedbackResponse(
        feedback_id=outcome.feedback_id, request_id=outcome.request_id, comment=outcome.comment or ""
    )


def satisfaction_query_from_pb(request: feedback_pb2.SatisfactionRequest) -> SatisfactionQuery:
    """Validate a SatisfactionRequest: a known period (default ``day``) and timestamps in range."""
    period = next((p for p in PERIODS if p == (request.period or "day")), None)
    if period is None:
        raise InvalidArgument("period", f"must be one of {', '.join(PERIODS)}")
    return SatisfactionQuery(period=period, since=_time(request, "since"), until=_time(request, "until"))


def satisfaction_to_pb(rows: list[SatisfactionRow]) -> feedback_pb2.SatisfactionResponse:
    """Count, mean rating and share satisfied per (task, model, period)."""
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
