"""docs/keys.md's backup and recovery, followed literally: back up, lose the data directory, restore, read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from custos.audit import make_engine, migrate
from custos.audit.models import TranscriptRow
from custos.cli.main import app
from custos.privacy.errors import KeyFileError, KeyRetired
from custos.privacy.transcripts import open_transcript, seal_transcript
from custos.server.keys import open_master_keys
from custos.server.settings import load_settings

runner = CliRunner()


def _write_transcripts(data_dir: Path) -> dict[str, bytes]:
    settings = load_settings(data_dir=data_dir)
    keys = open_master_keys(settings, create=False)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    from custos.privacy.subject_keys import SubjectKeyStore

    store = SubjectKeyStore(engine, keys)
    written = {}
    subject_keys = [store.get_or_create(f"s{n}") for n in range(3)]
    with engine.begin() as conn:
        for n in range(3):
            transcript_id = f"t-{n}"
            plaintext = f"conversation {n}".encode()
            blob = seal_transcript(plaintext, transcript_id=transcript_id, subject_key=subject_keys[n])
            conn.execute(
                sa.insert(TranscriptRow).values(
                    id=transcript_id,
                    created_at=sa.func.now(),
                    conversation_ref="c",
                    subject_ref=f"s{n}",
                    key_version=1,
                    format_version=2,
                    ciphertext=blob,
                )
            )
            written[transcript_id] = plaintext
    engine.dispose()
    return written


def _read_all(data_dir: Path, **overrides: object) -> dict[str, bytes]:
    from custos.privacy.subject_keys import SubjectKeyStore

    settings = load_settings(data_dir=data_dir, **overrides)
    keys = open_master_keys(settings, create=False)
    engine = make_engine(settings.resolved_database_url)
    store = SubjectKeyStore(engine, keys)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(TranscriptRow)).all()
    engine.dispose()
    return {
        row.id: open_transcript(
            row.ciphertext,
            transcript_id=row.id,
            conversation_ref=row.conversation_ref,
            subject_ref=row.subject_ref,
            keys=keys,
            subject_keys=store,
        )
        for row in stored
    }


def test_restore_from_the_documented_backup_reads_every_transcript(tmp_path: Path) -> None:
    data_dir = tmp_path / "custos-data"
    result = runner.invoke(app, ["keys", "init", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    key_file = data_dir / "keys" / "master.json"
    assert key_file.stat().st_mode & 0o777 == 0o600
    written = _write_transcripts(data_dir)
    # Rotation before the backup: the backup must hold every version in use.
    assert runner.invoke(app, ["keys", "rotate", "--data-dir", str(data_dir)]).exit_code == 0
    assert runner.invoke(app, ["keys", "rewrap", "--data-dir", str(data_dir)]).exit_code == 0

    backup = tmp_path / "backup"
    backup.mkdir()
    shutil.copy2(key_file, backup / "master.json")
    shutil.copy2(data_dir / "custos.db", backup / "custos.db")
    shutil.rmtree(data_dir)  # the machine is lost

    with pytest.raises(KeyFileError, match="restore it from your backup"):
        open_master_keys(load_settings(data_dir=data_dir), create=False)

    (data_dir / "keys").mkdir(parents=True, mode=0o700)
    shutil.copy2(backup / "master.json", key_file)
    key_file.chmod(0o600)
    shutil.copy2(backup / "custos.db", data_dir / "custos.db")
    assert _read_all(data_dir) == written

    listing = runner.invoke(app, ["keys", "list", "--data-dir", str(data_dir)])
    assert listing.exit_code == 0, listing.output
    assert "master key v2" in listing.output and "wraps 3 subject keys" in listing.output
    assert "blind-index HMAC key" in listing.output and "checkpoint signing key" in listing.output
    as_json = runner.invoke(app, ["keys", "list", "--data-dir", str(data_dir), "--format", "json"])
    keys = {row["key"]: row for row in json.loads(as_json.stdout)}
    assert any("wraps 3 subject keys" in row["use"] for row in keys.values())
    assert {"master key v2", "blind-index HMAC key"} <= set(keys) and keys["master key v2"]["created"]


def test_keys_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    assert runner.invoke(app, ["keys", "init", "--data-dir", str(data_dir)]).exit_code == 0
    key_file = data_dir / "keys" / "master.json"
    before = key_file.read_bytes()
    refused = runner.invoke(app, ["keys", "init", "--data-dir", str(data_dir)])
    assert refused.exit_code == 1 and "--force" in refused.output
    assert key_file.read_bytes() == before
    forced = runner.invoke(app, ["keys", "init", "--data-dir", str(data_dir), "--force"])
    assert forced.exit_code == 0 and key_file.read_bytes() != before
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_rotate_stage_promote_and_retire_through_the_commands(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    assert runner.invoke(app, ["keys", "init", "--data-dir", str(data_dir)]).exit_code == 0
    written = _write_transcripts(data_dir)
    staged = runner.invoke(app, ["keys", "rotate", "--stage", "--data-dir", str(data_dir)])
    assert staged.exit_code == 0 and "primary is 1" in staged.output, staged.output
    assert runner.invoke(app, ["keys", "promote", "2", "--data-dir", str(data_dir)]).exit_code == 0
    # Retiring version 1 before the rewrap refuses every subject key still on it, with the reason.
    with pytest.raises(KeyRetired, match="version 1 is retired"):
        _read_all(data_dir, key_min_decrypt_version=2)
    assert runner.invoke(app, ["keys", "rewrap", "--data-dir", str(data_dir)]).exit_code == 0
    assert _read_all(data_dir, key_min_decrypt_version=2) == written
    listing = runner.invoke(app, ["keys", "list", "--data-dir", str(data_dir)])
    assert "primary; wraps 3 subject keys" in listing.output and "decrypt-only; wraps 0" in listing.output
