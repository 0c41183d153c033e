"""Erasure, retention and the right of access over the key hierarchy, the vault and the transcripts.

Erasing a subject deletes the placeholder map of every conversation the subject took part in (whoever
sealed it last, and maps an earlier release sealed under the master key alone), the comments of feedback on
its requests and its stored idempotency replies, and destroys its subject key, so its transcripts can no
longer be opened. It is audited and appended to an erasure ledger kept beside the audit checkpoints. The
ledger is re-applied at every start, so restoring a database backup taken before an erasure cannot bring
the erased subject's data back; only what was written before the recorded erasure is destroyed again, so a
customer who came back after their erasure keeps their new data.
Transcripts past retention are deleted with their wrapped data keys; a subject export hands over everything
held about one subject. Every step is audited; the audit chain refers to what is destroyed by id only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Select, delete, func, select, union, update

from custos.audit.db import read_only, translate_db_errors
from custos.audit.events import AuditEvent
from custos.audit.models import AuditRecordRow, FeedbackRow, TranscriptRow
from custos.audit.store import AuditStore
from custos.privacy.errors import PrivacyError
from custos.privacy.keys import MasterKeyProvider
from custos.privacy.replies import erase_subject_replies
from custos.privacy.subject_keys import SubjectKeyStore
from custos.privacy.transcripts import open_transcript
from custos.privacy.vault import ConversationVault

ERASURE_LEDGER_FILE = "erasure-ledger.jsonl"


class ErasureLedger:
    """Append-only JSON lines of erased subject references (blind indexes, never identifiers), fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def beside_checkpoints(cls, data_dir: Path) -> ErasureLedger:
        """The ledger in the data directory, next to the audit checkpoint file."""
        return cls(data_dir / ERASURE_LEDGER_FILE)

    def append(self, subject_ref: str, *, record_id: str, erased_at: datetime) -> None:
        """Record one erasure durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        line = json.dumps(
            {"subject_ref": subject_ref, "audit_record": record_id, "erased_at": erased_at.isoformat()},
            sort_keys=True,
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (line + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def subject_refs(self) -> list[str]:
        """Every erased subject reference, in ledger order; a malformed line stops with its number."""
        return [subject_ref for subject_ref, _ in self.entries()]

    def entries(self) -> list[tuple[str, datetime | None]]:
        """(subject reference, time of erasure) per line, in ledger order; the time is None if unreadable.

        A malformed line (no JSON object with a subject reference) stops with its number.
        """
        if not self.path.exists():
            return []
        found: list[tuple[str, datetime | None]] = []
        for number, line in enumerate(self.path.read_text("ascii").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                subject_ref = str(entry["subject_ref"])
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"erasure ledger {self.path} line {number} is malformed") from None
            found.append((subject_ref, _aware(entry.get("erased_at"))))
        return found

    def last_erasures(self) -> dict[str, datetime | None]:
        """The latest erasure time of each erased subject; None (time unknown) covers everything."""
        latest: dict[str, datetime | None] = {}
        for subject_ref, erased_at in self.entries():
            if subject_ref not in latest:
                latest[subject_ref] = erased_at
            elif (previous := latest[subject_ref]) is not None:
                latest[subject_ref] = None if erased_at is None else max(previous, erased_at)
        return latest


def _aware(value: object) -> datetime | None:
    """A ledger timestamp as an aware UTC datetime, or None when it is missing or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class ErasureResult:
    """What one erasure destroyed."""

    subject_ref: str
    subject_key_destroyed: bool
    vault_rows_deleted: int
    transcripts_unreadable: int
    record_id: str | None
    feedback_comments_erased: int = 0


@dataclass(frozen=True)
class _Destroyed:
    key: bool
    vault_rows: int
    comments: int
    replies: int


class SubjectService:
    """Right to erasure over the database, the subject keys and the ledger."""

    def __init__(
        self,
        engine: Engine,
        keys: MasterKeyProvider,
        audit: AuditStore,
        ledger: ErasureLedger,
        *,
        vault_ttl_seconds: int = 3600,
    ) -> None:
        self._engine = engine
        self._keys = keys
        self._audit = audit
        self._ledger = ledger
        self.subject_keys = SubjectKeyStore(engine, keys)
        self._vault = ConversationVault(
            engine, keys, ttl_seconds=vault_ttl_seconds, subject_keys=self.subject_keys
        )

    def _destroy(self, subject_ref: str, *, before: datetime | None = None) -> _Destroyed:
        """Delete what is held for the subject (only what was written before ``before``, when given).

        The maps, comments and replies go first and the key last: a request racing the erasure either
        finds its map gone or seals under the key that is about to be destroyed.
        """
        vault_rows = self._vault.erase_subject(
            subject_ref, conversations=_conversations_of(subject_ref), before=before
        )
        requests = select(AuditRecordRow.request_id).where(AuditRecordRow.subject_ref == subject_ref)
        comments = (
            update(FeedbackRow)
            .where(FeedbackRow.request_id.in_(requests), FeedbackRow.comment.is_not(None))
            .values(comment=None)
        )
        if before is not None:
            comments = comments.where(FeedbackRow.created_at < before)
        with translate_db_errors(), self._engine.begin() as conn:
            erased_comments = int(conn.execute(comments).rowcount or 0)
        deleted_replies = erase_subject_replies(self._engine, subject_ref, before=before)
        destroyed = self.subject_keys.erase(subject_ref, created_before=before)
        return _Destroyed(destroyed, vault_rows, erased_comments, deleted_replies)

    def erase(self, subject_ref: str, *, actor: str, rpc: str) -> ErasureResult:
        """Destroy what is held for the subject, audit it, and append it to the ledger."""
        started = datetime.now(UTC)
        destroyed = self._destroy(subject_ref)
        with read_only(self._engine) as conn:
            transcripts = int(
                conn.execute(
                    select(func.count())
                    .select_from(TranscriptRow)
                    .where(TranscriptRow.subject_ref == subject_ref)
                ).scalar_one()
            )
        details = {
            "subject_key_destroyed": destroyed.key,
            "vault_rows_deleted": destroyed.vault_rows,
            "transcripts_unreadable": transcripts,
            "feedback_comments_erased": destroyed.comments,
            "idempotency_replies_deleted": destroyed.replies,
        }
        record = self._audit.append(
            AuditEvent.single(
                "erase_subject",
                actor=actor,
                rpc=rpc,
                details=details,
                started=started,
                subject_ref=subject_ref,
            )
        )
        # The erasure time is taken before anything was destroyed: whatever exists for the subject at a
        # later start and was written before it is what a restored backup brought back.
        self._ledger.append(subject_ref, record_id=record.id, erased_at=started)
        return ErasureResult(
            subject_ref=subject_ref,
            subject_key_destroyed=destroyed.key,
            vault_rows_deleted=destroyed.vault_rows,
            transcripts_unreadable=transcripts,
            record_id=record.id,
            feedback_comments_erased=destroyed.comments,
        )

    def reapply_ledger(self) -> int:
        """Destroy again what a restored database brought back for erased subjects; return how many.

        Only what was written before a subject's latest recorded erasure is destroyed: a key, map,
        comment or reply created after it belongs to a customer who came back.
        """
        restored = 0
        for subject_ref, erased_at in self._ledger.last_erasures().items():
            destroyed = self._destroy(subject_ref, before=erased_at)
            restored += int(destroyed.key) + destroyed.vault_rows + destroyed.comments + destroyed.replies
        return restored


