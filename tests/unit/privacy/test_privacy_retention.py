"""Retention purge and the subject export (right of access), through the commands operators run."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from custos.audit import AuditStore, make_engine, migrate
from custos.audit.events import AuditEvent
from custos.audit.models import TranscriptRow
from custos.cli.main import app
from custos.privacy.subject_keys import SubjectKeyStore, subject_ref_of
from custos.privacy.transcripts import seal_transcript
from custos.server.keys import open_master_keys
from custos.server.settings import load_settings
from custos.testing.audit import all_records

runner = CliRunner()


def _setup(data_dir: Path) -> tuple[sa.Engine, str]:
    assert runner.invoke(app, ["keys", "init", "--data-dir", str(data_dir)]).exit_code == 0
    settings = load_settings(data_dir=data_dir)
    keys = open_master_keys(settings, create=False)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    ref = subject_ref_of(keys, "customer-42")
    store = SubjectKeyStore(engine, keys)
    now = datetime.now(UTC)
    subject_key = store.get_or_create(ref)
    other_key = store.get_or_create("someone-else")
    rows = [
        ("old-1", ref, now - timedelta(days=40), subject_key),
        ("old-2", "someone-else", now - timedelta(days=31), other_key),
        ("new-1", ref, now - timedelta(days=2), subject_key),
    ]
    with engine.begin() as conn:
        for transcript_id, subject, created, key in rows:
            document = json.dumps({"messages": [{"role": "user", "content": f"text of {transcript_id}"}]})
            conn.execute(
                sa.insert(TranscriptRow).values(
                    id=transcript_id,
                    created_at=created,
                    conversation_ref="c",
                    subject_ref=subject,
                    key_version=1,
                    format_version=2,
                    ciphertext=seal_transcript(
                        document.encode(), transcript_id=transcript_id, subject_key=key
                    ),
                )
            )
    AuditStore(engine).append(
        AuditEvent(
            event_type="generate",
            phase="request",
            start_time=now,
            end_time=now,
            actor="crm",
            rpc="Generate",
            status="OK",
            subject_ref=ref,
            details={},
        )
    )
    return engine, ref


def test_purge_destroys_only_transcripts_past_retention_and_is_audited(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    engine, _ = _setup(data_dir)
    result = runner.invoke(
        app, ["transcripts", "purge", "--older-than-days", "30", "--data-dir", str(data_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "2 transcripts" in result.output
    with engine.connect() as conn:
        assert conn.execute(sa.select(TranscriptRow.id)).scalars().all() == ["new-1"]
    audit = AuditStore(engine)
    purges = [r for r in all_records(audit) if r.event_type == "transcript_purge"]
    assert len(purges) == 1 and purges[0].details["deleted"] == 2
    assert audit.verify().ok
    # Nothing left to purge: no further record.
    assert (
        runner.invoke(
            app, ["transcripts", "purge", "--older-than-days", "30", "--data-dir", str(data_dir)]
        ).exit_code
        == 0
    )
    assert len([r for r in all_records(audit) if r.event_type == "transcript_purge"]) == 1


def test_purge_without_a_retention_setting_refuses(tmp_path: Path) -> None:
    result = runner.invoke(app, ["transcripts", "purge", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2 and "transcript_retention_days" in result.output


def test_subject_export_holds_their_transcripts_and_records_and_is_audited(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    engine, ref = _setup(data_dir)
    out_file = tmp_path / "export.json"
    result = runner.invoke(
        app, ["subjects", "export", "customer-42", "--out", str(out_file), "--data-dir", str(data_dir)]
    )
    assert result.exit_code == 0, result.output
    assert out_file.stat().st_mode & 0o777 == 0o600
    document = json.loads(out_file.read_text())
    assert [t["id"] for t in document["transcripts"]] == ["old-1", "new-1"]
    assert document["transcripts"][0]["messages"][0]["content"] == "text of old-1"
    assert [r["event_type"] for r in document["audit_records"]] == ["generate"]
    exports = [r for r in all_records(AuditStore(engine)) if r.event_type == "transcript_read"]
    assert [(r.subject_ref, r.details["kind"], r.id) for r in exports] == [
        (ref, "subject_export", document["export_record"])
    ]
    assert "customer-42" not in exports[0].payload_json


def test_subjects_erase_command_shreds_the_subject_and_writes_the_ledger(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    engine, ref = _setup(data_dir)
    result = runner.invoke(app, ["subjects", "erase", "customer-42", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["subject_ref"] == ref and summary["subject_key_destroyed"] is True
    assert summary["transcripts_unreadable"] == 2
    ledger = (data_dir / "erasure-ledger.jsonl").read_text()
    assert ref in ledger and "customer-42" not in ledger
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT subject_ref FROM subject_keys")).scalars().all() == [
            "someone-else"
        ]
    erased = [r for r in all_records(AuditStore(engine)) if r.event_type == "erase_subject"]
    assert [(r.subject_ref, r.actor.startswith("os:")) for r in erased] == [(ref, True)]
    usage = runner.invoke(app, ["subjects", "erase", "--data-dir", str(data_dir)])
    assert usage.exit_code == 2
