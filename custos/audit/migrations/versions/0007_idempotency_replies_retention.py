"""Idempotency replies: the subject that seals them, an expiry, and their envelope's format and key version.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

Rows of the previous release were sealed by a master key and kept forever. They are kept readable, and this
revision fills the new columns from what is known: the subject from the audit records of the reply's request
(so erasure finds the row by subject), the expiry from the default ``idempotency_ttl_s`` after the reply was
completed (so the housekeeping deletes rows already past it), and the envelope's format and key version from
its header (so ``custos keys list`` counts them and ``custos keys rewrap`` reseals them for their subject).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

from custos.audit.models import UTCDateTime

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The default of the ``idempotency_ttl_s`` setting this revision ships with.
DEFAULT_TTL = timedelta(seconds=24 * 3600)
_HEADER = struct.Struct(">4sBBI")  # magic, format version, wrap kind, key version (envelope header)
_BATCH = 500


def envelope_versions(blob: bytes | None) -> tuple[int | None, int | None]:
    """(format version, key version) of a sealed reply, or (None, None) without a readable header."""
    if blob is None or len(blob) < _HEADER.size:
        return None, None
    magic, format_version, _wrap, key_version = _HEADER.unpack_from(bytes(blob))
    if magic != b"CSTE":
        return None, None
    return int(format_version), int(key_version)


def upgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.add_column(sa.Column("subject_ref", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("format_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("key_version", sa.Integer(), nullable=True))

    conn = op.get_bind()
    replies = sa.table(
        "idempotency_keys",
        sa.column("key_ref", sa.String()),
        sa.column("request_id", sa.String()),
        sa.column("response", sa.LargeBinary()),
        sa.column("created_at", UTCDateTime()),
        sa.column("completed_at", UTCDateTime()),
        sa.column("subject_ref", sa.String()),
        sa.column("expires_at", UTCDateTime()),
        sa.column("format_version", sa.Integer()),
        sa.column("key_version", sa.Integer()),
    )
    records = sa.table(
        "audit_records",
        sa.column("request_id", sa.String()),
        sa.column("subject_ref", sa.String()),
    )
    last = ""
    while True:
        rows = conn.execute(
            sa.select(
                replies.c.key_ref,
                replies.c.request_id,
                replies.c.response,
                replies.c.created_at,
                replies.c.completed_at,
            )
            .where(replies.c.key_ref > last)
            .order_by(replies.c.key_ref)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        for key_ref, request_id, response, created_at, completed_at in rows:
            subject_ref = None
            if request_id is not None:
                subject_ref = conn.execute(
                    sa.select(records.c.subject_ref)
                    .where(records.c.request_id == request_id, records.c.subject_ref.is_not(None))
                    .limit(1)
                ).scalar_one_or_none()
            format_version, key_version = envelope_versions(response)
            conn.execute(
                sa.update(replies)
                .where(replies.c.key_ref == key_ref)
                .values(
                    subject_ref=subject_ref,
                    expires_at=(completed_at or created_at) + DEFAULT_TTL,
                    format_version=format_version,
                    key_version=key_version,
                )
            )
        last = rows[-1][0]

    with op.batch_alter_table("idempotency_keys") as batch:
        batch.alter_column("expires_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch.create_index(batch.f("ix_idempotency_keys_subject_ref"), ["subject_ref"], unique=False)
        batch.create_index(batch.f("ix_idempotency_keys_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_index(batch.f("ix_idempotency_keys_expires_at"))
        batch.drop_index(batch.f("ix_idempotency_keys_subject_ref"))
        batch.drop_column("key_version")
        batch.drop_column("format_version")
        batch.drop_column("expires_at")
        batch.drop_column("subject_ref")
