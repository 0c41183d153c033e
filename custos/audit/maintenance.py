"""Operations on the live log that involve the signed checkpoints: verify, restore, archive.

- :func:`verify_live` checks the database chain against every effective checkpoint, starting after the
  closing checkpoint of the last archive, so truncation, rollback and rewritten history are caught; a
  non-empty chain that no checkpoint covers fails (an emptied checkpoint file must not pass as "intact").
- :func:`record_restore` marks a legitimate restore from backup: a signed ``restore`` checkpoint of the
  restored head (superseding checkpoints beyond it) and a ``restore`` record in the chain.
- :func:`archive` moves records older than a cut-off into a verifiable export file with a closing signed
  ``archive`` checkpoint, then removes them from the database; the live log verifies on from that checkpoint.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select

from custos.audit.chain import ChainHead, VerifyReport
from custos.audit.checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointLog,
    CheckpointSigner,
    effective_checkpoints,
)
from custos.audit.db import translate_db_errors
from custos.audit.events import AuditEvent, StoredRecord
from custos.audit.export import export_jsonl
from custos.audit.models import AuditRecordRow
from custos.audit.store import AuditStore

__all__ = [
    "NO_CHECKPOINT",
    "ArchiveResult",
    "archive",
    "live_start",
    "record_restore",
    "require_checkpoint",
    "verify_live",
]

NO_CHECKPOINT = "no signed checkpoint covers the chain"
"""Start of the reason when a non-empty chain has no checkpoint to be checked against."""


def require_checkpoint(report: VerifyReport, checkpoints: int) -> VerifyReport:
    """``report``, failed when it checked records against no signed checkpoint at all.

    A chain alone proves only that it is consistent with itself: a rewritten or truncated log whose
    checkpoint file was emptied or removed verifies just as well. ``first_bad_seq`` stays ``None``: no
    record is known to be bad, the evidence is missing.
    """
    if not report.ok or report.count == 0 or checkpoints > 0:
        return report
    return dataclasses.replace(
        report,
        ok=False,
        reason=f"{NO_CHECKPOINT} ({report.count} records, 0 checkpoints): the checkpoint file is empty, "
        "missing or not the one the server writes",
    )


def live_start(checkpoints: list[Checkpoint], first_seq: int | None) -> ChainHead | None:
    """Where the live log must begin: after the last archive checkpoint before its first row, else genesis.

    Rows missing between that checkpoint and the first live row are then reported as a gap right after it.
    """
    archives = [c for c in checkpoints if c.kind == "archive" and (first_seq is None or c.seq < first_seq)]
    return max(archives, key=lambda c: c.seq).head if archives else None


def verify_live(
    store: AuditStore,
    log: CheckpointLog,
    key: CheckpointSigner | Ed25519PublicKey,
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[VerifyReport, int]:
    """Verify the database chain against the signed checkpoints; return the report and checkpoints used.

    ``key`` is the signer or a pinned public key. A checkpoint file that is malformed or carries a bad
    signature fails verification (``first_bad_seq`` ``None``, the reason naming the line): the evidence
    itself was tampered with. So does a non-empty chain with no checkpoint (:func:`require_checkpoint`).
    """
    public_key = key.public_key if isinstance(key, CheckpointSigner) else key
    try:
        checkpoints = effective_checkpoints(log.read(public_key))
    except CheckpointError as exc:
        return VerifyReport(
            ok=False, count=0, head_hash="", first_bad_seq=None, reason=str(exc), incomplete=0
        ), 0
    start = live_start(checkpoints, store.first_seq())
    report = store.verify(checkpoints=[c.head for c in checkpoints], start=start, progress=progress)
    return require_checkpoint(report, len(checkpoints)), len(checkpoints)


def record_restore(
    store: AuditStore, log: CheckpointLog, signer: CheckpointSigner, *, note: str
) -> StoredRecord:
    """Record a legitimate restore: sign a ``restore`` checkpoint of the restored head, then a chain record.

    ``note`` says why (a ticket number, never personal data).
    """
    head = store.head()
    checkpoint = signer.sign("restore", head, note=note)
    log.append(checkpoint)
    now = datetime.now(UTC)
    actor = f"os:{getpass.getuser()}"
    return store.append(
        AuditEvent(
            event_type="restore",
            phase="event",
            start_time=now,
            end_time=now,
            actor=actor,
            rpc="cli.restore",
            status="OK",
            details={
                "restored_head": {"seq": head.seq, "row_hash": head.row_hash},
                "note": note,
                "actor": {"principal": actor, "peer": "local"},
            },
        )
    )


@dataclass(frozen=True)
class ArchiveResult:
    """What :func:`archive` did."""

    path: Path | None
    through_seq: int
    removed: int
    checkpoint: Checkpoint | None


def archive(
    store: AuditStore,
    log: CheckpointLog,
    signer: CheckpointSigner,
    *,
    before: datetime,
    directory: Path,
    progress: Callable[[int], None] | None = None,
) -> ArchiveResult:
    """Archive the longest prefix of the live log whose records all started before ``before``.

    The newest record is never archived (the chain continues from it), so an archive can end one short.

    Writes ``directory/audit-archive-<first>-<last>.jsonl`` (fsynced, with the closing checkpoint), appends
    the ``archive`` checkpoint to the checkpoint file, then removes the rows. Nothing is removed unless the
    file and the checkpoint are durable.
    """
    with translate_db_errors(), store._read() as conn:
        first_young = conn.execute(
            select(func.min(AuditRecordRow.seq)).where(AuditRecordRow.start_time >= before)
        ).scalar_one()
        first = conn.execute(select(func.min(AuditRecordRow.seq))).scalar_one()
        last_seq = conn.execute(select(func.max(AuditRecordRow.seq))).scalar_one()
    if first is None:
        return ArchiveResult(None, 0, 0, None)
    # The newest row always stays: the next append links to it, so the chain never restarts at seq 1.
    through = min(int(first_young) - 1 if first_young is not None else int(last_seq), int(last_seq) - 1)
    if through < first:
        return ArchiveResult(None, through, 0, None)
    with translate_db_errors(), store._read() as conn:
        row_hash = conn.execute(
            select(AuditRecordRow.row_hash).where(AuditRecordRow.seq == through)
        ).scalar_one()
    closing = signer.sign("archive", ChainHead(through, row_hash), note=f"records {first}..{through}")
    checkpoints = [*effective_checkpoints(log.read(signer.public_key)), closing]
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"audit-archive-{first:012d}-{through:012d}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        for line in export_jsonl(
            store,
            checkpoints=checkpoints,
            public_key_hex=signer.public_key_hex,
            through_seq=through,
            progress=progress,
        ):
            handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
    log.append(closing)
    removed = store.delete_through(through, expected_hash=row_hash)
    return ArchiveResult(path, through, removed, closing)
