"""Builders and assertions for tests of code that writes or reads audit records.

Shared by the audit unit tests and usable by server and integration tests: a valid event with overridable
fields, one assertion that a chain is linear, gap-free and verifies, and a throwaway PostgreSQL schema. Not
imported by production code.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from custos.audit import AuditEvent, AuditStore, StoredRecord
from custos.audit.chain import GENESIS_HASH, compute_row_hash

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
"""Start time of :func:`event` (fixed, so payloads are reproducible)."""


def event(**overrides: Any) -> AuditEvent:
    """Return a valid request-phase ``generate`` event; ``overrides`` replace any field."""
    fields: dict[str, Any] = {
        "event_type": "generate",
        "phase": "request",
        "start_time": T0,
        "end_time": T0 + timedelta(milliseconds=5),
        "actor": "svc:crm",
        "rpc": "/custos.v1.Inference/Generate",
        "status": "OK",
        "model": "gemma-3-270m",
        "conversation_ref": "c" * 64,
        "subject_ref": "s" * 64,
        "details": {"pii": [{"type": "PERSON", "start": 0, "end": 4, "score": 0.85}], "tokens": 12},
    }
    fields.update(overrides)
    return AuditEvent(**fields)


def completion(request: StoredRecord, **overrides: Any) -> AuditEvent:
    """Return the completion event closing ``request``; ``overrides`` replace any field."""
    fields: dict[str, Any] = {"phase": "completion", "request_id": request.id, "details": {"finish": "stop"}}
    fields.update(overrides)
    return event(**fields)


def all_records(store: AuditStore) -> list[StoredRecord]:
    """Return every record, oldest first, read through the public paginated query."""
    records: list[StoredRecord] = []
    token: str | None = None
    while True:
        page, token = store.query(page_size=37, page_token=token)
        records.extend(page)
        if token is None:
            return list(reversed(records))


def assert_linear_chain(store: AuditStore, expected_count: int) -> list[StoredRecord]:
    """Assert the chain is seq 1..n without gaps or forks, each record linked to and hashed over the previous.

    Reads through the public paginated query (so it also exercises pagination) and checks ``verify()``.
    """
    records = all_records(store)
    assert [r.seq for r in records] == list(range(1, expected_count + 1))
    assert len({r.id for r in records}) == expected_count
    prev = GENESIS_HASH
    for record in records:
        assert record.prev_hash == prev, f"seq {record.seq} does not link to its predecessor"
        assert record.row_hash == compute_row_hash(prev, record.payload)
        prev = record.row_hash
    report = store.verify()
    assert report.ok, report
    assert (report.count, report.head_seq, report.head_hash) == (expected_count, expected_count, prev)
    return records


TEST_POSTGRES_URL = os.environ.get(
    "CUSTOS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
"""The PostgreSQL database the tests use (``CUSTOS_TEST_POSTGRES_URL``)."""


def schema_url(schema: str) -> str:
    """URL of ``schema`` on the test PostgreSQL (its search path)."""
    return f"{TEST_POSTGRES_URL}?options=-csearch_path%3D{schema}"


@contextmanager
def postgres_schema(prefix: str) -> Iterator[str]:
    """Name of a fresh schema on the test PostgreSQL, dropped with its contents afterwards.

    Skips the calling test when PostgreSQL is unreachable, naming the URL.
    """
    import pytest
    import sqlalchemy as sa

    from custos.audit.db import make_engine

    admin = make_engine(TEST_POSTGRES_URL, connect_timeout_s=3)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {TEST_POSTGRES_URL}")
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
