"""Conversation vault: one sealed placeholder map per (caller, conversation), with expiry.

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "conversation_vault",
        sa.Column("conversation_ref", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("conversation_ref", name=op.f("pk_conversation_vault")),
    )
    op.create_index(
        op.f("ix_conversation_vault_expires_at"), "conversation_vault", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_table("conversation_vault")
