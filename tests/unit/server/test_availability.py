"""The database watchdog: a probe that never blocks appends, and health that follows failures and recovery."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa

from custos.api.health import NOT_SERVING, SERVING, DatabaseWatchdog, HealthReporter
from custos.audit.db import default_sqlite_url, make_engine, migrate


class FakeHealth:
    """Records what the health service was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def set(self, name: str, status: int) -> None:
        self.calls.append((name, status))


def test_probe_does_not_take_the_sqlite_write_lock(tmp_path: Path) -> None:
    engine = make_engine(default_sqlite_url(tmp_path), lock_timeout_s=0.3)
    migrate(engine)
    watchdog = DatabaseWatchdog(engine, HealthReporter(FakeHealth(), []), interval_s=1.0)
    with engine.connect() as writer:
        writer.execute(sa.text("SELECT 1"))  # BEGIN IMMEDIATE: the append lock is held
        watchdog.probe_once()  # would raise AuditUnavailable after 0.3 s if it queued for the lock
    engine.dispose()


def test_health_flips_on_a_reported_outage_and_back_after_a_good_probe(tmp_path: Path) -> None:
    engine = make_engine(default_sqlite_url(tmp_path))
    health = FakeHealth()

    async def scenario() -> list[tuple[str, int]]:
        watchdog = DatabaseWatchdog(engine, HealthReporter(health, ["custos.v1.Inference"]), interval_s=60.0)
        await watchdog.start()
        await asyncio.sleep(0.2)
        await watchdog.report_unavailable()
        assert not watchdog.available
        seen = list(health.calls)
        for _ in range(100):  # the report wakes the probe at once, which finds the database fine
            if watchdog.available:
                break
            await asyncio.sleep(0.02)
        await watchdog.stop()
        return seen

    seen = asyncio.run(scenario())
    assert seen == [
        ("", SERVING),
        ("custos.v1.Inference", SERVING),
        ("", NOT_SERVING),
        ("custos.v1.Inference", NOT_SERVING),
    ]
    assert health.calls[-2:] == [("", SERVING), ("custos.v1.Inference", SERVING)]
    engine.dispose()
