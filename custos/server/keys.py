"""Key management shared by the server and the ``custos keys`` / ``custos subjects`` commands.

Opens the configured master key provider, lists every key Custos uses, and erases subjects: the subject key
and vault rows are destroyed, the erasure is audited and appended to an erasure ledger kept beside the audit
checkpoints. The ledger is re-applied at every start, so restoring a database backup taken before an erasure
cannot bring the erased subject's data back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, func, select

from custos.audit.checkpoints import SIGNING_KEY_FILE
from custos.audit.db import translate_db_errors
from custos.audit.events import AuditEvent
from custos.audit.models import (
    AuditRecordRow,
    ConversationVaultRow,
    IdempotencyRow,
    SubjectKeyRow,
    TranscriptRow,
)
from custos.audit.store import AuditStore
from custos.privacy.errors import KeyFileError, PrivacyError
from custos.privacy.keys import (
    EnvKeyProvider,
    FileKeyProvider,
    MasterKeyProvider,
    RetiringKeyProvider,
    blind_index,
)
from custos.privacy.subject_keys import SubjectKeyStore
from custos.privacy.vault import ConversationVault
from custos.server.settings import Settings

ERASURE_LEDGER_FILE = "erasure-ledger.jsonl"


def open_master_keys(settings: Settings, *, create: bool = True) -> MasterKeyProvider:
    """The configured provider, refusing retired versions below ``key_min_decrypt_version``.

    ``create`` makes the key file on first start (file provider only); the other providers must be set up
    with ``custos keys init`` (PKCS#11) or by the operator (environment).
    """
    provider = open_raw_provider(settings, create=create)
    return RetiringKeyProvider(provider, min_version=settings.key_min_decrypt_version)


def open_raw_provider(settings: Settings, *, create: bool = True) -> Any:
    """The provider itself (a FileKeyProvider, EnvKeyProvider or Pkcs11KeyProvider), for key commands."""
    if settings.key_provider == "env":
        return EnvKeyProvider.from_environment(settings.key_env_var)
    if settings.key_provider == "pkcs11":
        from custos.privacy.pkcs11_provider import Pkcs11KeyProvider, read_pin

        if settings.pkcs11_module is None or settings.pkcs11_pin_file is None:
            raise KeyFileError("key_provider = 'pkcs11' needs pkcs11_module and pkcs11_pin_file")
        return Pkcs11KeyProvider.open(
            module=settings.pkcs11_module,
            token_label=settings.pkcs11_token_label,
            pin=read_pin(settings.pkcs11_pin_file),
            label=settings.pkcs11_key_label,
        )
    path = settings.resolved_key_file
    if create:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return FileKeyProvider.load_or_create(path)
    return FileKeyProvider.load(path)


def subject_ref_of(keys: MasterKeyProvider, subject_id: str) -> str:
    """The blind index of a customer's ``subject_id`` (what audit rows and subject keys are keyed by)."""
    return blind_index(keys.index_key(), "subject", subject_id)


def anonymous_subject_ref(keys: MasterKeyProvider, principal: str, conversation_id: str) -> str:
    """The subject of a request without ``subject_id``: scoped to the caller's conversation."""
    return blind_index(keys.index_key(), "subject", f"anonymous\x00{principal}\x00{conversation_id}")


# ---- erasure ----------------------------------------------------------------------------------------


class ErasureLedger:
    """Append-only JSON lines of erased subject references (blind indexes, never identifiers), fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def beside_checkpoints(cls, settings: Settings) -> ErasureLedger:
        """The ledger in the data directory, next to the audit checkpoint file."""
        return cls(settings.data_dir / ERASURE_LEDGER_FILE)

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
        """Delete the stored idempotency replies of the subject's requests (sealed by a master key)."""
        requests = select(AuditRecordRow.request_id).where(AuditRecordRow.subject_ref == subject_ref)
        with translate_db_errors(), self._engine.begin() as conn:
            deleted = conn.execute(delete(IdempotencyRow).where(IdempotencyRow.request_id.in_(requests)))
        return int(deleted.rowcount or 0)

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


# ---- inventory --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    """One line of ``custos keys list``."""

    name: str
    provider: str
    created: datetime | None
    use: str


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None


def key_inventory(settings: Settings, keys: MasterKeyProvider, engine: Engine | None) -> list[KeyInfo]:
    """Every key: master versions (and the subject keys each wraps), signing key, index key, subjects."""
    usage: dict[int, int] = {}
    subjects = 0
    oldest: datetime | None = None
    if engine is not None:
        usage = SubjectKeyStore(engine, keys).usage()
        with translate_db_errors(), engine.connect() as conn:
            subjects, oldest = conn.execute(select(func.count(), func.min(SubjectKeyRow.created_at))).one()
            vault_rows = int(
                conn.execute(select(func.count()).select_from(ConversationVaultRow)).scalar_one()
            )
    else:
        vault_rows = 0
    provider = keys.kind
    source_file = settings.resolved_key_file if provider == "file" else None
    created = _mtime(source_file) if source_file is not None else None
    primary = keys.current_version
    minimum = settings.key_min_decrypt_version
    rows = []
    held = keys.inner if isinstance(keys, RetiringKeyProvider) else keys  # retired versions are listed too
    for version in held.versions:
        state = "primary" if version == primary else ("retired" if version < minimum else "decrypt-only")
        rows.append(
            KeyInfo(
                name=f"master key v{version}",
                provider=provider,
                created=created,
                use=f"{state}; wraps {usage.get(version, 0)} subject keys",
            )
        )
    rows.append(
        KeyInfo(
            name="blind-index HMAC key",
            provider=provider,
            created=created,
            use="subject/conversation references in audit rows; never rotated",
        )
    )
    signing = settings.data_dir / SIGNING_KEY_FILE
    rows.append(
        KeyInfo(
            name="audit checkpoint signing key (Ed25519)",
            provider=f"file {signing}",
            created=_mtime(signing),
            use="signs audit checkpoints",
        )
    )
    rows.append(
        KeyInfo(
            name=f"subject keys ({subjects})",
            provider="database, wrapped by master keys",
            created=oldest,
            use=f"wrap data keys of transcripts and {vault_rows} vault rows; deleted on erasure",
        )
    )
    return rows


# ---- retention --------------------------------------------------------------------------------------


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


# ---- right of access --------------------------------------------------------------------------------


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
    from custos.privacy.transcripts import open_transcript

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