def _conversations_of(subject_ref: str) -> Select[tuple[str | None]]:
    """The conversations the subject took part in: its transcripts and its served (status OK) records.

    Refused calls are left out: a call refused in someone else's conversation never touched its map.
    """
    records = select(AuditRecordRow.conversation_ref).where(
        AuditRecordRow.subject_ref == subject_ref,
        AuditRecordRow.status == "OK",
        AuditRecordRow.conversation_ref.is_not(None),
    )
    transcripts = select(TranscriptRow.conversation_ref).where(
        TranscriptRow.subject_ref == subject_ref, TranscriptRow.conversation_ref.is_not(None)
    )
    return select(union(records, transcripts).subquery().c.conversation_ref)


def purge_transcripts(
    engine: Engine,
    audit: AuditStore,
    *,
    older_than: datetime,
    actor: str,
    rpc: str,
    batch_size: int = 500,
) -> int:
    """Delete transcripts created before ``older_than`` (their wrapped data keys go with the rows); audited.

    The audit chain refers to transcripts by id only, so it still verifies. Returns how many were deleted;
    nothing is recorded when there was nothing to delete.
    """
    started = datetime.now(UTC)
    deleted = 0
    while True:
        with translate_db_errors(), engine.begin() as conn:
            ids = (
                conn.execute(
                    select(TranscriptRow.id).where(TranscriptRow.created_at < older_than).limit(batch_size)
                )
                .scalars()
                .all()
            )
            if not ids:
                break
            conn.execute(delete(TranscriptRow).where(TranscriptRow.id.in_(ids)))
        deleted += len(ids)
    if deleted:
        audit.append(
            AuditEvent.single(
                "transcript_purge",
                actor=actor,
                rpc=rpc,
                details={"deleted": deleted, "created_before": older_than.isoformat()},
                started=started,
            )
        )
    return deleted


def export_subject(
    engine: Engine,
    keys: MasterKeyProvider,
    audit: AuditStore,
    subject_ref: str,
    *,
    actor: str,
    rpc: str,
) -> dict[str, Any]:
    """Everything held about one subject: decrypted transcripts and the audit records naming it; audited."""
    started = datetime.now(UTC)
    subject_keys = SubjectKeyStore(engine, keys)
    with read_only(engine) as conn:
        rows = conn.execute(
            select(TranscriptRow)
            .where(TranscriptRow.subject_ref == subject_ref)
            .order_by(TranscriptRow.created_at)
        ).all()
    transcripts = []
    unreadable = 0
    for row in rows:
        try:
            document = json.loads(
                open_transcript(
                    row.ciphertext,
                    transcript_id=row.id,
                    conversation_ref=row.conversation_ref,
                    subject_ref=row.subject_ref,
                    keys=keys,
                    subject_keys=subject_keys,
                )
            )
        except PrivacyError:
            unreadable += 1
            continue
        transcripts.append({"id": row.id, "created_at": row.created_at.isoformat(), **document})
    records: list[Any] = []
    token: str | None = None
    while True:
        page, token = audit.query(subject_ref=subject_ref, page_size=500, page_token=token)
        records.extend(json.loads(r.payload_json) for r in page)
        if token is None:
            break
    record = audit.append(
        AuditEvent.single(
            "transcript_read",
            actor=actor,
            rpc=rpc,
            started=started,
            subject_ref=subject_ref,
            details={
                "kind": "subject_export",
                "transcripts": len(transcripts),
                "unreadable": unreadable,
                "audit_records": len(records),
            },
        )
    )
    return {
        "subject_ref": subject_ref,
        "exported_at": started.isoformat(),
        "export_record": record.id,
        "transcripts": transcripts,
        "unreadable_transcripts": unreadable,
        "audit_records": list(reversed(records)),
    }
