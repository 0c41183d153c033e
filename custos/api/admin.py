"""custos.v1.Admin: operator actions on subjects (erasure, export); audited by the flow."""

from __future__ import annotations

from collections.abc import AsyncIterator

from custos.api.admit import Context, caller_from_context
from custos.api.convert import parse_message
from custos.flows.subject_access import SubjectAccess
from custos.v1 import admin_pb2

# Chunk size of ExportSubject's stream (well below the default 4 MiB message limit).
EXPORT_CHUNK_BYTES = 256 * 1024


class AdminServicer:
    """custos.v1.Admin."""

    def __init__(self, access: SubjectAccess) -> None:
        self._access = access

    async def EraseSubject(self, raw: bytes, context: Context) -> admin_pb2.EraseSubjectResponse:
        """Destroy a subject's key and vault rows (right to erasure); audited."""
        request = parse_message(admin_pb2.EraseSubjectRequest, raw)
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
        self, raw: bytes, context: Context
    ) -> AsyncIterator[admin_pb2.ExportSubjectChunk]:
        """Everything held about a subject, as one JSON document in chunks (right of access); audited."""
        request = parse_message(admin_pb2.ExportSubjectRequest, raw)
        document = await self._access.export_subject(
            caller_from_context(context),
            subject_id=request.subject_id,
            principal=request.principal,
            conversation_id=request.conversation_id,
        )
        for start in range(0, len(document), EXPORT_CHUNK_BYTES):
            yield admin_pb2.ExportSubjectChunk(data=document[start : start + EXPORT_CHUNK_BYTES])
