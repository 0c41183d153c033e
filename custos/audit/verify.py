"""Chain verification at production size: seq ranges streamed by server-side cursor, checked in parallel.

The chain splits at any ``seq``: a range of records can be checked on its own (links, hashes, canonical
form, typed columns, signed checkpoints inside it) starting from its first record's ``prev_hash``, and the
ranges joined afterwards: the first record of a range must directly follow, and link to, the last record
of the range before. :func:`verify_chain` does exactly that, in worker processes when the chain is long
enough to pay for starting them, and reports exactly what checking every record in one pass would: the
first bad record and its reason, the records verified before it, the incomplete requests among them.

Rows are read with the driver's own cursor (a named, server-side cursor in binary format on PostgreSQL; the
stepping cursor on SQLite) in batches of :data:`FETCH_ROWS`, as plain tuples in the order of
:data:`~custos.audit.chain.RAW_COLUMNS`, timestamps formatted by the database as their canonical text.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement, Connection, Engine, String, func, literal_column, select, text

from custos.audit.chain import GENESIS_HASH, RAW_COLUMNS, ChainHead, ChainRow, ChainVerifier, VerifyReport
from custos.audit.db import DEFERRED_READ, make_engine, translate_db_errors
from custos.audit.models import AuditRecordRow

__all__ = [
    "FETCH_ROWS",
    "PARALLEL_MIN_ROWS",
    "ChainVerification",
    "RangeOutcome",
    "default_workers",
    "reading",
    "stream_rows",
    "verify_chain",
    "verify_range",
]

FETCH_ROWS = 10_000
"""Rows fetched per round trip from the server-side cursor."""

PARALLEL_MIN_ROWS = 200_000
"""Below this many rows the chain is checked in the calling process (starting workers costs ~1 s)."""

_RANGE_MIN_ROWS = 100_000
_RANGES_PER_WORKER = 4  # several ranges per worker: an early failure stops the rest; progress moves
_PROGRESS_EVERY = 1000

_RECORD_COLUMNS = tuple(AuditRecordRow.__table__.columns)


def default_workers() -> int:
    """Worker processes used when none is given: one per CPU this process may run on, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _timestamp_text(name: str, dialect: str) -> ColumnElement[str]:
    """SQL giving a timestamp column as its canonical payload text (``2024-05-01T12:00:00.000000Z``).

    SQLite stores naive UTC text ``2024-05-01 12:00:00.000000``; anything of another shape gives NULL, so
    verification falls back to the typed comparison for that row. PostgreSQL formats the ``timestamptz``.
    """
    if dialect == "postgresql":
        sql = f"""to_char({name} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
    else:
        sql = (
            f"CASE WHEN length({name}) = 26 AND substr({name}, 11, 1) = ' ' "
            f"THEN substr({name}, 1, 10) || 'T' || substr({name}, 12) || 'Z' END"
        )
    return literal_column(sql, String).label(name)


def raw_columns(dialect: str) -> list[ColumnElement[Any]]:
    """The columns of :data:`~custos.audit.chain.RAW_COLUMNS` (fast verification), timestamps as text."""
    table = AuditRecordRow.__table__.columns
    return [
        _timestamp_text(name, dialect) if name in ("start_time", "end_time") else table[name]
        for name in RAW_COLUMNS
    ]


@dataclass(frozen=True)
class RangeOutcome:
    """What checking the records with ``lo <= seq <= hi`` found, ready to be joined to its neighbours.

    ``first`` is ``(seq, prev_hash)`` of the first record read (``None``: the range is empty); ``head`` the
    last record accepted; ``failure`` the first bad record's ``(seq, reason)`` inside the range (its link to
    the range before is the join's to check). ``open_requests`` are requests of this range without a
    completion in it, ``closed_elsewhere`` completions in it of requests before it.
    """

    lo: int
    hi: int
    first: tuple[int, str] | None
    head: ChainHead
    count: int
    failure: tuple[int, str] | None
    open_requests: frozenset[str]
    closed_elsewhere: frozenset[str]


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction; a deferred ``BEGIN`` on SQLite, so appends are not blocked or waited for."""
    with translate_db_errors(), engine.connect() as conn:
        conn.execution_options(**{DEFERRED_READ: True})
        conn.begin()
        try:
            yield conn
        finally:
            conn.rollback()


