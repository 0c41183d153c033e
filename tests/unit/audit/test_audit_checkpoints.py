"""Signed checkpoints outside the database: truncation, restored backups, legitimate restores, archiving."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from custos.audit import AuditStore, make_engine, migrate
from custos.audit.checkpoints import (
    CheckpointError,
    CheckpointLog,
    CheckpointSigner,
    CheckpointWriter,
    effective_checkpoints,
)
from custos.audit.export import verify_export
from custos.audit.maintenance import archive, record_restore, verify_live
from custos.audit.models import AuditRecordRow
from custos.testing.audit import T0, event


@pytest.fixture
def signer(tmp_path: Path) -> CheckpointSigner:
    return CheckpointSigner.create(tmp_path / "keys" / "audit-signing.pem")


@pytest.fixture
def log(tmp_path: Path) -> CheckpointLog:
    return CheckpointLog(tmp_path / "audit-checkpoints.jsonl")


def _writer(store: AuditStore, signer: CheckpointSigner, log: CheckpointLog, every: int) -> CheckpointWriter:
    writer = CheckpointWriter(store.engine, signer, log, every_records=every, every_seconds=3600)
    store.add_commit_listener(writer.note_appended)
    return writer


def test_signing_key_is_created_private_and_reloaded(tmp_path: Path, signer: CheckpointSigner) -> None:
    path = tmp_path / "keys" / "audit-signing.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    assert CheckpointSigner.load(path).public_key_hex == signer.public_key_hex


def test_checkpoints_every_n_records_are_signed_and_verify(
    store: AuditStore, signer: CheckpointSigner, log: CheckpointLog
) -> None:
    _writer(store, signer, log, every=3)
    for i in range(7):
        store.append(event(actor=f"svc:{i}"))
    checkpoints = log.read(signer.public_key)
    assert [c.seq for c in checkpoints] == [3, 6]
    assert all(c.kind == "head" and c.verify(signer.public_key) for c in checkpoints)
    report, used = verify_live(store, log, signer)
    assert report.ok and report.count == 7 and used == 2


def test_time_based_checkpoint_and_no_duplicate_for_an_unmoved_head(
    store: AuditStore, signer: CheckpointSigner, log: CheckpointLog
) -> None:
    now = [0.0]
    writer = CheckpointWriter(
        store.engine, signer, log, every_records=1000, every_seconds=10, clock=lambda: now[0]
    )
    store.append(event())
    assert writer.maybe_write() is None  # not due yet
    now[0] = 11
    assert writer.maybe_write() is not None
    now[0] = 30
    assert writer.maybe_write() is None  # head did not move
    assert [c.seq for c in log.read()] == [1]


def test_a_forged_checkpoint_line_is_refused(
    store: AuditStore, signer: CheckpointSigner, log: CheckpointLog, tmp_path: Path
) -> None:
    _writer(store, signer, log, every=1)
    store.append(event())
    line = json.loads(log.path.read_text())
    line["seq"] = 5
    log.path.write_text(json.dumps(line) + "\n")
    with pytest.raises(CheckpointError, match="line 1 has an invalid signature"):
        log.read(signer.public_key)
    report, used = verify_live(store, log, signer)
    assert (report.ok, report.first_bad_seq, used) == (False, None, 0)
    assert report.reason == "checkpoint file line 1 has an invalid signature"
    other = CheckpointSigner.create(tmp_path / "other.pem")
    assert not log.read()[0].verify(other.public_key)


def test_truncated_tail_is_detected_against_the_checkpoint(
    store: AuditStore, signer: CheckpointSigner, log: CheckpointLog
) -> None:
    _writer(store, signer, log, every=4)
    for _ in range(9):
        store.append(event())
    # Cutting only past the last checkpoint (seq 8) is invisible to the chain alone; cutting into it is not.
    with store.engine.begin() as conn:
        conn.execute(sa.delete(AuditRecordRow).where(AuditRecordRow.seq >= 6))
    assert store.verify().ok  # the chain itself is still consistent
    report, _ = verify_live(store, log, signer)
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 6, "chain shorter than checkpoint")


def test_rewritten_history_is_caught_by_the_checkpoint(
    store: AuditStore, signer: CheckpointSigner, log: CheckpointLog
) -> None:
    """A forged row inserted with every later hash recomputed: only the signed checkpoint disagrees."""
    from custos.audit.chain import GENESIS_HASH, build_payload, compute_row_hash, derived_columns

    _writer(store, signer, log, every=5)
    originals = [store.append(event(actor=f"svc:{i}")) for i in range(5)]
    forged = event(actor="svc:forged")
    events = [originals[0], None, *originals[1:4]]  # insert after seq 1, drop the last to keep 5 rows
    with store.engine.begin() as conn:
        conn.execute(sa.delete(AuditRecordRow))
        prev = GENESIS_HASH
        for seq, source in enumerate(events, start=1):
            ev = forged if source is None else event(actor=source.actor)
            record_id = f"00000000-0000-4000-8000-{seq:012d}"
            payload = build_payload(ev, record_id=record_id, request_id=record_id, seq=seq)
            row_hash = compute_row_hash(prev, payload)
            conn.execute(
                sa.insert(AuditRecordRow),
                {
                    "seq": seq,
                    "id": record_id,
                    "prev_hash": prev,
                    "row_hash": row_hash,
                    "schema_version": 1,
                    "event_type": "generate",
                    "phase": "request",
                    "request_id": record_id,
                    "start_time": ev.start_time,
                    "end_time": ev.end_time,
                    "actor": ev.actor,
                    "rpc": ev.rpc,
                    "status": ev.status,
                    "model": ev.model,
                    "conversation_ref": ev.conversation_ref,
                    "subject_ref": ev.subject_ref,
                    "transcript_id": None,
                    "payload": payload,
                    **derived_columns(payload),
                },
            )
            prev = row_hash
    assert store.verify().ok  # a consistent rewrite fools the chain alone
    report, _ = verify_live(store, log, signer)
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 5, "checkpoint hash mismatch")


def _backup_sqlite(source: Path, target: Path) -> None:
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    dst.close()
    src.close()


def test_restore_of_an_older_backup_is_detected_and_a_recorded_restore_is_accepted(
    tmp_path: Path, signer: CheckpointSigner, log: CheckpointLog
) -> None:
    db = tmp_path / "custos.db"
    url = f"sqlite:///{db}"
    engine = make_engine(url)
    migrate(engine)
    store = AuditStore(engine)
    _writer(store, signer, log, every=2)
    for _ in range(4):
        store.append(event())
    _backup_sqlite(db, tmp_path / "backup.db")
    for _ in range(4):
        store.append(event())
    engine.dispose()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "backup.db", db)

    engine = make_engine(url)
    store = AuditStore(engine)
    report, _ = verify_live(store, log, signer)
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 5, "chain shorter than checkpoint")

    # The operator records the restore: a signed restore checkpoint supersedes the lost checkpoints.
    restore = record_restore(store, log, signer, note="ticket OPS-1")
    assert restore.event_type == "restore" and restore.seq == 5
    assert [c.kind for c in log.read()][-1] == "restore"
    _writer(store, signer, log, every=2)
    store.append(event())
    report, used = verify_live(store, log, signer)
    assert report.ok and report.count == 6, report
    assert used == len(effective_checkpoints(log.read())) >= 3
    engine.dispose()


def test_archiving_exports_with_a_closing_checkpoint_and_live_verification_continues(
    store: AuditStore, signer: CheckpointSigner, log: CheckpointLog, tmp_path: Path
) -> None:
    _writer(store, signer, log, every=3)
    for i in range(5):
        store.append(event(start_time=T0 + timedelta(days=i), end_time=T0 + timedelta(days=i)))
    for i in range(3):
        store.append(event(start_time=T0 + timedelta(days=100 + i), end_time=T0 + timedelta(days=100 + i)))
    result = archive(store, log, signer, before=T0 + timedelta(days=50), directory=tmp_path / "archive")
    assert (result.through_seq, result.removed) == (5, 5)
    assert result.path is not None and result.checkpoint is not None and result.checkpoint.kind == "archive"
    assert store.first_seq() == 6

    exported = verify_export(result.path.read_bytes().splitlines(), expected_public_key=signer.public_key_hex)
    assert exported.ok and exported.records == 5 and exported.checkpoints == 2, exported  # seq 3 and 5

    store.append(event())
    report, _ = verify_live(store, log, signer)
    assert report.ok and report.count == 4 and report.head_seq == 9, report

    # Without the archive checkpoint the missing prefix is a gap at seq 1.
    lines = [json.loads(x) for x in log.path.read_text().splitlines()]
    log.path.write_text("".join(json.dumps(x) + "\n" for x in lines if x["kind"] != "archive"))
    report, _ = verify_live(store, log, signer)
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 1, "gap")


def test_deleting_the_oldest_live_rows_after_an_archive_is_a_gap(
    store: AuditStore, signer: CheckpointSigner, log: CheckpointLog, tmp_path: Path
) -> None:
    for i in range(6):
        store.append(event(start_time=T0 + timedelta(days=10 * i), end_time=T0 + timedelta(days=10 * i)))
    archive(store, log, signer, before=T0 + timedelta(days=15), directory=tmp_path / "archive")
    with store.engine.begin() as conn:
        conn.execute(sa.delete(AuditRecordRow).where(AuditRecordRow.seq == 3))
    report, _ = verify_live(store, log, signer)
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 3, "gap")


def test_archiving_everything_keeps_the_newest_row_so_the_chain_continues(
    store: AuditStore, signer: CheckpointSigner, log: CheckpointLog, tmp_path: Path
) -> None:
    for _ in range(3):
        store.append(event())
    result = archive(store, log, signer, before=T0 + timedelta(days=1), directory=tmp_path / "archive")
    assert (result.through_seq, result.removed, store.first_seq()) == (2, 2, 3)
    assert store.append(event()).seq == 4
    report, _ = verify_live(store, log, signer)
    assert report.ok and report.count == 2, report


@pytest.mark.postgres
def test_only_the_replica_holding_the_checkpoint_lock_writes(
    pg_schema_url: str, signer: CheckpointSigner, log: CheckpointLog
) -> None:
    from custos.audit.checkpoints import CHECKPOINT_LOCK_KEY

    engine = make_engine(pg_schema_url)
    migrate(engine)
    store = AuditStore(engine)
    writer = CheckpointWriter(engine, signer, log, every_records=1000, every_seconds=3600)
    store.append(event())
    try:
        with engine.connect() as other:  # another replica holds the lock
            other.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": CHECKPOINT_LOCK_KEY})
            assert writer.maybe_write(force=True) is None
            other.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": CHECKPOINT_LOCK_KEY})
        written = writer.maybe_write(force=True)
        assert written is not None and [c.seq for c in log.read()] == [1]
    finally:
        engine.dispose()
