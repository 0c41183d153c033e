"""What live verification trusts: the signing key, the checkpoint file, a pinned public key."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from custos.audit import AuditStore
from custos.audit.checkpoints import (
    CheckpointError,
    CheckpointLog,
    CheckpointSigner,
    CheckpointWriter,
    load_public_key,
)
from custos.audit.maintenance import NO_CHECKPOINT, record_restore, verify_live
from custos.audit.trail import AuditTrail
from custos.testing.audit import event


def _open(store: AuditStore, tmp_path: Path, **kwargs: object) -> AuditTrail:
    return AuditTrail.open(store, tmp_path, every_records=1000, every_seconds=3600, **kwargs)  # type: ignore[arg-type]


def test_an_empty_checkpoint_file_does_not_verify_a_non_empty_chain(
    store: AuditStore, tmp_path: Path
) -> None:
    signer = CheckpointSigner.create(tmp_path / "signing.pem")
    log = CheckpointLog(tmp_path / "checkpoints.jsonl")
    assert verify_live(store, log, signer)[0].ok  # nothing to cover yet
    for _ in range(3):
        store.append(event())
    for content in (None, ""):  # missing, then empty
        if content is not None:
            log.path.write_text(content)
        report, used = verify_live(store, log, signer)
        assert (report.ok, report.first_bad_seq, used, report.count) == (False, None, 0, 3)
        assert report.reason.startswith(NO_CHECKPOINT), report.reason
    log.append(signer.sign("head", store.head()))
    assert verify_live(store, log, signer)[0].ok


def test_the_signing_key_is_made_once_atomically_for_an_empty_log(store: AuditStore, tmp_path: Path) -> None:
    trail = _open(store, tmp_path, create_key=True)
    path = tmp_path / "keys" / "audit-signing.pem"
    assert path.stat().st_mode & 0o777 == 0o600 and (path.parent.stat().st_mode & 0o777) == 0o700
    assert sorted(os.listdir(path.parent)) == ["audit-signing.pem"]  # no temporary file left behind
    assert _open(store, tmp_path, create_key=True).signer.public_key_hex == trail.signer.public_key_hex
    with pytest.raises(FileExistsError):
        CheckpointSigner.create(path)  # never replaces a key


def test_replicas_starting_together_share_one_key(store: AuditStore, tmp_path: Path) -> None:
    keys: list[str] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        keys.append(_open(store, tmp_path, create_key=True).signer.public_key_hex)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 4 and len(set(keys)) == 1


@pytest.mark.parametrize("evidence", ["records", "checkpoints"])
def test_a_missing_key_is_never_remade_over_an_existing_log(
    store: AuditStore, tmp_path: Path, evidence: str
) -> None:
    trail = _open(store, tmp_path, create_key=True)
    if evidence == "records":
        store.append(event())
    else:
        trail.log.append(trail.signer.sign("head", store.head()))
    key = tmp_path / "keys" / "audit-signing.pem"
    key.unlink()
    with pytest.raises(CheckpointError, match=f"audit signing key {key} is missing") as info:
        _open(store, tmp_path, create_key=True)
    assert "never re-created" in str(info.value)
    assert not key.exists()


def test_without_create_key_a_missing_key_is_an_error(store: AuditStore, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist yet"):
        _open(store, tmp_path)
    assert not (tmp_path / "keys").exists()


def test_a_replaced_key_is_refused_by_its_checkpoints_and_by_the_pinned_key(
    store: AuditStore, tmp_path: Path
) -> None:
    trail = _open(store, tmp_path, create_key=True)
    store.append(event())
    trail.writer.maybe_write(force=True)
    pinned = trail.signer.public_key
    key = tmp_path / "keys" / "audit-signing.pem"
    assert _open(store, tmp_path, public_key=pinned).public_key == pinned
    key.unlink()
    CheckpointSigner.create(key)  # someone puts their own key in the data directory
    with pytest.raises(CheckpointError, match=r"signed by key id .* the signing key was replaced"):
        _open(store, tmp_path)
    with pytest.raises(CheckpointError, match="is not the pinned public key"):
        _open(store, tmp_path, public_key=pinned)


def test_an_unanchored_writer_signs_nothing_until_an_operator_records_the_head(
    store: AuditStore, tmp_path: Path
) -> None:
    signer = CheckpointSigner.create(tmp_path / "signing.pem")
    log = CheckpointLog(tmp_path / "checkpoints.jsonl")
    store.append(event())  # records, and (lost or never written) no checkpoint
    writer = CheckpointWriter(store.engine, signer, log, every_records=1, every_seconds=3600)
    store.add_commit_listener(writer.note_appended)
    assert not writer.anchored
    store.append(event())
    assert writer.maybe_write(force=True) is None and log.read() == []
    record_restore(store, log, signer, note="ticket OPS-7")  # appends a record: signed again at once
    store.append(event())
    assert writer.anchored and [c.kind for c in log.read()] == ["restore", "head", "head"]
    assert log.read()[-1].seq == store.head().seq == 4
    assert verify_live(store, log, signer)[0].ok


def test_public_keys_load_from_hex_or_a_file(tmp_path: Path) -> None:
    signer = CheckpointSigner.create(tmp_path / "signing.pem")
    hex_file, pem_file, bad = tmp_path / "key.hex", tmp_path / "key.pub.pem", tmp_path / "bad"
    hex_file.write_text(signer.public_key_hex + "\n")
    pem_file.write_bytes(
        signer.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    bad.write_text("not a key\n")
    for source in (signer.public_key_hex, hex_file, str(hex_file), pem_file):
        assert load_public_key(source) == signer.public_key, source
    for source, problem in ((bad, "must hold the audit public key"), (tmp_path / "none", "cannot read")):
        with pytest.raises(CheckpointError, match=problem):
            load_public_key(source)
