"""Composite (column, seq) indexes for newest-first keyset pages of the audit log.

Queries read ``WHERE <filters> [AND seq < :token] ORDER BY seq DESC LIMIT n``. An index on ``(column, seq)``
serves an equality filter and the order at once, so a page costs its own rows whether the value is common
or rare and however deep the page; a single-column index would fetch every matching row and sort them.
The single-column indexes these replace are dropped (the composite serves plain equality lookups too);
``status`` gains one. The plans behind the choice are in docs/audit.md. On a large existing log the
upgrade builds them in its transaction, which holds appends for the time it takes (about a minute per
index per 10 million records on a small machine).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REPLACED = ("event_type", "actor", "conversation_ref", "subject_ref", "purpose", "retention_class")
ADDED = ("status",)


def upgrade() -> None:
    for column in REPLACED:
        op.drop_index(f"ix_audit_records_{column}", table_name="audit_records")
    for column in (*REPLACED, *ADDED):
        op.create_index(f"ix_audit_records_{column}_seq", "audit_records", [column, "seq"], unique=False)


def downgrade() -> None:
    for column in (*REPLACED, *ADDED):
        op.drop_index(f"ix_audit_records_{column}_seq", table_name="audit_records")
    for column in REPLACED:
        op.create_index(f"ix_audit_records_{column}", "audit_records", [column], unique=False)
