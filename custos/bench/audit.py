"""``custos bench audit``: appends under concurrency, verification, and queries on a large log.

Every figure is printed beside a baseline or bound from the same run, as a ratio, with the goal next to it
(each append and verify case runs ``repeats`` times, interleaved with its baseline, and the medians are
printed, so a burst of load from other processes skews both sides alike):

- appends/s with group commit at 1, 8, 32 and 64 writers vs. one append per transaction (8 writers), on
  SQLite and PostgreSQL; for 64 writers also the two bounds no grouping can beat: 64 / (durable commit
  latency), since every writer waits for its own commit, and 1 / (CPU time per append);
- full verification rows/s of a realistic log (in this process, and in worker processes by seq range) vs.
  bare SHA-256 of the same ``prev_hash || payload`` bytes (only the hashing is timed), and incremental
  verification of the newest 1 % vs. the full verification's time;
- with ``records``: a realistic PostgreSQL log of that many records built by ``COPY``
  (:mod:`custos.bench.audit_log`), verified the same way, and every query filter and console combination
  measured on it (p50/p99, first and deep page) with ``Get``.

PostgreSQL runs in a fresh schema that is dropped afterwards; it is skipped (and says so) when unreachable.
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

from custos.audit.chain import ChainHead
from custos.audit.db import default_sqlite_url, make_engine, migrate
from custos.audit.events import AuditEvent
from custos.audit.models import AuditRecordRow
from custos.audit.store import AuditStore
from custos.audit.verify import default_workers, reading, stream_rows, verify_chain
from custos.bench.audit_log import QueryRow, build_log, explain, measure_queries

__all__ = ["BenchRow", "QueryRow", "run_audit_bench"]

GOAL_PG_APPENDS = 2000.0
GOAL_VERIFY_SHARE = 0.5
"""Full verification, in worker processes, at least this share of bare SHA-256's rows/s (same run)."""
GOAL_BOUND_SHARE = 0.5
"""64 PostgreSQL writers at least this share of min(64 / commit latency, 1 / CPU per append)."""
GOAL_QUERY_P50_MS = 100.0
GOAL_QUERY_P99_MS = 500.0


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


WRITERS = (1, 8, 32, 64)


