"""Trust in the audit trail over real servers: no secret in config records, pinned keys and checkpoints."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from presidio_analyzer import AnalyzerEngine
from sqlalchemy.engine import make_url

from custos.audit.db import make_engine
from custos.testing.audit import TEST_POSTGRES_URL, postgres_schema
from custos.testing.server import ScriptedEngine, make_server


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL, dropped afterwards (skip when it is unreachable)."""
    with postgres_schema("custos_trust") as schema:
        yield schema


def _url_with_password(schema: str, password: str) -> str:
    """The test database (trust authentication: any password is accepted) with ``password`` in the URL."""
    url = make_url(TEST_POSTGRES_URL).set(password=password)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


def _config_payloads(url: str) -> list[bytes]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT payload FROM audit_records WHERE event_type = 'config_change' ORDER BY seq")
            )
            return [bytes(r[0]) if isinstance(r[0], bytes | memoryview) else r[0].encode() for r in rows]
    finally:
        engine.dispose()


def _start(tmp_path: Path, analyzer: AnalyzerEngine, url: str) -> None:
    with make_server(
        tmp_path, analyzer, ScriptedEngine("ok"), database_url=url, pii_language_detection=False
    ):
        pass


@pytest.mark.postgres
def test_config_change_records_hold_no_trace_of_the_database_password(
    tmp_path: Path, analyzer: AnalyzerEngine, pg_schema: str
) -> None:
    password = f"pw-{secrets.token_urlsafe(12)}"
    url = _url_with_password(pg_schema, password)
    _start(tmp_path, analyzer, url)
    [payload] = _config_payloads(url)
    # Neither the password nor an unkeyed SHA-256 (any prefix of 8+ hex digits) of it or of the URL.
    candidates = [password, url, json.dumps(url), json.dumps(password)]
    digests = [hashlib.sha256(c.encode()).hexdigest() for c in candidates]
    assert password.encode() not in payload
    assert not [d for d in digests if d[:8].encode() in payload]
    details = json.loads(payload)["details"]
    assert details["secret_fields"] == ["database_url.password"]

    # The same settings again: nothing new. Only the password changed: recorded, naming that part.
    _start(tmp_path, analyzer, url)
    assert len(_config_payloads(url)) == 1
    other = f"pw-{secrets.token_urlsafe(12)}"
    _start(tmp_path, analyzer, _url_with_password(pg_schema, other))
    first, second = (json.loads(p)["details"] for p in _config_payloads(url))
    assert second["changed"] == ["database_url.password"]
    assert second["previous_digest"] == first["digest"] != second["digest"]
    assert other.encode() not in _config_payloads(url)[1]
