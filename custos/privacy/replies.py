"""Stored idempotency replies at rest: sealed for their subject, bounded in time, erased with the subject.

A reply holds an answer (possibly re-identified), so it is kept like a transcript: a fresh data key wrapped by
the subject's key (envelope format 2), bound to the ``idempotency_keys`` row and the subject. Erasing the
subject deletes its rows (:func:`erase_subject_replies`) and its key shreds any that a racing writer left;
rows expire (``expires_at``) and are deleted by the housekeeping (:func:`purge_expired_replies`) and by the
transcript retention (:func:`purge_replies_before`). Replies of the previous release, sealed by a master key
(format 1), stay readable until ``custos keys rewrap`` reseals them for their subject
(:func:`reseal_legacy_replies`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, delete, func, or_, select, update

from custos.audit.db import read_only, translate_db_errors
from custos.audit.models import AuditRecordRow, IdempotencyRow
from custos.privacy.envelope import (
    FORMAT_SUBJECT,
    FORMAT_VERSION,
    RowBinding,
    SubjectKey,
    open_for_subject,
    open_sealed,
    read_header,
    seal_for_subject,
)
from custos.privacy.errors import DecryptionFailed, SubjectKeyMissing
from custos.privacy.keys import MasterKeyProvider
from custos.privacy.subject_keys import SubjectKeyStore

REPLY_TABLE = "idempotency_keys"


def legacy_reply_aad(key_ref: str) -> bytes:
    """Associated data of a format-1 reply (sealed by a master key, as releases before revision 0007 did)."""
    return f"custos:{REPLY_TABLE}:v1:{key_ref}".encode()


def reply_binding(key_ref: str, subject_ref: str) -> RowBinding:
    """The row binding of a format-2 reply: its key reference and subject."""
    return RowBinding(table=REPLY_TABLE, record_id=key_ref, subject_ref=subject_ref)


@dataclass(frozen=True)
class SealedReply:
    """A reply sealed for its subject, with the header facts its row records."""

    ciphertext: bytes
    format_version: int
    key_version: int


def seal_reply(plaintext: bytes, *, key_ref: str, subject_key: SubjectKey) -> SealedReply:
    """Seal a reply document for the subject of ``subject_key``."""
    blob = seal_for_subject(
        plaintext, binding=reply_binding(key_ref, subject_key.subject_ref), subject_key=subject_key
    )
    header = read_header(blob)
    return SealedReply(ciphertext=blob, format_version=header.format_version, key_version=header.key_version)


def open_reply(
    blob: bytes,
    *,
    key_ref: str,
    subject_ref: str | None,
    keys: MasterKeyProvider,
    subject_keys: SubjectKeyStore,
) -> bytes:
    """Open a stored reply of either format.

    Raises SubjectKeyMissing when the subject was erased, KeyNotFound/KeyRetired for a master version not
    held or retired (format 1), DecryptionFailed for anything tampered or moved between rows.
    """
    header = read_header(blob)
    if header.format_version == FORMAT_VERSION:
        return open_sealed(blob, aad=legacy_reply_aad(key_ref), keys=keys)
    if header.format_version == FORMAT_SUBJECT:
        if not subject_ref:
            raise DecryptionFailed("a subject-key reply row has no subject reference")
        return open_for_subject(
            blob, binding=reply_binding(key_ref, subject_ref), subject_key=subject_keys.get(subject_ref)
        )
    raise DecryptionFailed(f"unsupported envelope format version {header.format_version}")


def erase_subject_replies(engine: Engine, subject_ref: str, *, before: datetime | None = None) -> int:
    """Delete every stored reply (and pending claim) of the subject; return how many rows.

    Rows are found by their subject, and rows of the previous release without one by their request's audit
    records naming the subject. With ``before``, only rows created before it (a re-applied erasure).
    """
    requests = select(AuditRecordRow.request_id).where(AuditRecordRow.subject_ref == subject_ref)
    statement = delete(IdempotencyRow).where(
        or_(
            IdempotencyRow.subject_ref == subject_ref,
            IdempotencyRow.subject_ref.is_(None) & IdempotencyRow.request_id.in_(requests),
        )
    )
    if before is not None:
        statement = statement.where(IdempotencyRow.created_at < before)
    with translate_db_errors(), engine.begin() as conn:
        deleted = conn.execute(statement)
    return int(deleted.rowcount or 0)


def purge_expired_replies(engine: Engine, *, now: datetime) -> int:
    """Delete rows past ``expires_at`` (completed replies and abandoned claims); return how many."""
    with translate_db_errors(), engine.begin() as conn:
        deleted = conn.execute(delete(IdempotencyRow).where(IdempotencyRow.expires_at <= now))
    return int(deleted.rowcount or 0)


def purge_replies_before(engine: Engine, *, older_than: datetime) -> int:
    """Delete replies created before ``older_than`` (transcript retention: a reply never outlives them)."""
    with translate_db_errors(), engine.begin() as conn:
        deleted = conn.execute(delete(IdempotencyRow).where(IdempotencyRow.created_at < older_than))
    return int(deleted.rowcount or 0)


@dataclass(frozen=True)
class ReplyUsage:
    """Stored replies by how they are sealed: for a subject, or (legacy) by master key version."""

    subject_sealed: int
    legacy_by_master_version: dict[int, int]

    @property
    def legacy(self) -> int:
        """Replies still sealed by a master key alone."""
        return sum(self.legacy_by_master_version.values())


def reply_usage(engine: Engine) -> ReplyUsage:
    """Count stored replies by envelope format (and master key version for format 1)."""
    with read_only(engine) as conn:
        rows = conn.execute(
            select(IdempotencyRow.format_version, IdempotencyRow.key_version, func.count())
            .where(IdempotencyRow.response.is_not(None))
            .group_by(IdempotencyRow.format_version, IdempotencyRow.key_version)
        ).all()
    subject = 0
    legacy: dict[int, int] = {}
    for format_version, key_version, count in rows:
        if format_version == FORMAT_SUBJECT:
            subject += int(count)
        else:
            version = int(key_version) if key_version is not None else 0
            legacy[version] = legacy.get(version, 0) + int(count)
    return ReplyUsage(subject_sealed=subject, legacy_by_master_version=legacy)


@dataclass(frozen=True)
class ResealResult:
    """What :func:`reseal_legacy_replies` did."""

    resealed: int
    dropped: int


def reseal_legacy_replies(
    engine: Engine,
    keys: MasterKeyProvider,
    subject_keys: SubjectKeyStore,
    *,
    batch_size: int = 200,
    progress: Callable[[int], None] | None = None,
) -> ResealResult:
    """Reseal every master-key (format 1) reply for its subject, so no reply depends on a master key alone.

    A reply whose subject is unknown or erased, or that no longer opens, is deleted instead (it is a cached
    answer; its request's audit records stay). Each update is a compare-and-swap on the old ciphertext, so a
    concurrent erasure or replacement is never undone; an interrupted run is resumed by running it again.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    resealed = dropped = 0
    after = ""
    legacy = or_(IdempotencyRow.format_version.is_(None), IdempotencyRow.format_version != FORMAT_SUBJECT)
    while True:
        with read_only(engine) as conn:
            rows = conn.execute(
                select(IdempotencyRow.key_ref, IdempotencyRow.subject_ref, IdempotencyRow.response)
                .where(IdempotencyRow.response.is_not(None), legacy, IdempotencyRow.key_ref > after)
                .order_by(IdempotencyRow.key_ref)
                .limit(batch_size)
            ).all()
        if not rows:
            return ResealResult(resealed=resealed, dropped=dropped)
        for key_ref, subject_ref, stored in rows:
            assert stored is not None  # selected by ``response IS NOT NULL``
            blob = bytes(stored)
            sealed: SealedReply | None = None
            try:
                if read_header(blob).format_version == FORMAT_VERSION and subject_ref is not None:
                    plaintext = open_sealed(blob, aad=legacy_reply_aad(key_ref), keys=keys)
                    sealed = seal_reply(plaintext, key_ref=key_ref, subject_key=subject_keys.get(subject_ref))
            except (DecryptionFailed, SubjectKeyMissing):
                sealed = None
            with translate_db_errors(), engine.begin() as conn:
                unchanged = (IdempotencyRow.key_ref == key_ref) & (IdempotencyRow.response == stored)
                if sealed is None:
                    dropped += int(conn.execute(delete(IdempotencyRow).where(unchanged)).rowcount or 0)
                    continue
                written = conn.execute(
                    update(IdempotencyRow)
                    .where(unchanged)
                    .values(
                        response=sealed.ciphertext,
                        format_version=sealed.format_version,
                        key_version=sealed.key_version,
                    )
                )
                resealed += int(written.rowcount or 0)
        after = rows[-1][0]
        if progress is not None:
            progress(len(rows))