def _cpu_seconds_per_append(store: AuditStore, total: int, size: int) -> float:
    """CPU time of this process per append with 64 writers (the CPU bound's denominator)."""
    before = time.process_time()
    _appends_per_second(store, 64, total, size)
    return (time.process_time() - before) / (64 * max(1, total // 64))


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
            values: dict[int, list[float]] = {w: [] for w in WRITERS}
            grouped_txns: dict[int, int] = dict.fromkeys(WRITERS, 0)
            cpu: list[float] = []
            for attempt in range(1, repeats + 1):
                say(f"{backend} ({attempt}/{repeats}): baseline, 8 writers, one append per transaction")
                baselines.append(_appends_per_second(store, 8, total, size))
                for writers in WRITERS:
                    say(f"{backend} ({attempt}/{repeats}): {writers} writer(s) with group commit")
                    before = grouped.transactions or 0
                    values[writers].append(_appends_per_second(grouped, writers, total, size))
                    grouped_txns[writers] += (grouped.transactions or 0) - before
                cpu.append(_cpu_seconds_per_append(grouped, total, size))
            baseline = statistics.median(baselines)
            commit = _commit_seconds(engine)
            cpu_per_append = statistics.median(cpu)
            bound = min(64 / commit, 1 / cpu_per_append)
            for writers, measured in values.items():
                rows.append(
                    BenchRow(
                        f"{backend} appends/s, {writers} writer(s)",
                        statistics.median(measured),
                        "appends/s",
                        "1 append/txn, 8 writers",
                        baseline,
                        GOAL_PG_APPENDS if backend == "postgresql" and writers == 8 else None,
                    )
                )
            rows.append(
                BenchRow(
                    f"{backend} appends/s, 64 writers vs bound",
                    statistics.median(values[64]),
                    "appends/s",
                    "min(64/commit, 1/CPU)",
                    bound,
                    GOAL_BOUND_SHARE * bound if backend == "postgresql" else None,
                )
            )
            if not store.verify().ok:
                raise RuntimeError("the benchmark chain does not verify")
            per_txn = ", ".join(
                f"{w}: {repeats * w * max(1, total // w) / max(1, grouped_txns[w]):.1f}" for w in WRITERS
            )
            notes.append(f"{backend}: appends per grouped transaction by writers: {per_txn}")
            notes.append(
                f"{backend}: durable commit {commit * 1000:.2f} ms (median), so 64 writers that each wait "
                f"for their own commit reach at most {64 / commit:,.0f} appends/s; CPU per append in this "
                f"process {cpu_per_append * 1e6:,.0f} us, at most {1 / cpu_per_append:,.0f} appends/s"
            )
        finally:
            engine.dispose()
    return rows


def _hash_seconds(engine: sa.Engine) -> tuple[float, int, int]:
    """Seconds bare SHA-256 of every ``prev_hash || payload`` takes (only the hashing is timed).

    Rows come by the server-side cursor verification uses, a batch at a time (a log may not fit in memory).
    """
    spent = 0.0
    rows = 0
    payload_bytes = 0
    with engine.connect() as conn:
        high = conn.execute(sa.select(sa.func.max(AuditRecordRow.seq))).scalar_one() or 0
    with reading(engine) as conn:
        for batch in stream_rows(conn, 1, int(high)):
            data = [(bytes.fromhex(row[2]), bytes(row[17])) for row in batch]
            started = time.perf_counter()
            for prev, payload in data:
                hashlib.sha256(prev + payload).hexdigest()
            spent += time.perf_counter() - started
            rows += len(data)
            payload_bytes += sum(len(p) for _, p in data)
    return spent, rows, payload_bytes


def _verify_rows(
    engine: sa.Engine, label: str, repeats: int, say: Callable[[str], None], notes: list[str]
) -> list[BenchRow]:
    """Full verification (1 process and worker processes) vs bare SHA-256, incremental 1 % vs full."""
    store = AuditStore(engine, group_commit=False)
    head = store.head()
    recent = max(1, head.seq // 100)
    with engine.connect() as conn:
        resume_hash = conn.execute(
            sa.select(AuditRecordRow.row_hash).where(AuditRecordRow.seq == head.seq - recent)
        ).scalar_one()
    workers = default_workers()
    plain: list[float] = []
    timings: dict[str, list[float]] = {"one": [], "workers": [], "incremental": []}
    rows = head.seq
    size = 0
    for attempt in range(1, repeats + 1):
        say(f"verify {label} ({attempt}/{repeats}): bare SHA-256 of the same bytes")
        spent, rows, size = _hash_seconds(engine)
        plain.append(rows / spent)
        for key, count in (("one", 1), ("workers", workers)):
            say(f"verify {label} ({attempt}/{repeats}): full verification, {count} process(es)")
            started = time.perf_counter()
            report = verify_chain(engine, workers=count).report
            timings[key].append(time.perf_counter() - started)
            if not report.ok or report.count != rows:
                raise RuntimeError("the benchmark chain does not verify")
        say(f"verify {label} ({attempt}/{repeats}): incremental, newest 1 %")
        started = time.perf_counter()
        report = verify_chain(
            engine, start=ChainHead(head.seq - recent, resume_hash), resume=True, workers=workers
        ).report
        timings["incremental"].append(time.perf_counter() - started)
        if not report.ok or report.count != recent:
            raise RuntimeError("the benchmark chain does not verify incrementally")
    baseline = statistics.median(plain)
    full = statistics.median(timings["workers"])
    notes.append(
        f"verify {label}: {rows:,} records, {size / max(1, rows):,.0f} B payloads on average; "
        f"{workers} worker process(es); incremental verified the newest {recent:,} records in "
        f"{statistics.median(timings['incremental']):.2f} s vs {full:.2f} s for all"
    )
    return [
        BenchRow(
            f"verify rows/s ({label}), 1 process",
            rows / statistics.median(timings["one"]),
            "rows/s",
            "bare SHA-256",
            baseline,
            None,
        ),
        BenchRow(
            f"verify rows/s ({label}), {workers} processes",
            rows / full,
            "rows/s",
            "bare SHA-256",
            baseline,
            GOAL_VERIFY_SHARE * baseline,
        ),
        BenchRow(
            f"incremental verify of newest 1 % ({label}), s",
            statistics.median(timings["incremental"]),
            "s",
            "full verify, s",
            full,
            None,
        ),
    ]


def _verify_sqlite(rows: int, repeats: int, say: Callable[[str], None], notes: list[str]) -> list[BenchRow]:
    with _database("sqlite", "") as url:
        _, engine = _fresh_store(url, group_commit=False)
        try:
            say(f"verify: building a realistic SQLite log of {rows:,} records")
            build_log(engine, rows)
            return _verify_rows(engine, "SQLite", repeats, say, notes)
        finally:
            engine.dispose()


def _large_log(
    postgres_url: str,
    records: int,
    repeats: int,
    say: Callable[[str], None],
    notes: list[str],
    query_runs: int,
) -> tuple[list[BenchRow], list[QueryRow], dict[str, str]]:
    with _database("postgresql", postgres_url) as url:
        store, engine = _fresh_store(url, group_commit=False)
        try:
            say(f"log: building a realistic PostgreSQL log of {records:,} records (COPY)")
            sample, timings = build_log(engine, records, say=say)
            with engine.connect() as conn:
                size = conn.execute(sa.text("SELECT pg_total_relation_size('audit_records')")).scalar_one()
            notes.append(
                f"log: {records:,} records built in {timings['total']:.0f} s (COPY {timings['copy']:.0f} s, "
                f"indexes {timings['indexes']:.0f} s, VACUUM ANALYZE {timings['analyze']:.0f} s); "
                f"table with indexes {size / 2**30:.2f} GiB"
            )
            rows = _verify_rows(engine, f"PostgreSQL, {records:,} records", repeats, say, notes)
            say("queries: every filter alone and the console's combinations")
            queries = measure_queries(store, sample, runs=query_runs)
            plans = explain(store, sample)
            return rows, queries, plans
        finally:
            engine.dispose()


def run_audit_bench(
    *,
    appends: int = 2000,
    verify_rows: int = 50_000,
    payload_bytes: int = 1000,
    repeats: int = 3,
    postgres_url: str | None = "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    records: int | None = None,
    query_runs: int = 20,
    say: Callable[[str], None] = lambda _msg: None,
) -> tuple[list[BenchRow], list[str], list[QueryRow], dict[str, str]]:
    """Run the benchmark; its rows, notes (e.g. a skipped PostgreSQL and why), query rows and plans."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    notes: list[str] = []
    queries: list[QueryRow] = []
    plans: dict[str, str] = {}
    rows = _append_rows("sqlite", "", appends, payload_bytes, repeats, say, notes)
    if postgres_url:
        try:
            rows += _append_rows("postgresql", postgres_url, appends, payload_bytes, repeats, say, notes)
        except sa.exc.OperationalError as err:
            notes.append(f"PostgreSQL skipped: {type(err.orig).__name__ if err.orig else 'unreachable'}")
            postgres_url = None
    rows += _verify_sqlite(verify_rows, repeats, say, notes)
    if records and postgres_url:
        large, queries, plans = _large_log(postgres_url, records, repeats, say, notes, query_runs)
        rows += large
    return rows, notes, queries, plans
