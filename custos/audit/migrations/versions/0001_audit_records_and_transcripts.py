"""Audit records (hash chain) and sealed transcripts.

Revision ID: 0001
Revises:
Create Date: 2026-11-28

Never rewrite stored payloads in a migration: verification re-hashes the stored bytes. Types are spelled out
here rather than imported from the models so this revision keeps meaning the same when the models change.
``seq`` has no sequence/identity on purpose: the appender assigns it under the append lock.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("row_hash", sa.String(length=64), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=512), nullable=False),
        sa.Column("rpc", sa.String(length=256), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=True),
        sa.Column("conversation_ref", sa.String(length=128), nullable=True),
        sa.Column("subject_ref", sa.String(length=128), nullable=True),
        sa.Column("transcript_id", sa.String(length=36), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint(
            "phase IN ('request', 'completion', 'event')", name=op.f("ck_audit_records_phase")
        ),
        sa.CheckConstraint("seq > 0", name=op.f("ck_audit_records_seq_positive")),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_records")),
        sa.UniqueConstraint("id", name=op.f("uq_audit_records_id")),
        sa.UniqueConstraint("prev_hash", name=op.f("uq_audit_records_prev_hash")),
    )
    indexed = (
        "actor",
        "conversation_ref",
        "event_type",
        "request_id",
        "start_time",
        "subject_ref",
        "transcript_id",
    )
    for column in indexed:
        op.create_index(op.f(f"ix_audit_records_{column}"), "audit_records", [column], unique=False)

    op.create_table(
        "transcripts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("conversation_ref", sa.String(length=128), nullable=True),
        sa.Column("subject_ref", sa.String(length=128), nullable=True),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("format_version", sa.Integer(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transcripts")),
    )
    for column in ("conversation_ref", "subject_ref"):
        op.create_index(op.f(f"ix_transcripts_{column}"), "transcripts", [column], unique=False)


def downgrade() -> None:
    op.drop_table("transcripts")
    op.drop_table("audit_records")
