"""Incremental verification: continue from the last signed checkpoint that a verification passed.

After a verification passes, the newest signed checkpoint it covered is recorded in a signed *verified
state* file beside the checkpoint file (``audit-verified.json``, outside the database like the checkpoints):
that checkpoint's seq and hash and the requests still open right after it. ``custos audit verify
--incremental`` then verifies only the records after that checkpoint, starting from its hash, so a daily
check costs the day's records, not the whole log. A full verification (the default, and what every export
proves) ignores the state and records a new one.

Incremental verification falls back to a full one, and says so, when the state is missing, when its
checkpoint is no longer an effective one (a restore superseded it), or when the record it names is no
longer in the database with that hash (archived, or changed). A state file with a bad signature fails the
verification: that evidence was tampered with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select

from custos.audit.canonical import canonical_json, format_timestamp
from custos.audit.chain import ChainHead, VerifyReport
from custos.audit.checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointLog,
    CheckpointSigner,
    effective_checkpoints,
)
from custos.audit.db import read_only
from custos.audit.maintenance import live_start, require_checkpoint
from custos.audit.models import AuditRecordRow
from custos.audit.store import AuditStore
from custos.audit.verify import verify_chain

__all__ = [
    "STATE_FILE",
    "STATE_FORMAT",
    "LiveVerification",
    "VerifiedState",
    "read_state",
    "verify_live_from_state",
    "write_state",
]

STATE_FILE = "audit-verified.json"
STATE_FORMAT = "custos-audit-verified/1"


class StateError(CheckpointError):
    """The verified-state file is malformed or its signature does not verify."""


@dataclass(frozen=True, kw_only=True)
class VerifiedState:
    """Signed: the chain verified through checkpoint ``seq``/``row_hash``, these requests open after it."""

    seq: int
    row_hash: str
    open_requests: tuple[str, ...]
    verified_at: str
    mode: str
    key_id: str
    signature: str = ""

    @property
    def head(self) -> ChainHead:
        """The checkpointed head verification continues from."""
        return ChainHead(self.seq, self.row_hash)

    def body(self) -> bytes:
        """The canonical bytes that are signed."""
        return canonical_json(
            {
                "format": STATE_FORMAT,
                "seq": self.seq,
                "row_hash": self.row_hash,
                "open_requests": list(self.open_requests),
                "verified_at": self.verified_at,
                "mode": self.mode,
                "key_id": self.key_id,
            }
        )

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object."""
        return {**json.loads(self.body()), "signature": self.signature}


def state_path(log: CheckpointLog) -> Path:
    """Where the verified state of the trail whose checkpoints are in ``log`` lives: beside them."""
    return log.path.with_name(STATE_FILE)


def write_state(
    path: Path, signer: CheckpointSigner, head: ChainHead, open_requests: frozenset[str], *, mode: str
) -> VerifiedState:
    """Sign and atomically replace the verified state (written to a temporary file, fsynced, renamed)."""
    unsigned = VerifiedState(
        seq=head.seq,
        row_hash=head.row_hash,
        open_requests=tuple(sorted(open_requests)),
        verified_at=format_timestamp(datetime.now(UTC)),
        mode=mode,
        key_id=signer.key_id,
    )
    state = replace(unsigned, signature=signer.sign_bytes(unsigned.body()))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        json.dump(state.to_json(), handle, sort_keys=True, separators=(",", ":"))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return state


def read_state(path: Path, public_key: Ed25519PublicKey) -> VerifiedState | None:
    """The verified state at ``path`` (``None`` when there is none); :class:`StateError` when not genuine."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text("ascii"))
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ValueError
        state = VerifiedState(
            seq=int(data["seq"]),
            row_hash=str(data["row_hash"]),
            open_requests=tuple(str(r) for r in data["open_requests"]),
            verified_at=str(data["verified_at"]),
            mode=str(data["mode"]),
            key_id=str(data["key_id"]),
            signature=str(data["signature"]),
        )
    except (ValueError, KeyError, TypeError):
        raise StateError("the verified-state file is malformed") from None
    try:
        public_key.verify(bytes.fromhex(state.signature), state.body())
    except (InvalidSignature, ValueError):
        raise StateError("the verified-state file has an invalid signature") from None
    return state


@dataclass(frozen=True)
class LiveVerification:
    """A verification of the live log: the report, the checkpoints used, and how it ran.

    ``mode`` is ``full`` or ``incremental``; ``resumed_from`` the checkpoint seq an incremental run started
    after; ``note`` why an incremental run was full instead (empty otherwise).
    """

    report: VerifyReport
    checkpoints: int
    mode: str
    resumed_from: int | None = None
    note: str = ""


def _failed(reason: str) -> LiveVerification:
    report = VerifyReport(ok=False, count=0, head_hash="", first_bad_seq=None, reason=reason, incomplete=0)
    return LiveVerification(report, 0, "full")


def _still_there(store: AuditStore, head: ChainHead) -> bool:
    with read_only(store.engine) as conn:
        found = conn.execute(
            select(AuditRecordRow.row_hash).where(AuditRecordRow.seq == head.seq)
        ).scalar_one_or_none()
    return found == head.row_hash


def verify_live_from_state(
    store: AuditStore,
    log: CheckpointLog,
    key: CheckpointSigner | Ed25519PublicKey,
    *,
    incremental: bool,
    signer: CheckpointSigner | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> LiveVerification:
    """Verify the live log, fully or from the verified state; record a new state when it passes.

    ``key`` (the signer or a pinned public key) is what the checkpoints and the state must verify with;
    the new state is signed by ``signer`` (by ``key`` when it is the signer), and not written without one.
    As in :func:`~custos.audit.maintenance.verify_live`, records checked against no checkpoint fail.
    """
    public_key = key.public_key if isinstance(key, CheckpointSigner) else key
    signer = signer if signer is not None else key if isinstance(key, CheckpointSigner) else None
    try:
        checkpoints: list[Checkpoint] = effective_checkpoints(log.read(public_key))
        state = read_state(state_path(log), public_key) if incremental else None
    except CheckpointError as exc:
        return _failed(str(exc))
    heads = [c.head for c in checkpoints]
    note = ""
    if incremental and state is None:
        note = "no verified state yet"
    elif state is not None and state.head not in heads:
        note, state = "the verified checkpoint is no longer in effect (a restore superseded it)", None
    elif state is not None and not _still_there(store, state.head):
        note, state = "the verified record is no longer in the live log with its hash", None
    cut = max((c.seq for c in checkpoints), default=None)
    if state is not None:
        result = verify_chain(
            store.engine,
            checkpoints=heads,
            start=state.head,
            resume=True,
            open_requests=frozenset(state.open_requests),
            cut=cut,
            workers=workers,
            progress=progress,
        )
        mode = "incremental"
    else:
        start = live_start(checkpoints, store.first_seq())
        result = verify_chain(
            store.engine, checkpoints=heads, start=start, cut=cut, workers=workers, progress=progress
        )
        mode = "full"
    report = require_checkpoint(result.report, len(checkpoints))
    if report.ok and signer is not None and cut is not None and result.open_at_cut is not None:
        cut_head = next(c.head for c in reversed(checkpoints) if c.seq == cut)
        if state is None or cut_head.seq > state.seq:
            write_state(state_path(log), signer, cut_head, result.open_at_cut, mode=mode)
    return LiveVerification(
        report,
        len(checkpoints),
        mode,
        resumed_from=state.seq if state is not None else None,
        note=note,
    )
