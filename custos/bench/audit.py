"""``custos bench audit``: append throughput (1 and 8 writers, SQLite and PostgreSQL) and verify speed.

Every figure is printed beside a baseline from the same run, as a ratio, with the goal next to it (each
case runs ``repeats`` times, interleaved with its baseline, and the medians are printed, so a burst of load
from other processes skews both sides alike):

- appends/s with group commit vs. one append per transaction under the append lock (no group commit);
- verify rows/s of ~1 KB payloads vs. plain SHA-256 of the same ``prev_hash || payload`` bytes.

PostgreSQL runs in a fresh schema that is dropped afterwards; it is skipped (and says so) when unreachable.
A note gives PostgreSQL's durable commit time in the same run and the ceiling it sets: writers that each
wait for their own commit cannot append faster than ``writers / commit time``, whatever the grouping.
"""

from __future__ import annotations

import hashlib
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from custos.audit.db import default_sqlite_url, make_engine, migrate
from custos.audit.events import AuditEvent
from custos.audit.store import AuditStore

__all__ = ["BenchRow", "run_audit_bench"]

GOAL_PG_APPENDS = 2000.0
GOAL_VERIFY_ROWS = 250_000.0


@dataclass(frozen=True)
class BenchRow:
    """One line of the benchmark table."""

    case: str
    value: float
    unit: str
    baseline_name: str
    baseline: float
    goal: float | None

    @property
    def ratio(self) -> float:
        """Value / baseline."""
        return self.value / self.baseline if self.baseline else float("nan")


def _event(size: int) -> AuditEvent:
    now = datetime.now(UTC)
    return AuditEvent(
        event_type="generate",
        phase="request",
        start_time=now,
        end_time=now,
        actor="bench:writer",
        rpc="/custos.v1.Inference/Generate",
        status="OK",
        model="bench-model",
        details={"filler": "x" * size, "pii": {"counts": {"PERSON": 1}}, "purpose": "bench"},
    )


