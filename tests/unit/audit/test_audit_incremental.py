"""Incremental verification from the signed verified state: what it checks, skips, and falls back on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from custos.audit import AuditStore
from custos.audit.checkpoints import CheckpointLog, CheckpointSigner, CheckpointWriter
from custos.audit.incremental import STATE_FILE, read_state, verify_live_from_state
from custos.audit.maintenance import record_restore
from custos.audit.models import AuditRecordRow
from custos.testing.audit import completion, event


@pytest.fixture
def signer(tmp_path: Path) -> CheckpointSigner:
    return CheckpointSigner.create(tmp_path / "keys" / "audit-signing.pem")


@pytest.fixture
def log(tmp_path: Path, store: AuditStore, signer: CheckpointSigner) -> CheckpointLog:
    log = CheckpointLog(tmp_path / "audit-checkpoints.jsonl")
    writer = CheckpointWriter(store.engine, signer, log, every_records=4, every_seconds=3600)
    store.add_commit_listener(writer.note_appended)
    return log


def _flip_status(store: AuditStore, seq: int) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.update(AuditRecordRow).where(AuditRecordRow.seq == seq).values(status="INTERNAL"))


def test_incremental_verifies_only_what_follows_the_verified_checkpoint(
    store: AuditStore, log: CheckpointLog, signer: CheckpointSigner, tmp_path: Path
) -> None:
    opened = store.append(event())  # seq 1, completed only at seq 6: open across the cut
    for _ in range(4):
        store.append(event(phase="event"))
    full = verify_live_from_state(store, log, signer, incremental=False)
    assert (full.report.ok, full.report.count, full.mode) == (True, 5, "full")
    state = read_state(tmp_path / STATE_FILE, signer.public_key)
    assert state is not None and (state.seq, state.open_requests) == (4, (opened.id,))

    store.append(completion(opened))  # seq 6
    for _ in range(3):
        store.append(event(phase="event"))  # seq 7..9; checkpoint at 8
    live = verify_live_from_state(store, log, signer, incremental=True)
    assert (live.mode, live.resumed_from, live.note) == ("incremental", 4, "")
    assert (live.report.ok, live.report.count, live.report.head_seq, live.report.incomplete) == (
        True,
        5,
        9,
        0,
    )
    assert read_state(tmp_path / STATE_FILE, signer.public_key).seq == 8  # type: ignore[union-attr]

    # Tampering after the verified checkpoint is found; before it, only a full verification finds it.
    _flip_status(store, 9)
    assert verify_live_from_state(store, log, signer, incremental=True).report.first_bad_seq == 9
    _flip_status(store, 2)
    assert verify_live_from_state(store, log, signer, incremental=True).report.first_bad_seq == 9
    full = verify_live_from_state(store, log, signer, incremental=False)
    assert (full.report.ok, full.report.first_bad_seq) == (False, 2)


def test_a_forged_state_fails_verification(
    store: AuditStore, log: CheckpointLog, signer: CheckpointSigner, tmp_path: Path
) -> None:
    for _ in range(5):
        store.append(event(phase="event"))
    assert verify_live_from_state(store, log, signer, incremental=False).report.ok
    path = tmp_path / STATE_FILE
    data = json.loads(path.read_text())
    data["seq"] = 5
    path.write_text(json.dumps(data))
    live = verify_live_from_state(store, log, signer, incremental=True)
    assert (live.report.ok, live.report.reason) == (False, "the verified-state file has an invalid signature")


def test_without_a_usable_state_incremental_runs_in_full_and_says_why(
    store: AuditStore, log: CheckpointLog, signer: CheckpointSigner
) -> None:
    for _ in range(5):
        store.append(event(phase="event"))
    first = verify_live_from_state(store, log, signer, incremental=True)
    assert (first.mode, first.note, first.report.count) == ("full", "no verified state yet", 5)
    with store.engine.begin() as conn:  # an older backup restored, and the restore recorded
        conn.execute(sa.delete(AuditRecordRow).where(AuditRecordRow.seq > 2))
    record_restore(store, log, signer, note="ticket OPS-2")
    live = verify_live_from_state(store, log, signer, incremental=True)
    assert live.mode == "full" and "no longer in effect" in live.note
    assert (live.report.ok, live.report.count) == (True, 3)