def stream_rows(conn: Connection, lo: int, hi: int) -> Iterator[Sequence[Sequence[Any]]]:
    """Batches of raw rows with ``lo <= seq <= hi`` in seq order, from the driver's own cursor."""
    seq = AuditRecordRow.seq
    stmt = select(*raw_columns(conn.dialect.name)).where(seq >= lo, seq <= hi).order_by(seq)
    sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    raw: Any = conn.connection.driver_connection
    if conn.dialect.name == "postgresql":
        # A named cursor is a server-side portal: rows come FETCH_ROWS at a time, in binary (bytea as bytes).
        cursor = raw.cursor(name=f"custos_verify_{lo}", binary=True)
        cursor.itersize = FETCH_ROWS
    else:
        cursor = raw.cursor()
    try:
        cursor.execute(sql)
        while rows := cursor.fetchmany(FETCH_ROWS):
            yield rows
    finally:
        cursor.close()


def verify_range(
    conn: Connection,
    lo: int,
    hi: int,
    checkpoints: Mapping[int, str],
    *,
    progress: Callable[[int], None] | None = None,
) -> RangeOutcome:
    """Check the records ``lo..hi`` on ``conn`` from the first one's ``prev_hash``; stop at the first bad one.

    Each row goes through the fast path (:meth:`ChainVerifier.feed_raw`); a row it does not accept is read
    again with typed columns and given to the full check, which decides and names the reason.
    ``checkpoints`` maps seq to the signed hash; those outside ``lo..hi`` are ignored.
    """
    typed = select(*_RECORD_COLUMNS)
    verifier: ChainVerifier | None = None
    first: tuple[int, str] | None = None
    done = 0
    for rows in stream_rows(conn, lo, hi):
        if verifier is None:
            first = (int(rows[0][0]), str(rows[0][2]))
            heads = [ChainHead(s, h) for s, h in checkpoints.items() if lo <= s <= hi]
            verifier = ChainVerifier(start=ChainHead(first[0] - 1, first[1]), checkpoints=heads)
        for row in rows:
            ok = verifier.feed_raw(row)
            if ok is None:  # not accepted on the fast path: the full check decides and explains
                full = conn.execute(typed.where(AuditRecordRow.seq == row[0])).one()
                ok = verifier.feed(cast(ChainRow, full))
            if not ok:
                break
            done += 1
            if progress is not None and done % _PROGRESS_EVERY == 0:
                progress(done)
        if verifier.failed:
            break
    if verifier is None:
        return RangeOutcome(lo, hi, None, ChainHead(lo - 1, ""), 0, None, frozenset(), frozenset())
    return RangeOutcome(
        lo,
        hi,
        first,
        verifier.head,
        verifier.count,
        verifier.failure,
        verifier.open_requests,
        verifier.closed_elsewhere,
    )


_worker_engine: Engine | None = None


def _start_worker(url: str) -> None:
    global _worker_engine  # one engine per worker process, made by the pool's initializer
    _worker_engine = make_engine(url, pool_size=1)


def _range_in_worker(lo: int, hi: int, checkpoints: dict[int, str]) -> RangeOutcome:
    assert _worker_engine is not None, "worker started without its engine"
    with reading(_worker_engine) as conn:
        return verify_range(conn, lo, hi, checkpoints)


def _ranges(lo: int, hi: int, size: int, cut: int | None) -> list[tuple[int, int]]:
    """``lo..hi`` in consecutive ranges of about ``size`` seqs; one ends exactly at ``cut`` if inside."""
    edges = [*range(lo - 1, hi, size), hi]
    if cut is not None and lo <= cut < hi and cut not in edges:
        edges = sorted([*edges, cut])
    return [(a + 1, b) for a, b in itertools.pairwise(edges) if b > a]


@dataclass(frozen=True)
class ChainVerification:
    """A verification's report, plus the requests still open right after record ``cut`` (when it passed)."""

    report: VerifyReport
    open_at_cut: frozenset[str] | None


