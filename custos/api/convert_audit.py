"""Protobuf <-> domain conversion of the Audit service: filters, records, verifier reports, transcripts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from custos.api.convert import chat_message_to_pb
from custos.audit.events import StoredRecord
from custos.audit.store import AuditFilter, VerifyReport
from custos.flows.errors import InvalidArgument
from custos.flows.subject_access import TranscriptView
from custos.v1 import audit_pb2

_FILTER_FIELDS = frozenset(AuditFilter.names())


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def timestamp_from_pb(message: audit_pb2.AuditQueryRequest, field: str) -> datetime | None:
    """An optional timestamp filter, tz-aware UTC."""
    if not message.HasField(field):  # type: ignore[arg-type]
        return None
    stamp: Timestamp = getattr(message, field)
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):  # outside 0001-01-01 .. 9999-12-31, or nanos out of range
        raise InvalidArgument(field, "timestamp out of range") from None


def audit_filter_from_pb(request: audit_pb2.AuditQueryRequest) -> AuditFilter:
    """The filters of a Query (or an Export's ``filter``); empty strings mean "any".

    Every filter field the message has, by name: a field added to both the message and :class:`AuditFilter`
    needs no code here.
    """
    values: dict[str, Any] = {}
    for field in request.DESCRIPTOR.fields:
        if field.name not in _FILTER_FIELDS:
            continue
        if field.message_type is not None:  # the time range
            values[field.name] = timestamp_from_pb(request, field.name)
        else:
            values[field.name] = getattr(request, field.name) or None
    return AuditFilter(**values)


def audit_record_to_pb(record: StoredRecord) -> audit_pb2.AuditRecord:
    """Convert a stored audit record, including its exact hashed payload."""
    return audit_pb2.AuditRecord(
        id=record.id,
        seq=record.seq,
        event_type=record.event_type,
        phase=record.phase,
        request_id=record.request_id,
        start_time=_timestamp(record.start_time),
        end_time=_timestamp(record.end_time),
        actor=record.actor,
        rpc=record.rpc,
        status=record.status,
        model=record.model or "",
        prev_hash=record.prev_hash,
        row_hash=record.row_hash,
        schema_version=record.schema_version,
        payload_json=record.payload_json,
    )


def verify_report_to_pb(report: VerifyReport, checkpoints: int) -> audit_pb2.AuditVerifyResponse:
    """Convert the verifier's report and the number of signed checkpoints it was checked against."""
    response = audit_pb2.AuditVerifyResponse(
        ok=report.ok,
        count=report.count,
        head_hash=report.head_hash or "",
        reason=report.reason,
        incomplete=report.incomplete,
    )
    if report.first_bad_seq is not None:
        response.first_bad_seq = report.first_bad_seq
    response.head_seq = report.head_seq
    response.checkpoints = checkpoints
    return response


def transcript_to_pb(view: TranscriptView) -> audit_pb2.Transcript:
    """A decrypted transcript as the Audit API returns it."""
    response = audit_pb2.Transcript(
        transcript_id=view.transcript_id,
        messages=[chat_message_to_pb(m.get("role", ""), m.get("content", "")) for m in view.messages],
        anonymized_messages=[
            chat_message_to_pb(m.get("role", ""), m.get("content", "")) for m in view.anonymized_messages
        ],
        answer=view.answer,
        anonymized_answer=view.anonymized_answer,
        audit_record_id=view.audit_record_id,
    )
    response.created_at.FromDatetime(view.created_at)
    return response
