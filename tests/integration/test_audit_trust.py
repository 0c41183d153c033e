"""Trust in the audit trail over real servers: no secret in config records, pinned keys and checkpoints."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from presidio_analyzer import AnalyzerEngine
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from custos.audit.checkpoints import CheckpointError
from custos.audit.db import make_engine
from custos.cli.main import app as cli_app
from custos.testing.audit import TEST_POSTGRES_URL, postgres_schema
from custos.testing.server import ScriptedEngine, ServerHarness, make_server
from custos.v1 import audit_pb2


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


# ---- item: live verification does not trust the data directory ----------------------------------------


NO_CHECKPOINT = "no signed checkpoint covers the chain"


def _other_public_key_hex() -> str:
    """The public key of somebody else's signing key."""
    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def _harness(tmp_path: Path, analyzer: AnalyzerEngine, **overrides: object) -> ServerHarness:
    return make_server(tmp_path, analyzer, ScriptedEngine("ok"), pii_language_detection=False, **overrides)


def _refused_start(harness: ServerHarness) -> CheckpointError:
    """Start ``harness``, expecting the start to fail on the audit trail; tidy up its loop thread."""
    try:
        with pytest.raises(CheckpointError) as info, harness:
            pass
    finally:
        harness.loop.call_soon_threadsafe(harness.loop.stop)
        harness.thread.join(timeout=10)
    return info.value


def _cli(*args: str) -> object:
    return CliRunner().invoke(cli_app, list(args))


def test_a_deleted_signing_key_is_not_remade_at_the_next_start(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    with _harness(tmp_path, analyzer) as harness:
        key = harness.server.settings.data_dir / "keys" / "audit-signing.pem"  # the default
        first = key.read_bytes()
    assert key.stat().st_mode & 0o777 == 0o600
    key.unlink()
    error = _refused_start(_harness(tmp_path, analyzer))
    assert f"audit signing key {key} is missing" in str(error) and "never re-created" in str(error)
    assert not key.exists()
    key.write_bytes(first)
    key.chmod(0o600)
    with _harness(tmp_path, analyzer) as harness:  # the restored key starts again
        assert harness.audit.Verify(audit_pb2.AuditVerifyRequest()).ok


def test_verify_over_the_socket_fails_once_the_checkpoint_file_is_emptied(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    with _harness(tmp_path, analyzer) as harness:
        verified = harness.audit.Verify(audit_pb2.AuditVerifyRequest())
        assert verified.ok and verified.checkpoints >= 1, verified  # the start signs its own records
        (harness.server.settings.data_dir / "audit-checkpoints.jsonl").write_text("")
        emptied = harness.audit.Verify(audit_pb2.AuditVerifyRequest())
        assert not emptied.ok and emptied.checkpoints == 0
        assert emptied.reason.startswith(NO_CHECKPOINT) and not emptied.HasField("first_bad_seq")


def test_cli_verifies_against_a_shipped_checkpoint_file_and_a_pinned_key(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    shipped = tmp_path / "shipped-checkpoints.jsonl"
    with _harness(tmp_path, analyzer) as harness:
        settings = harness.server.settings
        data_dir = str(settings.data_dir)
        for _ in range(3):
            harness.create_token("inference")  # records to cover
        assert harness.server.trail is not None
        signed = harness.server.trail.writer.maybe_write(force=True)
        assert signed is not None
        shipped.write_bytes((settings.data_dir / "audit-checkpoints.jsonl").read_bytes())
        pinned = tmp_path / "audit-public.hex"
        pinned.write_text(harness.server.trail.signer.public_key_hex + "\n")
        other = _other_public_key_hex()
        trusted = ("--checkpoints", str(shipped), "--public-key", str(pinned))

        ok = _cli("audit", "verify", "--data-dir", data_dir, *trusted, "--format", "json")
        assert ok.exit_code == 0, ok.output  # type: ignore[attr-defined]
        wrong_key = _cli("audit", "verify", "--data-dir", data_dir, "--checkpoints", str(shipped),
                         "--public-key", other)  # fmt: skip
        assert wrong_key.exit_code == 1 and "invalid signature" in wrong_key.output  # type: ignore[attr-defined]

        # Someone with the data directory cuts the log's tail and empties the checkpoint file there.
        engine = make_engine(settings.resolved_database_url)
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM audit_records WHERE seq >= :cut"), {"cut": signed.seq - 1})
        engine.dispose()
        (settings.data_dir / "audit-checkpoints.jsonl").write_text("")
        # (each verify appends its own audit_read record, so the copy is checked first)
        against_copy = _cli("audit", "verify", "--data-dir", data_dir, *trusted, "--format", "json")
        assert against_copy.exit_code == 1  # type: ignore[attr-defined]
        result = json.loads(against_copy.stdout.splitlines()[0])  # type: ignore[attr-defined]
        assert (result["reason"], result["first_bad_seq"]) == (
            "chain shorter than checkpoint",
            signed.seq - 1,
        )
        local = _cli("audit", "verify", "--data-dir", data_dir, "--format", "json")
        assert local.exit_code == 1 and NO_CHECKPOINT in local.output  # type: ignore[attr-defined]


def test_a_pinned_public_key_that_is_not_the_signing_key_stops_the_start(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    with _harness(tmp_path, analyzer) as harness:
        assert harness.server.trail is not None
        mine, other = tmp_path / "mine.hex", tmp_path / "other.hex"
        mine.write_text(harness.server.trail.signer.public_key_hex + "\n")
    other.write_text(_other_public_key_hex())
    error = _refused_start(_harness(tmp_path, analyzer, audit_public_key_file=other))
    assert "is not the pinned public key" in str(error)
    with _harness(tmp_path, analyzer, audit_public_key_file=mine) as harness:
        assert harness.audit.Verify(audit_pb2.AuditVerifyRequest()).ok


def test_a_log_written_by_commands_before_the_first_start_needs_an_explicit_new_key(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    data_dir = str(tmp_path / "data")
    created = _cli(
        "tokens", "create", "--principal", "officer", "--role", "compliance", "--data-dir", data_dir
    )
    assert created.exit_code == 0, created.output  # type: ignore[attr-defined]
    # The harness talks with the token in admin.token (the server makes none: a token exists).
    token = created.stdout.strip().splitlines()[-1]  # type: ignore[attr-defined]
    (tmp_path / "data" / "admin.token").write_text(token + "\n")
    error = _refused_start(_harness(tmp_path, analyzer))
    assert "--new-signing-key" in str(error)
    restored = _cli(
        "audit", "record-restore", "--new-signing-key", "--note", "first start", "--data-dir", data_dir
    )
    assert restored.exit_code == 0, restored.output  # type: ignore[attr-defined]
    again = _cli("audit", "record-restore", "--new-signing-key", "--note", "again", "--data-dir", data_dir)
    assert again.exit_code == 2 and "holds checkpoints" in again.output  # type: ignore[attr-defined]
    with _harness(tmp_path, analyzer) as harness:
        verified = harness.audit.Verify(audit_pb2.AuditVerifyRequest())
        assert verified.ok and verified.checkpoints >= 2, verified
