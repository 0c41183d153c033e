"""Erasure, retention and the right of access over the key hierarchy, the vault and the transcripts.

Erasing a subject destroys its subject key and vault rows (its transcripts can no longer be opened), audits
it, and appends it to an erasure ledger kept beside the audit checkpoints. The ledger is re-applied at every
start, so restoring a database backup taken before an erasure cannot bring the erased subject's data back.
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

from sqlalchemy import Engine, delete, func, select

from custos.audit.db import translate_db_errors
from custos.audit.events import AuditEvent
from custos.audit.models import TranscriptRow
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
        if not self.path.exists():
            return []
        refs: list[str] = []
        for number, line in enumerate(self.path.read_text("ascii").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                refs.append(str(json.loads(line)["subject_ref"]))
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"erasure ledger {self.path} line {number} is malformed") from None
        return refs


@dataclass(frozen=True)
class ErasureResult:
    """What one erasure destroyed."""

    subject_ref: str
    subject_key_destroyed: bool
    vault_rows_deleted: int
    transcripts_unreadable: int
    record_id: str | None


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

    def _destroy(self, subject_ref: str) -> tuple[bool, int]:
        destroyed = self.subject_keys.erase(subject_ref)
        self._delete_stored_replies(subject_ref)
        return destroyed, self._vault.erase_subject(subject_ref)

    def _delete_stored_replies(self, subject_ref: str) -> int:
        """Delete the subject's stored idempotency replies and pending claims (see privacy/replies.py)."""
        return erase_subject_replies(self._engine, subject_ref)

    def erase(self, subject_ref: str, *, actor: str, rpc: str) -> ErasureResult:
        """Destroy the subject's key and vault rows, audit it, and append it to the ledger."""
        started = datetime.now(UTC)
        destroyed, vault_rows = self._destroy(subject_ref)
        with translate_db_errors(), self._engine.connect() as conn:
            transcripts = int(
                conn.execute(
                    select(func.count())
                    .select_from(TranscriptRow)
                    .where(TranscriptRow.subject_ref == subject_ref)
                ).scalar_one()
            )
        details = {
            "subject_key_destroyed": destroyed,
            "vault_rows_deleted": vault_rows,
            "transcripts_unreadable": transcripts,
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
        self._ledger.append(subject_ref, record_id=record.id, erased_at=started)
        return ErasureResult(
            subject_ref=subject_ref,
            subject_key_destroyed=destroyed,
            vault_rows_deleted=vault_rows,
            transcripts_unreadable=transcripts,
            record_id=record.id,
        )

    def reapply_ledger(self) -> int:
        """Destroy again whatever a restored database brought back for erased subjects; return how many."""
        restored = 0
        for subject_ref in self._ledger.subject_refs():
            destroyed, vault_rows = self._destroy(subject_ref)
            restored += int(destroyed) + vault_rows
        return restored


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
    with translate_db_errors(), engine.connect() as conn:
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
