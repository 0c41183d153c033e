from __future__ import annotations

import socket
import sqlite3
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from custos.audit import (
    AuditStore,
    AuditUnavailable,
    ChainConflict,
    TranscriptStore,
    default_sqlite_url,
    make_engine,
    migrate,
)
from custos.audit import db as db_module
from custos.audit import store as store_module
from custos.audit.chain import GENESIS_HASH, ChainHead
from custos.audit.store import APPEND_LOCK_KEY
from custos.testing.audit import assert_linear_chain, event

SECRET = "Jane Doe, 12 Baker Street"


def test_default_sqlite_url_points_into_the_data_dir(tmp_path: Path) -> None:
    url = default_sqlite_url(tmp_path)
    assert url == f"sqlite:///{tmp_path.resolve() / 'custos.db'}"
    assert sa.make_url(url).database == str(tmp_path.resolve() / "custos.db")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        pytest.param("sqlite://", "in-memory", id="memory"),
        pytest.param("sqlite:///:memory:", "in-memory", id="memory explicit"),
        pytest.param("mysql://u@h/db", "unsupported audit database backend", id="mysql"),
    ],
)
def test_make_engine_refuses_unsuitable_urls(url: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        make_engine(url)


def test_plain_postgresql_url_uses_psycopg3() -> None:
    engine = make_engine("postgresql://postgres@127.0.0.1:1/x")
    assert engine.dialect.driver == "psycopg"


# --- SQLite settings ---------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = make_engine(default_sqlite_url(tmp_path), lock_timeout_s=0.3)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.mark.parametrize(
    ("pragma", "expected"),
    [("journal_mode", "wal"), ("busy_timeout", 300), ("foreign_keys", 1), ("synchronous", 2)],
)
def test_sqlite_connections_are_configured(sqlite_engine: sa.Engine, pragma: str, expected: object) -> None:
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql(f"PRAGMA {pragma}").scalar() == expected


def _raw_sqlite(engine: sa.Engine) -> sqlite3.Connection:
    database = engine.url.database
    assert database is not None
    return sqlite3.connect(database, timeout=0, isolation_level=None)


def test_sqlite_write_transactions_take_the_write_lock_at_begin(sqlite_engine: sa.Engine) -> None:
    other = _raw_sqlite(sqlite_engine)
    try:
        # no statement yet: BEGIN IMMEDIATE alone must hold the lock
        with sqlite_engine.begin(), pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # released at commit
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_sqlite_locked_past_busy_timeout_is_unavailable_while_reads_still_work(
    sqlite_engine: sa.Engine,
) -> None:
    store = AuditStore(sqlite_engine)
    first = store.append(event())
    holder = _raw_sqlite(sqlite_engine)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(AuditUnavailable) as info:
            store.append(event(details={"note": SECRET}))
        assert 0.2 < time.monotonic() - started < 5
        _assert_no_secret(info.value)
        # WAL + deferred read transactions: readers are not blocked by the writer's lock
        assert store.get(first.id) == first
        assert store.query()[0] == [first]
        assert store.verify().ok
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_linear_chain(store, 1)


# --- PostgreSQL settings -----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_keeps_url_options_and_sets_lock_timeout(pg_schema_url: str) -> None:
    engine = make_engine(pg_schema_url, lock_timeout_s=1.5)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "1500ms"
            assert conn.exec_driver_sql("SELECT current_schema()").scalar().startswith("custos_audit_test_")
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_append_waits_for_the_advisory_lock_then_is_unavailable(pg_schema_url: str) -> None:
    engine = make_engine(pg_schema_url, lock_timeout_s=0.3)
    holder_engine = make_engine(pg_schema_url)
    try:
        migrate(engine)
        store = AuditStore(engine)
        store.append(event())
        with holder_engine.begin() as holder:
            holder.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": APPEND_LOCK_KEY})
            started = time.monotonic()
            with pytest.raises(AuditUnavailable) as info:
                store.append(event(details={"note": SECRET}))
            assert 0.2 < time.monotonic() - started < 5
            _assert_no_secret(info.value)
            assert store.verify().ok  # reads do not need the lock
        store.append(event())  # lock released: appends resume
        assert_linear_chain(store, 2)
    finally:
        engine.dispose()
        holder_engine.dispose()


@pytest.mark.postgres
def test_postgres_pings_only_connections_idle_in_the_pool(
    pg_schema_url: str, pg_admin: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ping round trip for a connection used a moment ago; an idle one is pinged and replaced if dead."""
    engine = make_engine(pg_schema_url, pool_size=1)
    pings: list[object] = []
    real_ping = engine.dialect.do_ping

    def counting_ping(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return real_ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counting_ping)
    try:
        with engine.connect() as conn:
            first_pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        for _ in range(3):
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == first_pid
        assert pings == []  # a fresh connection and three quick reuses: no ping
        with pg_admin.begin() as admin:
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": first_pid})
        monkeypatch.setattr(db_module, "IDLE_PING_S", 0.0)
        with engine.connect() as conn:  # idle past the limit: pinged, found dead, replaced
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() != first_pid
        assert pings and getattr(pings[0], "broken", False)  # the dead one was pinged first
    finally:
        engine.dispose()


# --- unreachable databases ---------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


def _pg_closed_port(tmp_path: Path) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/test"


def _sqlite_missing_dir(tmp_path: Path) -> str:
    return default_sqlite_url(tmp_path / "no" / "such" / "dir")


Operation = Callable[[sa.Engine], object]

OPERATIONS: dict[str, Operation] = {
    "append": lambda e: AuditStore(e).append(event(details={"note": SECRET})),
    "get": lambda e: AuditStore(e).get(str(uuid.uuid4())),
    "query": lambda e: AuditStore(e).query(actor="x"),
    "verify": lambda e: AuditStore(e).verify(),
    "head": lambda e: AuditStore(e).head(),
    "migrate": migrate,
    "transcript put": lambda e: TranscriptStore(e).put(
        transcript_id=str(uuid.uuid4()),
        conversation_ref=None,
        subject_ref=None,
        key_version=1,
        format_version=1,
        ciphertext=SECRET.encode(),
    ),
    "transcript get": lambda e: TranscriptStore(e).get(str(uuid.uuid4())),
}


@pytest.mark.parametrize(
    "make_url", [_pg_closed_port, _sqlite_missing_dir], ids=["pg closed port", "sqlite no dir"]
)
@pytest.mark.parametrize("operation", OPERATIONS.values(), ids=OPERATIONS.keys())
def test_unreachable_database_raises_audit_unavailable(
    tmp_path: Path, make_url: Callable[[Path], str], operation: Operation
) -> None:
    engine = make_engine(make_url(tmp_path), connect_timeout_s=2)
    try:
        with pytest.raises(AuditUnavailable) as info:
            operation(engine)
        _assert_no_secret(info.value)
    finally:
        engine.dispose()


def test_errors_never_carry_payload_values(store: AuditStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # A failing INSERT's parameters hold the payload: they must not reach messages or tracebacks.
    store.append(event())
    monkeypatch.setattr(store_module, "_head_of", lambda row: ChainHead(0, GENESIS_HASH))
    with pytest.raises(ChainConflict) as info:
        store.append(event(details={"note": SECRET}, actor=SECRET))
    _assert_no_secret(info.value)


def _assert_no_secret(err: BaseException) -> None:
    text = "".join(traceback.format_exception(err))
    assert SECRET not in text and "Jane" not in text