def _appends_per_second(store: AuditStore, writers: int, total: int, size: int) -> float:
    per_writer = max(1, total // writers)
    barrier = threading.Barrier(writers + 1)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(per_writer):
                store.append(_event(size))
        except BaseException as err:  # reported after the run
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(writers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return writers * per_writer / elapsed


@contextmanager
def _database(backend: str, postgres_url: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="custos-bench-") as tmp:
            yield default_sqlite_url(Path(tmp))
        return
    admin = make_engine(postgres_url, connect_timeout_s=3)
    schema = f"custos_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        separator = "&" if "?" in postgres_url else "?"
        yield f"{postgres_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        try:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        finally:
            admin.dispose()


def _fresh_store(url: str, *, group_commit: bool) -> tuple[AuditStore, sa.Engine]:
    engine = make_engine(url, lock_timeout_s=60, pool_size=12)
    migrate(engine)
    return AuditStore(engine, group_commit=group_commit), engine


def _commit_seconds(engine: sa.Engine, samples: int = 50) -> float:
    """Median time of a durable one-row INSERT + COMMIT (the floor of any append transaction)."""
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE custos_bench_commit (n integer)")
        conn.commit()
        times: list[float] = []
        for n in range(samples):
            started = time.perf_counter()
            conn.execute(sa.text("INSERT INTO custos_bench_commit VALUES (:n)"), {"n": n})
            conn.commit()
            times.append(time.perf_counter() - started)
        conn.exec_driver_sql("DROP TABLE custos_bench_commit")
        conn.commit()
    return statistics.median(times)


def _append_rows(
    backend: str,
    postgres_url: str,
    total: int,
    size: int,
    repeats: int,
    say: Callable[[str], None],
    notes: list[str],
) -> list[BenchRow]:
    rows: list[BenchRow] = []
    with _database(backend, postgres_url) as url:
        store, engine = _fresh_store(url, group_commit=False)
        try:
            grouped = AuditStore(engine, group_commit=True)
            baselines: list[float] = []
            values: dict[int, list[float]] = {1: [], 8: []}
            grouped_txns = 0
            for attempt in range(1, repeats + 1):
                say(f"{backend} ({attempt}/{repeats}): baseline, 8 writers, one append per transaction")
                baselines.append(_appends_per_second(store, 8, total, size))
                for writers in (1, 8):
                    say(f"{backend} ({attempt}/{repeats}): {writers} writer(s) with group commit")
                    before = grouped.transactions or 0
                    values[writers].append(_appends_per_second(grouped, writers, total, size))
                    if writers == 8:
                        grouped_txns += (grouped.transactions or 0) - before
            baseline = statistics.median(baselines)
            for writers, measured in values.items():
                goal = GOAL_PG_APPENDS if backend == "postgresql" and writers == 8 else None
                rows.append(
                    BenchRow(
                        f"{backend} appends/s, {writers} writer(s)",
                        statistics.median(measured),
                        "appends/s",
                        "1 append/txn, 8 writers",
                        baseline,
                        goal,
                    )
                )
            if not store.verify().ok:
                raise RuntimeError("the benchmark chain does not verify")
            per_writer = max(1, total // 8)
            notes.append(
                f"{backend}: 8 writers with group commit averaged "
                f"{repeats * 8 * per_writer / max(1, grouped_txns):.1f} appends per transaction"
            )
            if backend == "postgresql":
                commit = _commit_seconds(engine)
                notes.append(
                    f"PostgreSQL durable commit: {commit * 1000:.2f} ms (median) in this run, so 8 writers "
                    f"that each wait for their own commit reach at most about {8 / commit:,.0f} appends/s"
                )
        finally:
            engine.dispose()
    return rows


def _verify_row(rows: int, size: int, repeats: int, say: Callable[[str], None]) -> BenchRow:
    with _database("sqlite", "") as url:
        store, engine = _fresh_store(url, group_commit=False)
        try:
            say(f"verify: writing {rows} records of ~{size} B")
            batch = 500
            for start in range(0, rows, batch):
                store.append_many([_event(size) for _ in range(min(batch, rows - start))])
            with engine.connect() as conn:
                data = [
                    (bytes.fromhex(prev), bytes(payload))
                    for prev, payload in conn.execute(sa.text("SELECT prev_hash, payload FROM audit_records"))
                ]
            plain: list[float] = []
            full: list[float] = []
            for attempt in range(1, repeats + 1):
                say(f"verify ({attempt}/{repeats}): plain SHA-256 of the same bytes")
                started = time.perf_counter()
                for prev, payload in data:
                    hashlib.sha256(prev + payload).hexdigest()
                plain.append(rows / (time.perf_counter() - started))
                say(f"verify ({attempt}/{repeats}): full chain verification")
                started = time.perf_counter()
                report = store.verify()
                full.append(rows / (time.perf_counter() - started))
                if not report.ok or report.count != rows:
                    raise RuntimeError("the benchmark chain does not verify")
        finally:
            engine.dispose()
    return BenchRow(
        f"verify rows/s (~{size} B payloads, SQLite)",
        statistics.median(full),
        "rows/s",
        "plain SHA-256",
        statistics.median(plain),
        GOAL_VERIFY_ROWS,
    )


def run_audit_bench(
    *,
    appends: int = 2000,
    verify_rows: int = 50_000,
    payload_bytes: int = 1000,
    repeats: int = 3,
    postgres_url: str | None = "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    say: Callable[[str], None] = lambda _msg: None,
) -> tuple[list[BenchRow], list[str]]:
    """Run the benchmark; return its rows and notes (e.g. a skipped PostgreSQL and why)."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    notes: list[str] = []
    rows = _append_rows("sqlite", "", appends, payload_bytes, repeats, say, notes)
    if postgres_url:
        try:
            rows += _append_rows("postgresql", postgres_url, appends, payload_bytes, repeats, say, notes)
        except sa.exc.OperationalError as err:
            notes.append(f"PostgreSQL skipped: {type(err.orig).__name__ if err.orig else 'unreachable'}")
    rows.append(_verify_row(verify_rows, payload_bytes, repeats, say))
    return rows, notes
