"""gRPC servicers: translate protobuf <-> domain and call the core; nothing else.

Requests arrive as raw bytes and are parsed here, so a malformed or oversized message gets
INVALID_ARGUMENT / RESOURCE_EXHAUSTED and an audit record instead of the gRPC core's own error.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from custos.api import convert
from custos.api.convert import RequestLimits
from custos.flows.audit_read import ComplianceService
from custos.flows.errors import InvalidArgument, RequestError, ResourceExhausted
from custos.flows.idempotency import IdempotencyConflict, IdempotencyStore
from custos.flows.pipeline import Pipeline
from custos.flows.purposes import PurposePolicy
from custos.flows.subject_access import SubjectAccess
from custos.flows.types import Caller, GenerateCall
from custos.security.auth import current_caller
from custos.v1 import admin_pb2, audit_pb2, common_pb2, inference_pb2

# Chunk size of ExportSubject's stream (well below the default 4 MiB message limit).
EXPORT_CHUNK_BYTES = 256 * 1024
# Principal of callers until authentication is configured.
ANONYMOUS = "anonymous"


def caller_from_context(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    """Who is calling, as authenticated by the access interceptor."""
    return current_caller() or Caller(principal=ANONYMOUS, peer=context.peer() or "unknown")


def deadline_from_context(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """The caller's deadline on the monotonic clock, if it set one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class InferenceServicer:
    """custos.v1.Inference."""

    def __init__(
        self,
        pipeline: Pipeline,
        limits: RequestLimits,
        *,
        max_request_bytes: int,
        idempotency: IdempotencyStore | None = None,
        purposes: PurposePolicy | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._limits = limits
        self._max_request_bytes = max_request_bytes
        self._idempotency = idempotency
        self._purposes = purposes or PurposePolicy({})

    async def Generate(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inference_pb2.GenerateResponse:
        """Answer a conversation in one response."""
        caller = caller_from_context(context)
        call = await self._admit(raw, caller, "Generate")
        deadline = deadline_from_context(context)
        if call.idempotency_key is not None and self._idempotency is not None:
            try:
                outcome = await self._idempotency.run(
                    caller,
                    call.idempotency_key,
                    raw,
                    lambda: self._pipeline.generate(call, caller, deadline=deadline),
                )
            except IdempotencyConflict as exc:
                await self._pipeline.record_invalid(
                    caller, "Generate", status=exc.status, field=exc.field, problem=exc.problem
                )
                raise
        else:
            outcome = await self._pipeline.generate(call, caller, deadline=deadline)
        return convert.generate_outcome_to_pb(outcome)

    async def GenerateStream(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[inference_pb2.GenerateStreamResponse]:
        """Answer a conversation as a stream of events."""
        caller = caller_from_context(context)
        call = await self._admit(raw, caller, "GenerateStream")
        events = self._pipeline.generate_stream(
            call, caller, rpc="GenerateStream", deadline=deadline_from_context(context)
        )
        async with aclosing(events):
            async for event in events:
                yield convert.stream_event_to_pb(event)

    async def _admit(self, raw: bytes, caller: Caller, rpc: str) -> GenerateCall:
        """Check size, parse and validate; every refusal is audited before it is returned."""
        try:
            if len(raw) > self._max_request_bytes:
                raise ResourceExhausted(
                    f"request is {len(raw)} bytes, larger than the limit of {self._max_request_bytes}",
                    reason="request_too_large",
                )
            request = convert.parse_message(inference_pb2.GenerateRequest, raw)
            call = convert.generate_call_from_pb(request, self._limits)
            if rpc == "GenerateStream" and call.idempotency_key is not None:
                raise InvalidArgument("idempotency_key", "only Generate accepts an idempotency key")
            self._purposes.check(caller.principal, call.purpose)
            return call
        except RequestError as exc:
            field = exc.field if isinstance(exc, InvalidArgument) else "request"
            problem = exc.problem if isinstance(exc, InvalidArgument) else exc.message
            await self._pipeline.record_invalid(caller, rpc, status=exc.status, field=field, problem=problem)
            raise


class AuditServicer:
    """custos.v1.Audit: read access to the trail for compliance officers."""

    def __init__(self, compliance: ComplianceService, access: SubjectAccess) -> None:
        self._compliance = compliance
        self._access = access

    async def Query(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> audit_pb2.AuditQueryResponse:
        """Records matching the filters, newest first."""
        request = convert.parse_message(audit_pb2.AuditQueryRequest, raw)
        page_size = request.page_size or 50
        if not 1 <= page_size <= 500:
            raise InvalidArgument("page_size", "must be between 1 and 500")
        records, next_token = await self._compliance.query(
            caller_from_context(context),
            page_size=page_size,
            page_token=request.page_token or None,
            filters=convert.audit_filter_from_pb(request),
        )
        return audit_pb2.AuditQueryResponse(
            records=[convert.audit_record_to_pb(r) for r in records], next_page_token=next_token or ""
        )

    async def Get(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> audit_pb2.AuditRecord:
        """One record by id."""
        request = convert.parse_message(audit_pb2.AuditGetRequest, raw)
        if not request.id:
            raise InvalidArgument("id", "required")
        record = await self._compliance.get(caller_from_context(context), request.id)
        return convert.audit_record_to_pb(record)

    async def Verify(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> audit_pb2.AuditVerifyResponse:
        """Re-hash the whole chain and check it against the signed checkpoints."""
        convert.parse_message(audit_pb2.AuditVerifyRequest, raw)
        report, checkpoints = await self._compliance.verify_with_checkpoints(caller_from_context(context))
        response = convert.verify_report_to_pb(report)
        response.head_seq = report.head_seq
        response.checkpoints = checkpoints
        return response

    async def Export(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[audit_pb2.AuditExportChunk]:
        """Stream matching records as verifiable JSON lines or CSV."""
        request = convert.parse_message(audit_pb2.AuditExportRequest, raw)
        chunks = self._compliance.export(
            caller_from_context(context),
            convert.audit_filter_from_pb(request.filter),
            request.format or "jsonl",
        )
        async with aclosing(chunks):
            async for data in chunks:
                yield audit_pb2.AuditExportChunk(data=data)

    async def GetTranscript(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> audit_pb2.Transcript:
        """One decrypted transcript, for a stated reason; the read is audited."""
        request = convert.parse_message(audit_pb2.GetTranscriptRequest, raw)
        view = await self._access.get_transcript(
            caller_from_context(context), request.transcript_id, request.reason
        )
        response = audit_pb2.Transcript(
            transcript_id=view.transcript_id,
            messages=[_chat_message_to_pb(m) for m in view.messages],
            anonymized_messages=[_chat_message_to_pb(m) for m in view.anonymized_messages],
            answer=view.answer,
            anonymized_answer=view.anonymized_answer,
            audit_record_id=view.audit_record_id,
        )
        response.created_at.FromDatetime(view.created_at)
        return response


_ROLES_PB = {
    "system": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
}


def _chat_message_to_pb(message: dict[str, str]) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(
        role=_ROLES_PB.get(message.get("role", ""), common_pb2.ROLE_UNSPECIFIED),
        content=message.get("content", ""),
    )


class AdminServicer:
    """custos.v1.Admin: operator actions."""

    def __init__(self, access: SubjectAccess) -> None:
        self._access = access

    async def EraseSubject(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.EraseSubjectResponse:
        """Destroy a subject's key and vault rows (right to erasure); audited."""
        request = convert.parse_message(admin_pb2.EraseSubjectRequest, raw)
        result = await self._access.erase_subject(
            caller_from_context(context),
            subject_id=request.subject_id,
            principal=request.principal,
            conversation_id=request.conversation_id,
        )
        return admin_pb2.EraseSubjectResponse(
            subject_ref=result.subject_ref,
            subject_key_destroyed=result.subject_key_destroyed,
            vault_rows_deleted=result.vault_rows_deleted,
            transcripts_unreadable=result.transcripts_unreadable,
            audit_record_id=result.record_id or "",
        )

    async def ExportSubject(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[admin_pb2.ExportSubjectChunk]:
        """Everything held about one subject, as one JSON document in chunks (right of access); audited."""
        request = convert.parse_message(admin_pb2.ExportSubjectRequest, raw)
        document = await self._access.export_subject(
            caller_from_context(context),
            subject_id=request.subject_id,
            principal=request.principal,
            conversation_id=request.conversation_id,
        )
        for start in range(0, len(document), EXPORT_CHUNK_BYTES):
            yield admin_pb2.ExportSubjectChunk(data=document[start : start + EXPORT_CHUNK_BYTES])


def raw_bytes_handler(service: ServiceDescriptor, servicer: object) -> grpc.GenericRpcHandler:
    """Handlers for every method of ``service`` that ``servicer`` implements, taking raw request bytes.

    Built from the descriptor, so the method table cannot drift from the .proto files.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        behaviour: Callable[..., Any] | None = getattr(servicer, method.name, None)
        if behaviour is None:
            continue
        serializer = message_factory.GetMessageClass(method.output_type).SerializeToString
        if method.client_streaming:
            raise NotImplementedError(f"client streaming is not used by the API ({method.full_name})")
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                behaviour, response_serializer=serializer
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour, response_serializer=serializer
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
