"""Engine construction and schema migration for the audit database (SQLite or PostgreSQL).

SQLite is the embedded default: WAL so readers never block the writer, ``busy_timeout`` so a briefly held lock
is waited for, and ``BEGIN IMMEDIATE`` so a write transaction takes the write lock up front (reading the chain
head and inserting the next record can then never deadlock or interleave). PostgreSQL uses psycopg 3.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import ConnectionPoolEntry

from custos.audit.errors import AuditBusy, AuditUnavailable

__all__ = [
    "DEFERRED_READ",
    "MIGRATION_LOCK_KEY",
    "alembic_config",
    "default_sqlite_url",
    "make_engine",
    "migrate",
    "read_only",
    "translate_db_errors",
]

DEFERRED_READ = "custos_deferred_read"
"""Execution option: on SQLite, begin with a plain (deferred) ``BEGIN`` instead of ``BEGIN IMMEDIATE``.

Read-only work sets it so that queries and verification do not queue behind, or block, appends.
"""

MIGRATION_LOCK_KEY = 0x637573746F736D67  # "custosmg": serialises migrations of several replicas on PostgreSQL

DATABASE_FILE = "custos.db"  # the name the server settings use for the embedded default


@contextmanager
def translate_db_errors() -> Iterator[None]:
    """Turn "cannot reach or lock the database" errors into :class:`AuditUnavailable`.

    Covers connection failures and drops, SQLite "database is locked" after ``busy_timeout``, PostgreSQL
    ``lock_timeout`` and an exhausted connection pool; the two lock timeouts raise :class:`AuditBusy` (the
    database answered, it is not down). Other database errors (constraint violations, SQL bugs)
    pass through unchanged: they are not outages and must not be retried as such.
    """
    try:
        yield
    except exc.OperationalError as err:
        if _is_lock_timeout(err):
            raise AuditBusy("audit database unavailable") from err
        raise AuditUnavailable("audit database unavailable") from err
    except (exc.InterfaceError, exc.TimeoutError, exc.DisconnectionError) as err:
        raise AuditUnavailable("audit database unavailable") from err
    except exc.DBAPIError as err:
        if err.connection_invalidated:
            raise AuditUnavailable("audit database unavailable") from err
        raise


@contextmanager
def read_only(engine: Engine) -> Iterator[Connection]:
    """A connection for read-only work: on SQLite its transaction begins deferred (``DEFERRED_READ``).

    So a lookup neither takes nor waits for the write lock that appends hold (WAL gives it a snapshot): a
    token check or a vault read never queues behind a writer. Errors reaching the database become
    :class:`AuditUnavailable`. Never write on it.
    """
    with translate_db_errors(), engine.connect() as conn:
        conn.execution_options(**{DEFERRED_READ: True})
        yield conn


# SQLite's "database is locked" after busy_timeout; PostgreSQL's lock_not_available (lock_timeout).
_LOCK_TIMEOUT_SQLSTATE = "55P03"


def _is_lock_timeout(err: exc.OperationalError) -> bool:
    """Whether ``err`` is a lock wait that timed out (the database answered), not a lost connection."""
    if err.connection_invalidated:
        return False
    original = err.orig
    if getattr(original, "sqlstate", None) == _LOCK_TIMEOUT_SQLSTATE:
        return True
    return type(original).__module__.startswith("sqlite3") and "database is locked" in str(original)


def default_sqlite_url(data_dir: Path) -> str:
    """Return the URL of the embedded audit database inside ``data_dir`` (the directory is not created)."""
    return f"sqlite:///{(Path(data_dir) / DATABASE_FILE).resolve()}"


def _install_sqlite_hooks(engine: Engine, busy_timeout_ms: int) -> None:
    # SQLAlchemy's documented recipe: stop pysqlite from issuing its own BEGIN and emit ours on "begin".
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # FULL (the default) keeps each committed record durable across power loss, which fail-closed
            # auditing promises; NORMAL in WAL mode could lose the last commits.
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        deferred = conn.get_execution_options().get(DEFERRED_READ, False)
        conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


IDLE_PING_S = 1.0
"""A pooled PostgreSQL connection idle longer than this is pinged before use (see :func:`_ping_idle`)."""

_CHECKED_IN = "custos_checked_in"


def _ping_idle(engine: Engine) -> None:
    """Ping a pooled connection before use only when it sat idle in the pool for :data:`IDLE_PING_S`.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout, a round trip per append transaction; a
    connection returned a moment ago is alive. A failed ping discards the connection and the pool
    connects afresh (SQLAlchemy's documented custom pessimistic-disconnect recipe).
    """

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        checked_in = record.info.get(_CHECKED_IN)
        if checked_in is not None and time.monotonic() - checked_in < IDLE_PING_S:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as err:
            raise exc.DisconnectionError("audit database connection lost") from err
        if not alive:
            raise exc.DisconnectionError("audit database connection lost")


def make_engine(
    url: str,
    *,
    lock_timeout_s: float = 10.0,
    connect_timeout_s: float = 5.0,
    pool_size: int = 10,
) -> Engine:
    """Create an engine for the audit database at ``url``.

    ``sqlite:///path`` (a file; in-memory databases are refused because every pooled connection would see a
    different one) or ``postgresql://`` / ``postgresql+psycopg://`` (psycopg 3 is used either way).
    ``lock_timeout_s`` bounds how long an append waits for the append lock (SQLite ``busy_timeout``,
    PostgreSQL ``lock_timeout``) before :class:`AuditUnavailable`; ``connect_timeout_s`` bounds a PostgreSQL
    connection attempt. SQL parameters are hidden from error messages so payloads never reach logs.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or "mode=memory" in str(parsed):
            raise ValueError("the audit database must be a file; in-memory SQLite is not supported")
        engine = create_engine(parsed, hide_parameters=True, pool_size=pool_size, pool_pre_ping=False)
        _install_sqlite_hooks(engine, busy_timeout_ms=max(0, round(lock_timeout_s * 1000)))
        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            parsed = parsed.set(drivername="postgresql+psycopg")
        # libpq "options" from the URL (e.g. "-csearch_path=tenant") are kept, with the lock timeout appended.
        options = f"-c lock_timeout={max(0, round(lock_timeout_s * 1000))}"
        url_options = parsed.query.get("options")
        if url_options:
            joined = url_options if isinstance(url_options, str) else " ".join(url_options)
            options = f"{joined} {options}"
            parsed = parsed.difference_update_query(["options"])
        engine = create_engine(
            parsed,
            hide_parameters=True,
            pool_size=pool_size,
            connect_args={"connect_timeout": max(1, round(connect_timeout_s)), "options": options},
        )
        _ping_idle(engine)
        return engine
    raise ValueError(f"unsupported audit database backend {backend!r}; use sqlite or postgresql")


def alembic_config() -> Config:
    """Return an Alembic config for the packaged migrations (no ini file, no dependency on the cwd).

    Pass a connection in ``config.attributes["connection"]`` to run commands against a database.
    """
    config = Config()
    script_location = resources.files("custos.audit") / "migrations"
    config.set_main_option("script_location", str(script_location))
    return config


def migrate(engine: Engine) -> None:
    """Upgrade the audit schema of ``engine``'s database to the newest revision (``alembic upgrade head``).

    Runs in one transaction on the given engine, independent of the working directory. On PostgreSQL an
    advisory lock serialises replicas migrating at the same time. Raises :class:`AuditUnavailable` when the
    database cannot be reached.
    """
    config = alembic_config()
    with translate_db_errors(), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
