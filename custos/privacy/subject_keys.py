"""Per-subject keys: the middle of the key hierarchy (master key -> subject key -> data key).

Each subject (a customer's ``subject_id``, or the anonymous subject of one conversation) gets a random
256-bit key the first time something of theirs is sealed. It is stored only wrapped (RFC 5649) by a master
key version, in ``subject_keys``. Rotating the master key therefore rewraps one short row per subject and
never touches the transcripts; erasing a subject deletes its row, after which nothing sealed for it opens.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from custos.audit.db import read_only, translate_db_errors
from custos.audit.models import SubjectKeyRow
from custos.privacy.envelope import SubjectKey
from custos.privacy.errors import SubjectKeyMissing
from custos.privacy.keys import KEY_BYTES, MasterKeyProvider, blind_index

SUBJECT_KEY_VERSION = 1


def subject_ref_of(keys: MasterKeyProvider, subject_id: str) -> str:
    """The blind index of a customer's ``subject_id`` (what audit rows and subject keys are keyed by)."""
    return blind_index(keys.index_key(), "subject", subject_id)


def anonymous_subject_ref(keys: MasterKeyProvider, principal: str, conversation_id: str) -> str:
    """The subject of a request without ``subject_id``: scoped to the caller's conversation."""
    return blind_index(keys.index_key(), "subject", f"anonymous\x00{principal}\x00{conversation_id}")


class SubjectKeyStore:
    """Creates, unwraps, rewraps and destroys subject keys; the master keys stay inside the provider."""

    def __init__(
        self,
        engine: Engine,
        keys: MasterKeyProvider,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._keys = keys
        self._clock = clock

    @property
    def master_keys(self) -> MasterKeyProvider:
        """The provider that wraps subject keys."""
        return self._keys

    def get(self, subject_ref: str) -> SubjectKey:
        """Return the subject's key; SubjectKeyMissing if it was erased (or never existed)."""
        with read_only(self._engine) as conn:
            row = conn.execute(
                select(SubjectKeyRow).where(SubjectKeyRow.subject_ref == subject_ref)
            ).one_or_none()
        if row is None:
            raise SubjectKeyMissing(
                "the subject has no key: it was erased, or nothing was ever sealed for it"
            )
        return self._unwrap(row)

    def get_or_create(self, subject_ref: str) -> SubjectKey:
        """Return the subject's key, creating (and storing, wrapped) a fresh one on first use."""
        with read_only(self._engine) as conn:
            row = conn.execute(
                select(SubjectKeyRow).where(SubjectKeyRow.subject_ref == subject_ref)
            ).one_or_none()
        if row is not None:
            return self._unwrap(row)
        key = secrets.token_bytes(KEY_BYTES)
        version = self._keys.current_version
        try:
            with translate_db_errors(), self._engine.begin() as conn:
                conn.execute(
                    insert(SubjectKeyRow).values(
                        subject_ref=subject_ref,
                        key_version=SUBJECT_KEY_VERSION,
                        master_version=version,
                        wrapped_key=self._keys.wrap(version, key),
                        created_at=self._clock(),
                        rewrapped_at=None,
                    )
                )
        except IntegrityError:
            return self.get(subject_ref)  # a concurrent request created it first: use theirs
        return SubjectKey(subject_ref=subject_ref, version=SUBJECT_KEY_VERSION, key=key)

    def erase(self, subject_ref: str, *, created_before: datetime | None = None) -> bool:
        """Destroy the subject's key; True if there was one. Everything sealed for it is unreadable after.

        With ``created_before``, only a key created before then is destroyed (re-applying an erasure keeps
        the key of a customer who came back after it).
        """
        statement = delete(SubjectKeyRow).where(SubjectKeyRow.subject_ref == subject_ref)
        if created_before is not None:
            statement = statement.where(SubjectKeyRow.created_at < created_before)
        with translate_db_errors(), self._engine.begin() as conn:
            result = conn.execute(statement)
        return bool(result.rowcount)

    def usage(self) -> dict[int, int]:
        """Subject keys per master key version."""
        with read_only(self._engine) as conn:
            rows = conn.execute(
                select(SubjectKeyRow.master_version, func.count()).group_by(SubjectKeyRow.master_version)
            ).all()
        return {int(version): int(count) for version, count in rows}

    def pending_rewrap(self) -> int:
        """Subject keys not yet wrapped by the primary master key version."""
        primary = self._keys.current_version
        return sum(count for version, count in self.usage().items() if version != primary)

    def rewrap(self, *, batch_size: int = 200, progress: Callable[[int], None] | None = None) -> int:
        """Rewrap every subject key to the primary master version; return how many were moved.

        Works in batches, each committed on its own, and only selects keys still on another version, so an
        interrupted run is resumed by running it again. Each update is a compare-and-swap on the old version,
        so a concurrent rewrap or erasure is never undone.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        primary = self._keys.current_version
        moved = 0
        after = ""
        while True:
            with read_only(self._engine) as conn:
                rows = conn.execute(
                    select(SubjectKeyRow)
                    .where(SubjectKeyRow.master_version != primary, SubjectKeyRow.subject_ref > after)
                    .order_by(SubjectKeyRow.subject_ref)
                    .limit(batch_size)
                ).all()
            if not rows:
                return moved
            now = self._clock()
            with translate_db_errors(), self._engine.begin() as conn:
                for row in rows:
                    key = self._keys.unwrap(row.master_version, row.wrapped_key)
                    written = conn.execute(
                        update(SubjectKeyRow)
                        .where(
                            SubjectKeyRow.subject_ref == row.subject_ref,
                            SubjectKeyRow.master_version == row.master_version,
                        )
                        .values(
                            master_version=primary,
                            wrapped_key=self._keys.wrap(primary, key),
                            rewrapped_at=now,
                        )
                    )
                    moved += int(written.rowcount or 0)
            after = rows[-1].subject_ref
            if progress is not None:
                progress(len(rows))

    def _unwrap(self, row: Any) -> SubjectKey:
        # KeyNotFound / KeyRetired for a master version this process does not hold or no longer accepts.
        key = self._keys.unwrap(row.master_version, row.wrapped_key)
        return SubjectKey(subject_ref=row.subject_ref, version=row.key_version, key=key)
