"""Read-only lookups never wait for the SQLite write lock; a lock timeout is busy, not an outage.

Real database files, a real writer holding the lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from custos.api.health import DatabaseWatchdog, HealthReporter
from custos.audit.db import default_sqlite_url, make_engine, migrate
from custos.audit.errors import AuditBusy, AuditUnavailable
from custos.audit.store import AuditStore
from custos.privacy.replies import reply_usage
from custos.security.tokens import TokenStore
from custos.tasks.feedback import FeedbackStore
from custos.testing.audit import event

LOCK_TIMEOUT_S = 0.5
INFERENCE = "custos.v1.Inference"


class FakeHealth:
    """Records what the health service was told, and the latest status of each name."""

    def __init__(self) -> None:
        self.status: dict[str, int] = {}

    async def set(self, name: str, status: int) -> None:
        self.status[name] = status


@pytest.fixture
def database(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    engine = make_engine(default_sqlite_url(tmp_path), lock_timeout_s=LOCK_TIMEOUT_S)
    migrate(engine)
    yield engine, tmp_path / "custos.db"
    engine.dispose()


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another process's writer in the middle of a transaction: it holds the write lock until closed."""
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    return writer


def test_read_only_lookups_do_not_wait_for_a_writer(database: tuple[Any, Path]) -> None:
    engine, path = database
    audit = AuditStore(engine)
    tokens = TokenStore(engine, audit)
    token, info = tokens.create("svc:crm", ["inference"], actor="test")
    feedback = FeedbackStore(engine)
    lookups: dict[str, Callable[[], object]] = {
        "token verify": lambda: tokens.verify(token),
        "token get": lambda: tokens.get(info.id),
        "token list": tokens.list,
        "reply usage": lambda: reply_usage(engine),
        "feedback entries": feedback.entries,
    }
    writer = _hold_write_lock(path)
    try:
        for name, lookup in lookups.items():
            started = time.monotonic()
            lookup()  # raised AuditUnavailable after the lock timeout when it began BEGIN IMMEDIATE
            assert time.monotonic() - started < LOCK_TIMEOUT_S / 2, name
    finally:
        writer.close()


def test_a_lock_timeout_is_busy_and_does_not_flip_health(database: tuple[Any, Path]) -> None:
    engine, path = database
    audit = AuditStore(engine)
    writer = _hold_write_lock(path)
    try:
        with pytest.raises(AuditBusy) as info:
            audit.append(event())
    finally:
        writer.close()
    health = FakeHealth()

    async def scenario() -> list[bool]:
        watchdog = DatabaseWatchdog(engine, HealthReporter(health, [INFERENCE]), interval_s=60.0)
        await watchdog.start()
        seen = []
        await watchdog.report_unavailable(info.value)  # busy: a probe decides, and finds the database fine
        await asyncio.sleep(0.3)
        seen.append(watchdog.available)
        await watchdog.report_unavailable(AuditUnavailable("audit database unavailable"))  # lost: at once
        seen.append(watchdog.available)
        await watchdog.stop()
        return seen

    assert asyncio.run(scenario()) == [True, False]
