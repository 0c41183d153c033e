"""Ed25519-signed checkpoints of the chain head, kept outside the database.

A checkpoint records ``(seq, row_hash)`` of the head at some moment, signed with the audit signing key, in an
append-only JSON-lines file the operator can ship elsewhere. The chain alone cannot show that its tail was
cut off or that an older backup was restored; a checkpoint the database no longer agrees with can.

Kinds:
- ``head``: the head every N records or T seconds;
- ``restore``: written by an operator after a legitimate restore from backup; it supersedes earlier
  checkpoints beyond its seq (those records were lost on purpose) and names the restored head;
- ``archive``: the closing checkpoint of records moved out of the live log; the live log continues from it.

With several replicas on one PostgreSQL, only the replica holding the checkpoint advisory lock writes.

Trust in the data directory is limited on purpose. The signing key is made only for an empty log with no
checkpoints (atomically, mode 0600) and is otherwise only ever loaded: re-creating it would let whoever
deleted it re-sign a rewritten chain. A writer that finds a non-empty chain without any checkpoint signs
nothing until an operator vouches for the head (``custos audit record-restore``), and a public key can be
pinned outside the data directory (:func:`load_public_key`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, text

from custos.audit.canonical import canonical_json, format_timestamp
from custos.audit.chain import ChainHead
from custos.audit.db import DEFERRED_READ, translate_db_errors
from custos.audit.errors import AuditError

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_LOCK_KEY",
    "SIGNING_KEY_FILE",
    "Checkpoint",
    "CheckpointError",
    "CheckpointLog",
    "CheckpointSigner",
    "CheckpointWriter",
    "effective_checkpoints",
    "load_public_key",
    "public_key_from_hex",
]

log = logging.getLogger("custos.audit")

CHECKPOINT_FILE = "audit-checkpoints.jsonl"
SIGNING_KEY_FILE = "keys/audit-signing.pem"
CHECKPOINT_LOCK_KEY = 0x637573746F73636B  # "custosck": held by the replica that writes checkpoints
KINDS = ("head", "restore", "archive")


class CheckpointError(AuditError):
    """A checkpoint file or signature is malformed or does not verify; the message names the line."""


def public_key_from_hex(value: str) -> Ed25519PublicKey:
    """Load a raw 32-byte Ed25519 public key written as hex."""
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(value))
    except ValueError:
        raise CheckpointError("public key must be 64 hex characters of a raw Ed25519 key") from None


def load_public_key(value: str | Path) -> Ed25519PublicKey:
    """A pinned public key: 64 hex characters (as exports print it), or a file holding them or a PEM key.

    :class:`CheckpointError` names the file when it cannot be read or holds something else.
    """
    text = str(value).strip()
    if isinstance(value, str) and len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return public_key_from_hex(text)
    path = Path(value)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read the audit public key file {path} ({err.strerror})") from None
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            raise CheckpointError(f"{path} is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise CheckpointError(f"{path} holds a public key that is not Ed25519")
        return key
    try:
        return public_key_from_hex(data.decode("ascii").strip())
    except (UnicodeDecodeError, CheckpointError):
        raise CheckpointError(
            f"{path} must hold the audit public key as 64 hex characters or a PEM public key"
        ) from None


def public_key_hex(key: Ed25519PublicKey) -> str:
    """The raw public key as hex (the form exports and pinned key files use)."""
    return _public_hex(key)


def _public_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """One signed statement "the chain had record ``seq`` with hash ``row_hash`` at ``time``"."""

    kind: str
    seq: int
    row_hash: str
    time: str
    key_id: str
    signature: str
    note: str = ""

    def body(self) -> bytes:
        """The canonical bytes that are signed."""
        return canonical_json(
            {
                "kind": self.kind,
                "seq": self.seq,
                "row_hash": self.row_hash,
                "time": self.time,
                "key_id": self.key_id,
                "note": self.note,
            }
        )

    @property
    def head(self) -> ChainHead:
        """The head this checkpoint names."""
        return ChainHead(self.seq, self.row_hash)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (one line of the checkpoint file)."""
        return {
            "kind": self.kind,
            "seq": self.seq,
            "row_hash": self.row_hash,
            "time": self.time,
            "key_id": self.key_id,
            "note": self.note,
            "signature": self.signature,
        }

    @classmethod
    def from_json(cls, data: object) -> Checkpoint:
        """Parse the plain-JSON form; :class:`CheckpointError` when a field is missing or mistyped."""
        if not isinstance(data, dict):
            raise CheckpointError("checkpoint is not a JSON object")
        try:
            checkpoint = cls(
                kind=str(data["kind"]),
                seq=int(data["seq"]),
                row_hash=str(data["row_hash"]),
                time=str(data["time"]),
                key_id=str(data["key_id"]),
                signature=str(data["signature"]),
                note=str(data.get("note", "")),
            )
        except (KeyError, TypeError, ValueError):
            raise CheckpointError("checkpoint lacks a field or has a mistyped one") from None
        if checkpoint.kind not in KINDS:
            raise CheckpointError("checkpoint kind is unknown")
        return checkpoint

    def verify(self, public_key: Ed25519PublicKey) -> bool:
        """Whether the signature is valid for ``public_key``."""
        try:
            public_key.verify(bytes.fromhex(self.signature), self.body())
        except (InvalidSignature, ValueError):
            return False
        return True


