"""The audit trail of one data directory: the store plus its signing key, checkpoint file and writer.

Built once in app wiring (or by the CLI) with :meth:`AuditTrail.open`; verification and exports that need the
checkpoints go through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custos.audit.chain import VerifyReport
from custos.audit.checkpoints import (
    CHECKPOINT_FILE,
    SIGNING_KEY_FILE,
    CheckpointLog,
    CheckpointSigner,
    CheckpointWriter,
    effective_checkpoints,
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
    ) -> AuditTrail:
        """Load (or create) the signing key and checkpoint file in ``data_dir`` and hook the writer in."""
        signer = CheckpointSigner.load_or_create(signing_key or data_dir / SIGNING_KEY_FILE)
        log = CheckpointLog(checkpoint_file or data_dir / CHECKPOINT_FILE)
        writer = CheckpointWriter(
            store.engine, signer, log, every_records=every_records, every_seconds=every_seconds
        )
        store.add_commit_listener(writer.note_appended)
        return cls(store=store, signer=signer, log=log, writer=writer)

    def verify(self, *, progress: Callable[[int], None] | None = None) -> tuple[VerifyReport, int]:
        """Verify the live chain against the signed checkpoints; the report and the checkpoints used."""
        return verify_live(self.store, self.log, self.signer, progress=progress)

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
            self.store, self.log, self.signer, incremental=incremental, workers=workers, progress=progress
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
        checkpoints = effective_checkpoints(self.log.read(self.signer.public_key))
        return export_jsonl(
            self.store,
            checkpoints=checkpoints,
            public_key_hex=self.signer.public_key_hex,
            filters=filters,
            progress=progress,
        )
