"""The periodic vault purge: expired rows go, live rows stay, failures are counted and retried."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from custos.audit import default_sqlite_url, make_engine, migrate
from custos.privacy.keys import FileKeyProvider
from custos.privacy.vault import ConversationVault
from custos.server.housekeeping import VaultPurgeTask

KEYS = FileKeyProvider(primary=1, master_keys={1: b"k" * 32}, index_key=b"i" * 32)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _rows(db: sa.Engine) -> list[str]:
    with db.connect() as conn:
        return sorted(r[0] for r in conn.execute(sa.text("SELECT conversation_ref FROM conversation_vault")))


def test_purge_task_deletes_only_expired_rows_and_reports_the_count(tmp_path: Path) -> None:
    db = make_engine(default_sqlite_url(tmp_path))
    migrate(db)
    clock = Clock()
    vault = ConversationVault(db, KEYS, ttl_seconds=60, clock=clock)
    vault.update("old", lambda m: m.placeholder_for("PERSON", "Ann Lee"))
    clock.now += timedelta(seconds=30)
    vault.update("recent", lambda m: m.placeholder_for("PERSON", "Bo Kim"))
    clock.now += timedelta(seconds=40)  # "old" expired 10 s ago, "recent" has 20 s left
    purged: list[int] = []
    with ThreadPoolExecutor(1) as executor:
        task = VaultPurgeTask(vault.purge_expired, interval_s=60, executor=executor, on_purged=purged.append)
        assert asyncio.run(task.run_once()) == 1
        assert _rows(db) == ["recent"]
        assert asyncio.run(task.run_once()) == 0
    assert purged == [1, 0]
    db.dispose()


def test_purge_task_runs_periodically_and_survives_a_failing_run() -> None:
    calls: list[int] = []
    failures: list[int] = []

    def purge() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise sa.exc.OperationalError("SELECT", {}, Exception("database is locked"))
        return 2

    async def scenario() -> VaultPurgeTask:
        with ThreadPoolExecutor(1) as executor:
            task = VaultPurgeTask(
                purge, interval_s=0.02, executor=executor, on_failure=lambda: failures.append(1)
            )
            task.start()
            for _ in range(200):
                await asyncio.sleep(0.01)
                if task.runs >= 2:
                    break
            await task.stop()
            return task

    task = asyncio.run(scenario())
    assert failures == [1]
    assert task.runs >= 2
    assert len(calls) >= 3


def test_interval_must_be_positive() -> None:
    with ThreadPoolExecutor(1) as executor, pytest.raises(ValueError, match="interval_s"):
        VaultPurgeTask(lambda: 0, interval_s=0, executor=executor)
