"""custos.v1.Audit: read access to the trail for compliance officers; every read is audited by the flow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from custos.api import convert_audit
from custos.api.admit import Context, caller_from_context
from custos.api.convert import parse_message
from custos.flows.audit_read import ComplianceService
from custos.flows.errors import InvalidArgument
from custos.flows.subject_access import SubjectAccess
from custos.v1 import audit_pb2


class AuditServicer:
    """custos.v1.Audit."""

    def __init__(self, compliance: ComplianceService, access: SubjectAccess) -> None:
        self._compliance = compliance
        self._access = access

    async def Query(self, raw: bytes, context: Context) -> audit_pb2.AuditQueryResponse:
        """Records matching the filters, newest first."""
        request = parse_message(audit_pb2.AuditQueryRequest, raw)
        page_size = request.page_size or 50
        if not 1 <= page_size <= 500:
            raise InvalidArgument("page_size", "must be between 1 and 500")
        records, next_token = await self._compliance.query(
            caller_from_context(context),
            convert_audit.audit_filter_from_pb(request),
            page_size=page_size,
            page_token=request.page_token or None,
        )
        return audit_pb2.AuditQueryResponse(
            records=[convert_audit.audit_record_to_pb(r) for r in records], next_page_token=next_token or ""
        )

    async def Get(self, raw: bytes, context: Context) -> audit_pb2.AuditRecord:
        """One record by id."""
        request = parse_message(audit_pb2.AuditGetRequest, raw)
        if not request.id:
            raise InvalidArgument("id", "required")
        record = await self._compliance.get(caller_from_context(context), request.id)
        return convert_audit.audit_record_to_pb(record)

    async def Verify(self, raw: bytes, context: Context) -> audit_pb2.AuditVerifyResponse:
        """Re-hash the whole chain and check it against the signed checkpoints."""
        parse_message(audit_pb2.AuditVerifyRequest, raw)
        report, checkpoints = await self._compliance.verify_with_checkpoints(caller_from_context(context))
        return convert_audit.verify_report_to_pb(report, checkpoints)

    async def Export(self, raw: bytes, context: Context) -> AsyncIterator[audit_pb2.AuditExportChunk]:
        """Stream matching records as verifiable JSON lines or CSV."""
        request = parse_message(audit_pb2.AuditExportRequest, raw)
        chunks = self._compliance.export(
            caller_from_context(context),
            convert_audit.audit_filter_from_pb(request.filter),
            request.format or "jsonl",
        )
        async with aclosing(chunks):
            async for data in chunks:
                yield audit_pb2.AuditExportChunk(data=data)

    async def GetTranscript(self, raw: bytes, context: Context) -> audit_pb2.Transcript:
        """One decrypted transcript, for a stated reason; the read is audited."""
        request = parse_message(audit_pb2.GetTranscriptRequest, raw)
        view = await self._access.get_transcript(
            caller_from_context(context), request.transcript_id, request.reason
        )
        return convert_audit.transcript_to_pb(view)
