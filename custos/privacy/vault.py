"""The conversation vault: each conversation's placeholder map, sealed at rest, with an expiry.

One row per (caller principal, conversation id), addressed by the blind index the audit trail uses, so
nothing is shared across callers or conversations. The map is sealed for the conversation's subject (envelope
format 2: a fresh data key wrapped by the subject's key) and bound to the table, the row, its version and the
subject, so a blob copied to another row or replayed at an older version fails to open, and erasing the
subject makes the map unreadable. Maps sealed in format 1 (master-key wrapped) stay readable.

A row keeps the subject it was created with: while it is live, an update for another subject is refused
(:class:`SubjectMismatch`), so one subject's values are never re-sealed under another's key. A vault with a
subject key store seals every write for a subject, never under the master key alone; a format-1 row left by
an earlier release is re-sealed for the subject of its next update.

Concurrent requests of one conversation stay consistent: the read-extend-write runs in one transaction that
locks the row (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), and the write is a
compare-and-swap on ``version`` besides; a writer that loses re-reads and repeats its (pure) update. Two
requests that introduce the same new value therefore end up with the same placeholder, and no placeholder
number is ever issued twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, Select, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from custos.audit.db import read_only, translate_db_errors
from custos.audit.models import ConversationVaultRow
from custos.privacy.envelope import (
    FORMAT_SUBJECT,
    RowBinding,
    SubjectKey,
    bind_aad,
    open_for_subject,
    open_sealed,
    read_header,
    seal,
    seal_for_subject,
)
from custos.privacy.errors import DecryptionFailed, PrivacyError
from custos.privacy.keys import MasterKeyProvider
from custos.privacy.pseudonymize import PlaceholderMap
from custos.privacy.subject_keys import SubjectKeyStore

T = TypeVar("T")
VAULT_TABLE = "conversation_vault"
MAX_ATTEMPTS = 16


class VaultConflict(PrivacyError):
    """Concurrent writers kept changing one conversation's row; the request may be retried."""


class SubjectMismatch(PrivacyError):
    """The conversation's live map belongs to another subject than the update's; nothing was written."""


def vault_aad(conversation_ref: str, version: int) -> bytes:
    """Associated data binding a format-1 sealed map to its row and version."""
    return bind_aad(VAULT_TABLE, conversation_ref, str(version))


def vault_binding(conversation_ref: str, version: int, subject_ref: str) -> RowBinding:
    """The row binding of a format-2 sealed map: row, version and subject."""
    return RowBinding(table=VAULT_TABLE, record_id=f"{conversation_ref}#{version}", subject_ref=subject_ref)


@dataclass(frozen=True)
class VaultUpdate:
    """What ``ConversationVault.update`` did: the version written and whether the old map had expired."""

    version: int
    expired: bool
    entries: int


