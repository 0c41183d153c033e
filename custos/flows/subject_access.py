"""Audited access to what Custos holds about people: transcript reads (with a reason) and erasure.

Each runs on the executor and leaves an audit record; the edge only translates its messages.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from custos.audit.errors import RecordNotFound
from custos.audit.store import AuditStore, TranscriptStore, safe_record_id
from custos.flows.context import in_executor
from custos.flows.errors import FailedPrecondition, InvalidArgument, NotFound, RequestError
from custos.flows.events import actor_of, caller_event
from custos.flows.types import Caller
from custos.privacy.erasure import ErasureResult, SubjectService, export_subject
from custos.privacy.errors import DecryptionFailed, KeyNotFound, SubjectKeyMissing
from custos.privacy.keys import MasterKeyProvider
from custos.privacy.subject_keys import anonymous_subject_ref, subject_ref_of
from custos.privacy.transcripts import open_transcript

T = TypeVar("T")
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class TranscriptView:
    """A decrypted transcript as the Audit API returns it."""

    transcript_id: str
    created_at: datetime
    messages: list[dict[str, str]]
    anonymized_messages: list[dict[str, str]]
    answer: str
    anonymized_answer: str
    audit_record_id: str


class SubjectAccess:
    """GetTranscript and EraseSubject behind the API."""

    def __init__(
        self,
        *,
        audit: AuditStore,
        transcripts: TranscriptStore,
        keys: MasterKeyProvider,
        subjects: SubjectService,
        executor: Executor,
    ) -> None:
        self._audit = audit
        self._transcripts = transcripts
        self._keys = keys
        self._subjects = subjects
        self._executor = executor

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await in_executor(self._executor, fn, *args)

    def _record(
        self,
        caller: Caller,
        rpc: str,
        event_type: str,
        status: str,
        *,
        details: dict[str, Any],
        conversation_ref: str | None = None,
        subject_ref: str | None = None,
        transcript_id: str | None = None,
    ) -> str:
        event = caller_event(
            caller,
            rpc,
            event_type=event_type,
            status=status,
            details=details,
            actor=actor_of(caller),
            conversation_ref=conversation_ref,
            subject_ref=subject_ref,
            transcript_id=transcript_id,
        )
        return self._audit.append(event).id

    async def get_transcript(self, caller: Caller, transcript_id: str, reason: str) -> TranscriptView:
        """Decrypt one transcript; the read (or its failure) and the reason are audited first."""
        if not transcript_id:
            raise InvalidArgument("transcript_id", "required")
        if not reason.strip():
            raise InvalidArgument("reason", "required: say why the transcript is read")
        if len(reason) > MAX_REASON_CHARS:
            raise InvalidArgument("reason", f"at most {MAX_REASON_CHARS} characters")
        return await self._run(self._get_transcript, caller, transcript_id, reason.strip())

    def _get_transcript(self, caller: Caller, transcript_id: str, reason: str) -> TranscriptView:
        safe_id = safe_record_id(transcript_id)
        try:
            row = self._transcripts.get(transcript_id)
        except RecordNotFound:
            self._record(
                caller,
                "GetTranscript",
                "transcript_read",
                "NOT_FOUND",
                details={"reason": reason, "requested": safe_id},
            )
            raise NotFound("transcript not found (never stored, purged, or erased)") from None
        problem: RequestError | None = None
        plaintext = b""
        try:
            plaintext = open_transcript(
                row.ciphertext,
                transcript_id=row.id,
                conversation_ref=row.conversation_ref,
                subject_ref=row.subject_ref,
                keys=self._keys,
                subject_keys=self._subjects.subject_keys,
            )
        except SubjectKeyMissing:
            problem = FailedPrecondition(
                "transcript_id: the subject of this transcript was erased", error_code="SUBJECT_ERASED"
            )
        except KeyNotFound:
            problem = FailedPrecondition(
                "transcript_id: sealed under a master key version not held or retired"
            )
        except DecryptionFailed:
            problem = FailedPrecondition("transcript_id: the stored transcript fails authentication")
        record_id = self._record(
            caller,
            "GetTranscript",
            "transcript_read",
            "OK" if problem is None else "FAILED_PRECONDITION",
            conversation_ref=row.conversation_ref,
            subject_ref=row.subject_ref,
            transcript_id=row.id,
            details={"reason": reason, "key_version": row.key_version, "format": row.format_version},
        )
        if problem is not None:
            raise problem
        document = json.loads(plaintext)
        return TranscriptView(
            transcript_id=row.id,
            created_at=row.created_at,
            messages=list(document.get("messages", [])),
            anonymized_messages=list(document.get("anonymized_messages", [])),
            answer=str(document.get("answer", "")),
            anonymized_answer=str(document.get("anonymized_answer", "")),
            audit_record_id=record_id,
        )

    def _subject_ref(self, subject_id: str, principal: str, conversation_id: str) -> str:
        if subject_id and (principal or conversation_id):
            raise InvalidArgument("subject_id", "give subject_id, or principal and conversation_id, not both")
        if subject_id:
            return subject_ref_of(self._keys, subject_id)
        if principal and conversation_id:
            return anonymous_subject_ref(self._keys, principal, conversation_id)
        raise InvalidArgument("subject_id", "required (or principal and conversation_id)")

    async def export_subject(
        self, caller: Caller, *, subject_id: str, principal: str, conversation_id: str
    ) -> bytes:
        """The subject's export document (JSON, UTF-8); audited as a ``transcript_read`` of kind export."""
        ref = self._subject_ref(subject_id, principal, conversation_id)
        document = await self._run(
            lambda: export_subject(
                self._audit.engine, self._keys, self._audit, ref, actor=caller.principal, rpc="ExportSubject"
            )
        )
        return json.dumps(document, ensure_ascii=False, sort_keys=True).encode("utf-8")

    async def erase_subject(
        self, caller: Caller, *, subject_id: str, principal: str, conversation_id: str
    ) -> ErasureResult:
        """Erase a subject named by ``subject_id``, or the anonymous subject of (principal, conversation)."""
        ref = self._subject_ref(subject_id, principal, conversation_id)
        return await self._run(lambda: self._subjects.erase(ref, actor=caller.principal, rpc="EraseSubject"))
