"""SQLAlchemy models of the audit database.

The Alembic revisions under ``migrations/versions`` create exactly these tables; a unit test compares the
migrated schema with this metadata. Chain positions (``seq``) are assigned by the appender under the append
lock, never by a database sequence, so ``seq`` is a plain primary key and ``prev_hash`` is unique: two writers
that somehow raced past the lock cannot both extend the same head (fork guard).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from custos.audit.events import MAX_LENGTHS

__all__ = [
    "AccessTokenRow",
    "AuditRecordRow",
    "Base",
    "ConversationVaultRow",
    "FeedbackRow",
    "IdempotencyRow",
    "SubjectKeyRow",
    "TranscriptRow",
    "UTCDateTime",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware timestamps stored in UTC on every backend.

    SQLite has no timezone type: values are stored as naive UTC text (which also sorts correctly) and come
    back tagged UTC. PostgreSQL stores ``timestamptz``. Naive datetimes are refused on the way in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC; SQLite gets the naive UTC value."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime cannot be stored; use a timezone-aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of the audit tables, with a constraint naming convention for stable migrations."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _str(name: str) -> String:
    return String(MAX_LENGTHS[name])


class AuditRecordRow(Base):
    """One record of the hash chain: typed columns for querying plus the exact hashed payload bytes."""

    __tablename__ = "audit_records"
    __table_args__ = (
        CheckConstraint("phase IN ('request', 'completion', 'event')", name="phase"),
        CheckConstraint("seq > 0", name="seq_positive"),
        # (column, seq): an equality filter and the newest-first keyset order in one index (revision 0008).
        *(
            Index(f"ix_audit_records_{column}_seq", column, "seq")
            for column in (
                "event_type",
                "actor",
                "status",
                "conversation_ref",
                "subject_ref",
                "purpose",
                "retention_class",
            )
        ),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(_str("id"), unique=True)
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    row_hash: Mapped[str] = mapped_column(String(64))
    schema_version: Mapped[int] = mapped_column(Integer)
    event_type: Mapped[str] = mapped_column(_str("event_type"))
    phase: Mapped[str] = mapped_column(_str("phase"))
    request_id: Mapped[str] = mapped_column(_str("request_id"), index=True)
    start_time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    end_time: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(_str("actor"))
    rpc: Mapped[str] = mapped_column(_str("rpc"))
    status: Mapped[str] = mapped_column(_str("status"))
    model: Mapped[str | None] = mapped_column(_str("model"))
    conversation_ref: Mapped[str | None] = mapped_column(_str("conversation_ref"))
    subject_ref: Mapped[str | None] = mapped_column(_str("subject_ref"))
    transcript_id: Mapped[str | None] = mapped_column(_str("transcript_id"), index=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    # Derived from the payload's details for querying (revision 0003); verification checks they agree.
    purpose: Mapped[str | None] = mapped_column(_str("purpose"))
    retention_class: Mapped[str | None] = mapped_column(_str("retention_class"))
    entity_types: Mapped[str | None] = mapped_column(_str("entity_types"))


class TranscriptRow(Base):
    """A sealed (already encrypted) transcript.

    The audit chain refers to it by ``id`` without a foreign key, so purging a transcript leaves the chain
    verifiable.
    """

    __tablename__ = "transcripts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    conversation_ref: Mapped[str | None] = mapped_column(_str("conversation_ref"), index=True)
    subject_ref: Mapped[str | None] = mapped_column(_str("subject_ref"), index=True)
    key_version: Mapped[int] = mapped_column(Integer)
    format_version: Mapped[int] = mapped_column(Integer)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)


class AccessTokenRow(Base):
    """A bearer token ``id.secret``: only the SHA-256 of the secret is stored, looked up by ``id``."""

    __tablename__ = "access_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal: Mapped[str] = mapped_column(String(512))
    roles: Mapped[str] = mapped_column(String(512))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IdempotencyRow(Base):
    """The first answer to an idempotency key of one principal, sealed for its subject; never plaintext.

    ``key_ref`` is a blind index of (principal, key), ``request_digest`` one of the request bytes, so a key
    reused for another request is recognised without storing either. Since revision 0007 the reply is sealed
    with the subject's key (erasure deletes the row by ``subject_ref``, and the key's deletion shreds it
    anyway), ``expires_at`` bounds how long it is kept, and ``format_version`` / ``key_version`` are the
    envelope's, so replies still sealed by a master key (format 1) are found by ``custos keys rewrap``.
    """

    __tablename__ = "idempotency_keys"

    key_ref: Mapped[str] = mapped_column(String(128), primary_key=True)
    request_digest: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[str | None] = mapped_column(String(36))
    response: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Revision 0007. NULL subject: a row of the previous release whose request record names no subject.
    subject_ref: Mapped[str | None] = mapped_column(_str("subject_ref"), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    format_version: Mapped[int | None] = mapped_column(Integer)
    key_version: Mapped[int | None] = mapped_column(Integer)


class ConversationVaultRow(Base):
    """One conversation's placeholder map, sealed in the envelope format.

    Keyed by the blind index of (caller principal, conversation id); ``version`` is the compare-and-swap
    counter of concurrent writers.
    """

    __tablename__ = "conversation_vault"

    conversation_ref: Mapped[str] = mapped_column(_str("conversation_ref"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    key_version: Mapped[int] = mapped_column(Integer)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    # The subject whose key seals the map (revision 0005); NULL for maps sealed in envelope format 1.
    subject_ref: Mapped[str | None] = mapped_column(_str("subject_ref"), index=True)


class SubjectKeyRow(Base):
    """One subject's 256-bit key, wrapped (RFC 5649) by a master key version.

    Every transcript and vault row of the subject has its data key wrapped by this key, so deleting the row
    crypto-shreds all of them. ``master_version`` is what ``custos keys rewrap`` moves; ``key_version`` is the
    subject key's own version, written into the envelopes it wraps.
    """

    __tablename__ = "subject_keys"

    subject_ref: Mapped[str] = mapped_column(_str("subject_ref"), primary_key=True)
    key_version: Mapped[int] = mapped_column(Integer)
    master_version: Mapped[int] = mapped_column(Integer, index=True)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    rewrapped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class FeedbackRow(Base):
    """A customer-satisfaction rating linked to a request record; the comment is stored anonymized.

    ``task`` and ``model`` are copied from the request record when the feedback arrives, so satisfaction by
    task, model and period is one query on this table.
    """

    __tablename__ = "feedback"
    __table_args__ = (CheckConstraint("rating BETWEEN 1 AND 5", name="rating_range"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    request_id: Mapped[str] = mapped_column(_str("request_id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    rating: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(String(8000))
    task: Mapped[str] = mapped_column(String(128), index=True)
    model: Mapped[str | None] = mapped_column(_str("model"))
    actor: Mapped[str] = mapped_column(_str("actor"))
