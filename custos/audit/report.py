"""Records of processing (GDPR Art. 30) drawn from the audit log: what the typed columns already say.

The counts come from SQL aggregates over the live log (archived records are not counted); the server's
configuration adds what the log cannot know (configured purposes, retention, security measures).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from custos.audit.db import translate_db_errors
from custos.audit.models import AuditRecordRow
from custos.audit.store import AuditStore

__all__ = ["ProcessingSummary", "processing_summary"]


@dataclass(frozen=True)
class ProcessingSummary:
    """Counts per purpose, entity type, caller and retention class, over request-bearing records."""

    first: datetime | None
    last: datetime | None
    records: int
    purposes: dict[str, int]
    entity_types: dict[str, int]
    recipients: dict[str, int]
    retention_classes: dict[str, int]
    models: dict[str, int]


# Events in which personal data of customers is processed (their callers are the recipients).
PROCESSING_EVENTS = ("generate", "classify", "anonymize")


def _grouped(conn: object, column: object, *, processing_only: bool = False) -> dict[str, int]:
    stmt = (
        select(column, func.count())  # type: ignore[call-overload]
        .where(column.is_not(None))  # type: ignore[attr-defined]
        .where(AuditRecordRow.phase != "completion")
        .group_by(column)
    )
    if processing_only:
        stmt = stmt.where(AuditRecordRow.event_type.in_(PROCESSING_EVENTS))
    return {str(value): int(count) for value, count in conn.execute(stmt)}  # type: ignore[attr-defined]


def processing_summary(store: AuditStore) -> ProcessingSummary:
    """Aggregate the live log (each request counted once: completion records are skipped)."""
    with translate_db_errors(), store._read() as conn:
        first, last, records = conn.execute(
            select(func.min(AuditRecordRow.start_time), func.max(AuditRecordRow.start_time), func.count())
        ).one()
        entity_types: Counter[str] = Counter()
        for joined, count in conn.execute(
            select(AuditRecordRow.entity_types, func.count())
            .where(AuditRecordRow.entity_types.is_not(None))
            .group_by(AuditRecordRow.entity_types)
        ):
            for name in str(joined).strip(",").split(","):
                entity_types[name] += int(count)
        return ProcessingSummary(
            first=AuditRecordRow.start_time.type.process_result_value(first, conn.dialect) if first else None,
            last=AuditRecordRow.start_time.type.process_result_value(last, conn.dialect) if last else None,
            records=int(records),
            purposes=_grouped(conn, AuditRecordRow.purpose),
            entity_types=dict(entity_types.most_common()),
            recipients=_grouped(conn, AuditRecordRow.actor, processing_only=True),
            retention_classes=_grouped(conn, AuditRecordRow.retention_class),
            models=_grouped(conn, AuditRecordRow.model),
        )
