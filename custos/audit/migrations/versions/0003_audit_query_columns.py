"""Query columns derived from the payload: purpose, retention class and the PII entity types seen.

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-28

Only typed columns are added and filled from the stored payloads; the payload bytes are never rewritten,
so every existing record keeps verifying.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000
_ENTITY_TYPES_MAX = 2048


def derived_columns(payload: bytes) -> dict[str, str | None]:
    """The values of the new columns for one stored payload (as the appender of this revision writes them)."""
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {"purpose": None, "retention_class": None, "entity_types": None}
    details = body.get("details") if isinstance(body, dict) else None
    details = details if isinstance(details, dict) else {}
    purpose = details.get("purpose")
    retention = details.get("retention_class")
    pii = details.get("pii")
    counts = pii.get("counts") if isinstance(pii, dict) else None
    types = sorted(k for k in counts if isinstance(k, str)) if isinstance(counts, dict) else []
    joined = "," + ",".join(types) + "," if types else None
    return {
        "purpose": purpose if isinstance(purpose, str) and purpose else None,
        "retention_class": retention if isinstance(retention, str) and retention else None,
        "entity_types": joined if joined is None or len(joined) <= _ENTITY_TYPES_MAX else None,
    }


def upgrade() -> None:
    with op.batch_alter_table("audit_records") as batch:
        batch.add_column(sa.Column("purpose", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("retention_class", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("entity_types", sa.String(length=2048), nullable=True))
        batch.create_index(op.f("ix_audit_records_purpose"), ["purpose"], unique=False)
        batch.create_index(op.f("ix_audit_records_retention_class"), ["retention_class"], unique=False)

    conn = op.get_bind()
    table = sa.table(
        "audit_records",
        sa.column("seq", sa.BigInteger()),
        sa.column("payload", sa.LargeBinary()),
        sa.column("purpose", sa.String()),
        sa.column("retention_class", sa.String()),
        sa.column("entity_types", sa.String()),
    )
    last = 0
    while True:
        rows = conn.execute(
            sa.select(table.c.seq, table.c.payload)
            .where(table.c.seq > last)
            .order_by(table.c.seq)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        for seq, payload in rows:
            values = derived_columns(bytes(payload))
            if any(v is not None for v in values.values()):
                conn.execute(sa.update(table).where(table.c.seq == seq).values(**values))
        last = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("audit_records") as batch:
        batch.drop_index(op.f("ix_audit_records_retention_class"))
        batch.drop_index(op.f("ix_audit_records_purpose"))
        batch.drop_column("entity_types")
        batch.drop_column("retention_class")
        batch.drop_column("purpose")
