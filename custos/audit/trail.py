"""The audit trail of one data directory: the store plus its signing key, checkpoint file and writer.

Built once in app wiring (or by the CLI) with :meth:`AuditTrail.open`; verification and exports that need the
checkpoints go through it.

Opening checks the data directory instead of trusting it: a missing signing key is made only for an empty
log with no checkpoints (``create_key``), never over an existing one; a pinned public key must match the
key found; and every checkpoint in the file must carry that key's id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custos.audit.chain import VerifyReport
from custos.audit.checkpoints import (
    CHECKPOINT_FILE,
    SIGNING_KEY_FILE,
    CheckpointError,
    CheckpointLog,
    CheckpointSigner,
    CheckpointWriter,
    effective_checkpoints,
    public_key_hex,
)
from custos.audit.export import FORMATS, export_csv, export_jsonl
from custos.audit.incremental import LiveVerification, verify_live_from_state
from custos.audit.maintenance import verify_live
from custos.audit.store import AuditStore

__all__ = ["AuditTrail"]


@dataclass(frozen=True)
class AuditTrail:
    """An :class:`AuditStore` with signed checkpoints written every N records or T seconds."""

    store: AuditStore
    signer: CheckpointSigner
    log: CheckpointLog
    writer: CheckpointWriter
    #: The pinned public key checkpoints are verified with (else the signer's own).
    public_key: Ed25519PublicKey

    @classmethod
    def open(
        cls,
        store: AuditStore,
        data_dir: Path,
        *,
        every_records: int = 1000,
        every_seconds: float = 60.0,
        signing_key: Path | None = None,
        checkpoint_file: Path | None = None,
        public_key: Ed25519PublicKey | None = None,
        create_key: bool = False,
    ) -> AuditTrail:
        """Load the signing key and checkpoint file (default: in ``data_dir``) and hook the writer in.

        With ``create_key`` (the server's start) a missing key is made when the log is empty and the
        checkpoint file has no checkpoint; otherwise a missing key is a :class:`CheckpointError` naming the
        file. ``public_key`` pins the key: a signing key that differs from it is refused.
        """
        key_path = signing_key or data_dir / SIGNING_KEY_FILE
        log = CheckpointLog(checkpoint_file or data_dir / CHECKPOINT_FILE)
        existing = log.read()
        signer = _load_signer(store, key_path, log, existing_checkpoints=len(existing), create=create_key)
        if public_key is not None and public_key_hex(public_key) != signer.public_key_hex:
            raise CheckpointError(
                f"the audit signing key {key_path} (key id {signer.key_id}) is not the pinned public key "
                f"(key id {public_key_hex(public_key)[:16]}): the key in the data directory was replaced, or "
                "audit_public_key_file names another installation's key"
            )
        for number, checkpoint in enumerate(existing, start=1):
            if checkpoint.key_id != signer.key_id:
                raise CheckpointError(
                    f"checkpoint {number} in {log.path} was signed by key id {checkpoint.key_id}, not by the "
                    f"audit signing key {key_path} (key id {signer.key_id}): the signing key was replaced"
                )
        writer = CheckpointWriter(
            store.engine, signer, log, every_records=every_records, every_seconds=every_seconds
        )
        store.add_commit_listener(writer.note_appended)
        return cls(
            store=store, signer=signer, log=log, writer=writer, public_key=public_key or signer.public_key
        )

    def verify(self, *, progress: Callable[[int], None] | None = None) -> tuple[VerifyReport, int]:
        """Verify the live chain against the signed checkpoints; the report and the checkpoints used."""
        return verify_live(self.store, self.log, self.public_key, progress=progress)

    def verify_recorded(
        self,
        *,
        incremental: bool = False,
        progress: Callable[[int], None] | None = None,
        workers: int | None = None,
    ) -> LiveVerification:
        """Verify fully, or from the verified state (``incremental``), and record the new verified state.

        See :mod:`custos.audit.incremental`; the operator's ``custos audit verify`` uses this.
        """
        return verify_live_from_state(
            self.store,
            self.log,
            self.public_key,
            signer=self.signer,
            incremental=incremental,
            workers=workers,
            progress=progress,
        )

    def export(
        self,
        fmt: str,
        filters: dict[str, Any],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[bytes]:
        """Lines of an export in ``fmt`` (``jsonl`` verifiable, ``csv`` for reading) of matching records.

        A JSONL export first writes a fresh checkpoint of the head, so it always ends in a signed one.
        """
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of: {', '.join(FORMATS)}")
        if fmt == "csv":
            return export_csv(self.store.scan(**filters))
        self.writer.maybe_write(force=True)
        checkpoints = effective_checkpoints(self.log.read(self.public_key))
        return export_jsonl(
            self.store,
            checkpoints=checkpoints,
            public_key_hex=self.signer.public_key_hex,
            filters=filters,
            progress=progress,
        )


def _load_signer(
    store: AuditStore, path: Path, log: CheckpointLog, *, existing_checkpoints: int, create: bool
) -> CheckpointSigner:
    """The signing key at ``path``; made only for an empty log without checkpoints when ``create``."""
    if path.exists():
        return CheckpointSigner.load(path)
    records = store.count() if store.head().seq else 0
    if create and records == 0 and existing_checkpoints == 0:
        try:
            return CheckpointSigner.create(path)
        except FileExistsError:  # another replica made it between the check and the link: use theirs
            return CheckpointSigner.load(path)
    if records == 0 and existing_checkpoints == 0:
        raise CheckpointError(
            f"the audit signing key {path} does not exist yet: the server makes it on its first start"
        )
    held = f"the audit log holds {records} record(s)" if records else "the audit log is empty"
    raise CheckpointError(
        f"the audit signing key {path} is missing, but {held} and {log.path} holds "
        f"{existing_checkpoints} checkpoint(s); it is never re-created over an existing log (that would let "
        "anyone re-sign a rewritten chain): restore it from your backup, or set audit_signing_key_file to "
        "where it is. If it is lost for good, move the checkpoint file aside and sign the current head with "
        "a new key: custos audit record-restore --new-signing-key --note ..."
    )