def verify_chain(
    engine: Engine,
    *,
    checkpoints: Sequence[ChainHead] = (),
    start: ChainHead | None = None,
    resume: bool = False,
    open_requests: frozenset[str] = frozenset(),
    cut: int | None = None,
    workers: int | None = None,
    range_rows: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ChainVerification:
    """Verify the chain in ``engine``'s database from genesis, or after ``start``.

    ``start`` is the closing checkpoint of archived records (rows at or below it must be gone: one still
    there is an ``unexpected seq``) or, with ``resume``, a verified head to continue from (rows at or below
    it are not read; ``open_requests`` are the requests open there). Every head in ``checkpoints`` after
    ``start`` must be in the chain with its hash. ``cut`` asks for the open requests right after that seq
    (the incremental state records them). ``workers`` (default :func:`default_workers`) processes check
    ranges when the chain has at least :data:`PARALLEL_MIN_ROWS` rows to read; ``range_rows`` sets the
    size of a range (by default one range in the calling process, else a few per worker). ``progress``
    gets the number of rows checked so far.
    """
    start = start if start is not None else ChainHead(0, GENESIS_HASH)
    wanted = {c.seq: c.row_hash for c in checkpoints if c.seq > start.seq}
    with reading(engine) as conn:
        low, high = conn.execute(select(func.min(AuditRecordRow.seq), func.max(AuditRecordRow.seq))).one()
        url = engine.url
        if conn.dialect.name == "postgresql":
            # Workers must see the same tables: the schema may come from connect options, not the URL.
            path = conn.execute(text("SELECT current_setting('search_path')")).scalar_one()
            escaped = path.replace("\\", "\\\\").replace(" ", "\\ ")  # libpq options: spaces escaped
            url = url.update_query_dict({"options": f"-csearch_path={escaped}"})
        if resume and high is not None:
            low = start.seq + 1
        workers = default_workers() if workers is None else max(1, workers)
        rows = 0 if high is None else max(0, int(high) - int(low) + 1)
        if high is None or rows == 0:
            outcomes: Iterator[RangeOutcome] = iter(())
            return _join(start, outcomes, wanted, open_requests, cut, progress)
        lo, hi = int(low), int(high)
        if workers == 1 or rows < PARALLEL_MIN_ROWS:
            ranges = _ranges(lo, hi, range_rows or rows, cut)

            def in_process() -> Iterator[RangeOutcome]:
                offset = 0
                for a, b in ranges:

                    def step(done: int, base: int = offset) -> None:
                        if progress is not None:
                            progress(base + done)

                    outcome = verify_range(conn, a, b, wanted, progress=step)
                    offset += outcome.count
                    yield outcome

            return _join(start, in_process(), wanted, open_requests, cut, progress)
    size = range_rows or max(_RANGE_MIN_ROWS, -(-rows // (workers * _RANGES_PER_WORKER)))
    ranges = _ranges(lo, hi, size, cut)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, len(ranges)),
        mp_context=context,
        initializer=_start_worker,
        initargs=(url.render_as_string(hide_password=False),),
    ) as pool:
        futures = [
            pool.submit(_range_in_worker, a, b, {s: h for s, h in wanted.items() if a <= s <= b})
            for a, b in ranges
        ]
        try:
            return _join(start, _results(futures), wanted, open_requests, cut, progress)
        finally:
            for future in futures:
                future.cancel()


def _results(futures: list[Future[RangeOutcome]]) -> Iterator[RangeOutcome]:
    for future in futures:
        with translate_db_errors():
            yield future.result()


def _join(
    start: ChainHead,
    outcomes: Iterator[RangeOutcome],
    checkpoints: Mapping[int, str],
    open_requests: frozenset[str],
    cut: int | None,
    progress: Callable[[int], None] | None,
) -> ChainVerification:
    """Join range outcomes in seq order into the report one pass over every record would give."""
    head = start
    count = 0
    open_now = set(open_requests)
    open_at_cut: frozenset[str] | None = frozenset(open_now) if cut == start.seq else None
    failure: tuple[int, str] | None = None
    for outcome in outcomes:
        if outcome.first is None:
            continue
        first_seq, first_prev = outcome.first
        expected = head.seq + 1
        if first_seq > expected:
            failure = (expected, "gap")
        elif first_seq < expected:
            failure = (first_seq, "unexpected seq")
        elif first_prev != head.row_hash:
            failure = (first_seq, "broken link")
        if failure is not None:
            break
        count += outcome.count
        open_now.difference_update(outcome.closed_elsewhere)
        open_now.update(outcome.open_requests)
        if outcome.count:
            head = outcome.head
        if progress is not None:
            progress(count)
        if outcome.failure is not None:
            failure = outcome.failure
            break
        if cut is not None and head.seq == cut:
            open_at_cut = frozenset(open_now)
    if failure is None:
        beyond = [seq for seq in checkpoints if seq > head.seq]
        if beyond:
            failure = (head.seq + 1, "chain shorter than checkpoint")
    if progress is not None:
        progress(count)
    report = VerifyReport(
        ok=failure is None,
        count=count,
        head_hash=head.row_hash,
        first_bad_seq=None if failure is None else failure[0],
        reason="" if failure is None else failure[1],
        incomplete=len(open_now),
        head_seq=head.seq,
    )
    return ChainVerification(report, open_at_cut if failure is None else None)