class CheckpointSigner:
    """Signs checkpoints with an Ed25519 key held in a PEM file (mode 0600)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.public_key_hex = _public_hex(self.public_key)
        self.key_id = self.public_key_hex[:16]

    @classmethod
    def load(cls, path: Path) -> CheckpointSigner:
        """Load the key at ``path``; :class:`CheckpointError` names the file when it is missing or wrong."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"the audit signing key {path} does not exist") from None
        except OSError as err:
            raise CheckpointError(f"cannot read the audit signing key {path} ({err.strerror})") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise CheckpointError(f"the audit signing key {path} is not an unencrypted PEM key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise CheckpointError(f"the audit signing key {path} is not an Ed25519 key")
        return cls(key)

    @classmethod
    def create(cls, path: Path) -> CheckpointSigner:
        """Make a new key at ``path`` atomically (parent 0700, file 0600); FileExistsError if one is there.

        The PEM goes to a temporary file beside ``path`` (fsynced), which is then hard-linked to ``path``:
        linking never replaces a file, so two replicas starting together end up with one key between them.
        """
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, pem)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(temporary, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return cls(key)

    def sign_bytes(self, data: bytes) -> str:
        """Hex Ed25519 signature of ``data`` (the verified state of :mod:`custos.audit.incremental`)."""
        return self._key.sign(data).hex()

    def sign(self, kind: str, head: ChainHead, *, note: str = "", at: datetime | None = None) -> Checkpoint:
        """Return a signed checkpoint of ``head``."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of: {', '.join(KINDS)}")
        unsigned = Checkpoint(
            kind=kind,
            seq=head.seq,
            row_hash=head.row_hash,
            time=format_timestamp(at or datetime.now(UTC)),
            key_id=self.key_id,
            signature="",
            note=note,
        )
        signature = self._key.sign(unsigned.body()).hex()
        return Checkpoint(**{**unsigned.to_json(), "signature": signature})


class CheckpointLog:
    """The append-only checkpoint file: one JSON object per line, each write flushed to disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, checkpoint: Checkpoint) -> None:
        """Append one line and fsync it."""
        line = json.dumps(checkpoint.to_json(), sort_keys=True, separators=(",", ":")) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line.encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)

    def read(self, public_key: Ed25519PublicKey | None = None) -> list[Checkpoint]:
        """All checkpoints in file order; with ``public_key``, a bad signature raises naming the line."""
        if not self.path.exists():
            return []
        checkpoints: list[Checkpoint] = []
        for number, line in enumerate(self.path.read_text("ascii").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                checkpoint = Checkpoint.from_json(json.loads(line))
            except (ValueError, CheckpointError):
                raise CheckpointError(f"checkpoint file line {number} is malformed") from None
            if public_key is not None and not checkpoint.verify(public_key):
                raise CheckpointError(f"checkpoint file line {number} has an invalid signature")
            checkpoints.append(checkpoint)
        return checkpoints


def effective_checkpoints(checkpoints: Iterable[Checkpoint]) -> list[Checkpoint]:
    """The checkpoints the live chain must still agree with, in seq order.

    Processed in file order: a ``restore`` checkpoint drops earlier ones beyond its seq (those records were
    lost with the restore, on purpose), then counts itself. Checkpoints written since then apply normally.
    """
    kept: list[Checkpoint] = []
    for checkpoint in checkpoints:
        if checkpoint.kind == "restore":
            kept = [c for c in kept if c.seq <= checkpoint.seq]
        kept.append(checkpoint)
    return sorted(kept, key=lambda c: c.seq)


class CheckpointWriter:
    """Writes a signed ``head`` checkpoint every ``every_records`` records or ``every_seconds`` seconds.

    :meth:`maybe_write` is cheap when nothing is due; the server calls it after appends and from a timer.
    On PostgreSQL only the process holding :data:`CHECKPOINT_LOCK_KEY` (a try-lock, never waited for)
    writes, so replicas do not interleave checkpoints of the same head.

    A writer is *anchored* when the checkpoint file has a checkpoint or the chain was empty when it started.
    An unanchored one (records, but no checkpoint: the file was lost, emptied or never written) signs no
    ``head`` checkpoint, since that would vouch for whatever the database now holds; it looks at the file
    again before each write, so a ``restore`` checkpoint signed by an operator (or another replica's first
    checkpoint) anchors it.
    """

    def __init__(
        self,
        engine: Engine,
        signer: CheckpointSigner,
        log: CheckpointLog,
        *,
        every_records: int = 1000,
        every_seconds: float = 60.0,
        clock: Any = time.monotonic,
    ) -> None:
        if every_records < 1 or every_seconds <= 0:
            raise ValueError("every_records must be >= 1 and every_seconds > 0")
        self._engine = engine
        self._signer = signer
        self._log = log
        self._every_records = every_records
        self._every_seconds = every_seconds
        self._clock = clock
        self._lock = threading.Lock()
        existing = log.read()
        self._last_seq = existing[-1].seq if existing else 0
        self._last_time = clock()
        self._pending = 0
        self._anchored = bool(existing) or self._chain_is_empty()
        self._warned = False

    @property
    def anchored(self) -> bool:
        """Whether this writer may sign ``head`` checkpoints (see the class docstring)."""
        return self._anchored

    def _chain_is_empty(self) -> bool:
        from custos.audit.store import read_head

        with (
            translate_db_errors(),
            self._engine.connect().execution_options(**{DEFERRED_READ: True}) as conn,
            conn.begin(),
        ):
            return read_head(conn).seq == 0

    def _check_anchor(self) -> bool:
        if not self._anchored and self._log.read():
            self._anchored = True
        if not self._anchored and not self._warned:
            self._warned = True
            log.error(
                "not signing audit checkpoints: the audit log has records but the checkpoint file has "
                "no checkpoint; verify the log, then sign its head with custos audit record-restore",
                extra={"fields": {"checkpoint_file": str(self._log.path)}},
            )
        return self._anchored

    def note_appended(self, count: int) -> None:
        """Count freshly committed records; writes a checkpoint when ``every_records`` is reached."""
        with self._lock:
            self._pending += count
            due = self._pending >= self._every_records
        if due:
            self.maybe_write(force=True)

    def maybe_write(self, *, force: bool = False) -> Checkpoint | None:
        """Write a checkpoint if one is due (or ``force``) and the head moved; return it or ``None``."""
        with self._lock:
            if not force and self._clock() - self._last_time < self._every_seconds:
                return None
            return self._write_locked("head")

    def write(self, kind: str, *, note: str = "") -> Checkpoint | None:
        """Write a checkpoint of ``kind`` for the current head now (``restore`` and ``archive`` use this)."""
        with self._lock:
            return self._write_locked(kind, note=note, always=True)

    def _write_locked(self, kind: str, *, note: str = "", always: bool = False) -> Checkpoint | None:
        from custos.audit.store import read_head

        self._last_time = self._clock()
        if kind == "head" and not self._check_anchor():
            self._pending = 0
            return None
        # A read-only transaction: on SQLite a deferred BEGIN, so checkpoints never take the write lock.
        with (
            translate_db_errors(),
            self._engine.connect().execution_options(**{DEFERRED_READ: True}) as conn,
            conn.begin(),
        ):
            if conn.dialect.name == "postgresql":
                got = conn.execute(
                    text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": CHECKPOINT_LOCK_KEY}
                ).scalar_one()
                if not got:
                    return None
            head = read_head(conn)
            if head.seq == 0 or (head.seq == self._last_seq and not always):
                self._pending = 0
                return None
            checkpoint = self._signer.sign(kind, head, note=note)
            self._log.append(checkpoint)
        self._last_seq = head.seq
        self._pending = 0
        return checkpoint


def checkpoint_heads(checkpoints: Sequence[Checkpoint]) -> list[ChainHead]:
    """The heads of ``checkpoints`` (for :class:`~custos.audit.chain.ChainVerifier`)."""
    return [c.head for c in checkpoints]
