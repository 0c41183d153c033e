"""Customer-satisfaction feedback: storage linked to request records, and satisfaction by task, model, period.

Comments arrive here already anonymized by the privacy stage; this module never sees raw text.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from sqlalchemy import Engine, insert, select

from custos.audit.db import read_only
from custos.audit.errors import RecordNotFound
from custos.audit.events import StoredRecord
from custos.audit.models import FeedbackRow
from custos.audit.store import AuditStore

Period = Literal["day", "week", "month"]
PERIODS: tuple[Period, ...] = ("day", "week", "month")
FREE_FORM = "free-form"
#: Ratings counted as satisfied (the usual CSAT definition: the top two of five).
SATISFIED_MIN = 4


def task_of(record: StoredRecord) -> str:
    """The task a request record belongs to: its template id, ``classify:<label set>`` or ``free-form``."""
    details = record.details
    if record.event_type == "classify":
        label_set = details.get("label_set")
        name = label_set.get("id") if isinstance(label_set, dict) else None
        return f"classify:{name or 'unknown'}"
    template = details.get("template")
    if isinstance(template, dict) and isinstance(template.get("id"), str):
        return str(template["id"])
    return FREE_FORM


@dataclass(frozen=True)
class FeedbackEntry:
    """One stored rating."""

    id: str
    request_id: str
    created_at: datetime
    rating: int
    comment: str | None
    task: str
    model: str | None
    actor: str

    @classmethod
    def new(
        cls, *, request_id: str, rating: int, comment: str | None, task: str, model: str | None, actor: str
    ) -> FeedbackEntry:
        """A fresh entry stamped now (UTC)."""
        if not 1 <= rating <= 5:
            raise ValueError("rating must be between 1 and 5")
        return cls(str(uuid.uuid4()), request_id, datetime.now(UTC), rating, comment, task, model, actor)


@dataclass(frozen=True)
class SatisfactionRow:
    """Satisfaction of one (task, model, period) group."""

    task: str
    model: str
    period: str
    count: int
    mean_rating: float
    satisfied: float


def period_start(moment: datetime, period: Period) -> date:
    """The first day of the period (ISO week starts Monday) that contains ``moment`` (UTC)."""
    day = moment.astimezone(UTC).date()
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return day


def summarise(entries: Iterable[FeedbackEntry], period: Period = "day") -> list[SatisfactionRow]:
    """Group ratings by task, model and period: count, mean rating, share rated 4 or 5."""
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}")
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for entry in entries:
        key = (entry.task, entry.model or "-", period_start(entry.created_at, period).isoformat())
        groups[key].append(entry.rating)
    return [
        SatisfactionRow(
            task=task,
            model=model,
            period=start,
            count=len(ratings),
            mean_rating=sum(ratings) / len(ratings),
            satisfied=sum(r >= SATISFIED_MIN for r in ratings) / len(ratings),
        )
        for (task, model, start), ratings in sorted(
            groups.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])
        )
    ]


class FeedbackStore:
    """The ``feedback`` table."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @staticmethod
    def request_record(audit: AuditStore, request_id: str) -> StoredRecord | None:
        """The request record feedback may link to (a Generate or Classify request), or None."""
        try:
            record = audit.get(request_id)
        except RecordNotFound:
            return None
        if record.phase != "request" or record.event_type not in ("generate", "classify"):
            return None
        return record

    def add(self, entry: FeedbackEntry) -> None:
        """Store one entry."""
        with self._engine.begin() as conn:
            conn.execute(
                insert(FeedbackRow).values(
                    id=entry.id,
                    request_id=entry.request_id,
                    created_at=entry.created_at,
                    rating=entry.rating,
                    comment=entry.comment,
                    task=entry.task,
                    model=entry.model,
                    actor=entry.actor,
                )
            )

    def entries(self, *, since: datetime | None = None, until: datetime | None = None) -> list[FeedbackEntry]:
        """Entries created in [since, until), oldest first."""
        query = select(FeedbackRow).order_by(FeedbackRow.created_at)
        if since is not None:
            query = query.where(FeedbackRow.created_at >= since)
        if until is not None:
            query = query.where(FeedbackRow.created_at < until)
        with read_only(self._engine) as conn:
            rows = conn.execute(query).all()
        return [
            FeedbackEntry(r.id, r.request_id, r.created_at, r.rating, r.comment, r.task, r.model, r.actor)
            for r in rows
        ]

    def satisfaction(
        self, *, since: datetime | None = None, until: datetime | None = None, period: Period = "day"
    ) -> list[SatisfactionRow]:
        """Satisfaction by task, model and period over [since, until)."""
        return summarise(self.entries(since=since, until=until), period)