class ConversationVault:
    """Reads and writes sealed placeholder maps; ``ttl_seconds`` after the last write, a map is forgotten."""

    def __init__(
        self,
        engine: Engine,
        keys: MasterKeyProvider,
        *,
        ttl_seconds: int,
        subject_keys: SubjectKeyStore | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``subject_keys`` seals maps for their subject; without it (or a subject) maps use format 1."""
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._engine = engine
        self._keys = keys
        self._subject_keys = subject_keys
        self._ttl = timedelta(seconds=ttl_seconds)
        self._clock = clock

    def load(self, conversation_ref: str) -> PlaceholderMap:
        """Return the conversation's current map (empty when there is none or it expired)."""
        with read_only(self._engine) as conn:
            row = conn.execute(
                select(ConversationVaultRow).where(ConversationVaultRow.conversation_ref == conversation_ref)
            ).one_or_none()
        if row is None or row.expires_at <= self._clock():
            return PlaceholderMap()
        return self._open(conversation_ref, row.version, row.ciphertext, row.subject_ref)

    def update(
        self,
        conversation_ref: str,
        apply: Callable[[PlaceholderMap], T],
        *,
        subject_ref: str | None = None,
    ) -> tuple[T, VaultUpdate]:
        """Run ``apply`` on the conversation's map and store the result atomically.

        ``apply`` may run more than once (after a concurrent write) and must only depend on the map it gets.
        With a subject key store the map is sealed with ``subject_ref``'s key (required then), and a live row
        of another subject raises :class:`SubjectMismatch`; without one, maps use format 1.
        """
        subject_key = None
        if self._subject_keys is not None:
            if subject_ref is None:
                raise ValueError("this vault seals every map for a subject: subject_ref is required")
            # Read before the row is locked: on SQLite a second connection inside the write transaction
            # would wait for the lock this transaction holds.
            subject_key = self._subject_keys.get_or_create(subject_ref)
        for _attempt in range(MAX_ATTEMPTS):
            with translate_db_errors(), self._engine.begin() as conn:
                # FOR UPDATE locks the row on PostgreSQL; SQLite's BEGIN IMMEDIATE serialises writers anyway.
                row = conn.execute(
                    select(ConversationVaultRow)
                    .where(ConversationVaultRow.conversation_ref == conversation_ref)
                    .with_for_update()
                ).one_or_none()
                now = self._clock()
                expired = row is not None and row.expires_at <= now
                if row is None or expired:
                    mapping = PlaceholderMap()  # an expired map is forgotten, and so is its subject
                else:
                    if subject_key is not None and row.subject_ref not in (None, subject_key.subject_ref):
                        raise SubjectMismatch("the conversation's placeholder map belongs to another subject")
                    mapping = self._open(
                        conversation_ref, row.version, row.ciphertext, row.subject_ref, subject_key
                    )
                result = apply(mapping)
                version = 1 if row is None else row.version + 1
                document = json.dumps(mapping.to_dict(), ensure_ascii=False).encode()
                if subject_key is not None:
                    blob = seal_for_subject(
                        document,
                        binding=vault_binding(conversation_ref, version, subject_key.subject_ref),
                        subject_key=subject_key,
                    )
                else:
                    blob = seal(document, aad=vault_aad(conversation_ref, version), keys=self._keys)
                values = {
                    "version": version,
                    "updated_at": now,
                    "expires_at": now + self._ttl,
                    "key_version": read_header(blob).key_version,
                    "ciphertext": blob,
                    "subject_ref": subject_key.subject_ref if subject_key is not None else None,
                }
                if row is None:
                    try:
                        with conn.begin_nested():
                            conn.execute(
                                insert(ConversationVaultRow).values(
                                    conversation_ref=conversation_ref, **values
                                )
                            )
                    except IntegrityError:
                        continue  # another request created the row first: read it
                else:
                    # Compare-and-swap on the version as well, so correctness never rests on the lock alone.
                    written = conn.execute(
                        update(ConversationVaultRow)
                        .where(
                            ConversationVaultRow.conversation_ref == conversation_ref,
                            ConversationVaultRow.version == row.version,
                        )
                        .values(**values)
                    )
                    if written.rowcount != 1:
                        continue
            return result, VaultUpdate(version=version, expired=expired, entries=len(mapping))
        raise VaultConflict(f"conversation vault row changed {MAX_ATTEMPTS} times during one update")

    def purge_expired(self) -> int:
        """Delete expired rows; return how many."""
        with translate_db_errors(), self._engine.begin() as conn:
            result = conn.execute(
                delete(ConversationVaultRow).where(ConversationVaultRow.expires_at <= self._clock())
            )
        return int(result.rowcount or 0)

    def erase_subject(
        self,
        subject_ref: str,
        *,
        conversations: Select[Any] | None = None,
        before: datetime | None = None,
    ) -> int:
        """Delete every map sealed for ``subject_ref`` or of one of ``conversations``; return how many.

        ``conversations`` selects conversation references (the subject's conversations, whoever sealed their
        map last); ``before`` keeps maps written at or after it (what came after an erasure).
        """
        matches = ConversationVaultRow.subject_ref == subject_ref
        if conversations is not None:
            matches = or_(matches, ConversationVaultRow.conversation_ref.in_(conversations))
        statement = delete(ConversationVaultRow).where(matches)
        if before is not None:
            statement = statement.where(ConversationVaultRow.updated_at < before)
        with translate_db_errors(), self._engine.begin() as conn:
            result = conn.execute(statement)
        return int(result.rowcount or 0)

    def _open(
        self,
        conversation_ref: str,
        version: int,
        blob: bytes,
        subject_ref: str | None,
        subject_key: SubjectKey | None = None,
    ) -> PlaceholderMap:
        if read_header(blob).format_version == FORMAT_SUBJECT:
            if subject_ref is None or self._subject_keys is None:
                raise DecryptionFailed("a subject-key vault row cannot be opened without its subject key")
            plaintext = open_for_subject(
                blob,
                binding=vault_binding(conversation_ref, version, subject_ref),
                subject_key=subject_key if subject_key is not None else self._subject_keys.get(subject_ref),
            )
        else:
            plaintext = open_sealed(blob, aad=vault_aad(conversation_ref, version), keys=self._keys)
        try:
            data = json.loads(plaintext)
        except ValueError:
            raise PrivacyError("conversation vault row does not hold JSON") from None
        if not isinstance(data, dict):
            raise PrivacyError("conversation vault row does not hold an object")
        return PlaceholderMap.from_dict(data)
