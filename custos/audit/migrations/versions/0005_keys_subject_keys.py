"""Subject keys: one wrapped key per subject; vault rows name the subject whose key seals them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "subject_keys",
        sa.Column("subject_ref", sa.String(length=128), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("master_version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rewrapped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("subject_ref", name=op.f("pk_subject_keys")),
    )
    op.create_index(op.f("ix_subject_keys_master_version"), "subject_keys", ["master_version"], unique=False)
    with op.batch_alter_table("conversation_vault") as batch:
        batch.add_column(sa.Column("subject_ref", sa.String(length=128), nullable=True))
        batch.create_index(batch.f("ix_conversation_vault_subject_ref"), ["subject_ref"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("conversation_vault") as batch:
        batch.drop_index(batch.f("ix_conversation_vault_subject_ref"))
        batch.drop_column("subject_ref")
    op.drop_table("subject_keys")
