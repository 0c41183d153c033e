"""Fixtures: a migrated audit database on SQLite (a tmp_path file) and on the real PostgreSQL.

Each PostgreSQL test gets its own freshly created schema (via ``search_path``), dropped afterwards, so tests
never see each other's chains. PostgreSQL tests skip only when the server cannot be reached, saying why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from custos.audit import AuditStore, default_sqlite_url, make_engine, migrate

PG_URL = os.environ.get("CUSTOS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine]:
    """An engine on the test PostgreSQL database, or a skip naming the reason it is unreachable."""
    engine = make_engine(PG_URL, connect_timeout_s=3)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as err:
        engine.dispose()
        reason = str(err.orig).strip().splitlines()[0] if err.orig else type(err).__name__
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {reason}")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_schema_url(pg_admin: sa.Engine) -> Iterator[str]:
    """URL of a brand-new empty schema, dropped (with everything in it) after the test."""
    schema = f"custos_audit_test_{uuid.uuid4().hex[:12]}"
    with pg_admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with pg_admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty (unmigrated) audit database, once per backend."""
    if request.param == "sqlite":
        return default_sqlite_url(tmp_path)
    url: str = request.getfixturevalue("pg_schema_url")
    return url


@pytest.fixture
def engine_factory(db_url: str) -> Iterator[Callable[..., sa.Engine]]:
    """Make extra engines on the same database (like other processes or replicas); all disposed afterwards."""
    engines: list[sa.Engine] = []

    def factory(**kwargs: float) -> sa.Engine:
        kwargs.setdefault("lock_timeout_s", 30.0)
        engine = make_engine(db_url, **kwargs)
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        engine.dispose()


@pytest.fixture
def engine(engine_factory: Callable[..., sa.Engine]) -> sa.Engine:
    """A migrated audit database."""
    engine = engine_factory()
    migrate(engine)
    return engine


@pytest.fixture
def store(engine: sa.Engine) -> AuditStore:
    """An AuditStore on an empty migrated database."""
    return AuditStore(engine)
