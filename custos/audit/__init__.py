"""Tamper-evident audit trail: typed SQL records in a SHA-256 hash chain, plus sealed transcripts.

Build the engine once in app wiring (:func:`make_engine`, then :func:`migrate`), and pass an
:class:`AuditStore` / :class:`TranscriptStore` around; importing this package has no side effects.
"""

from custos.audit.canonical import canonical_json
from custos.audit.chain import GENESIS_HASH, SCHEMA_VERSION, ChainHead, VerifyReport
from custos.audit.db import default_sqlite_url, make_engine, migrate
from custos.audit.errors import (
    AuditError,
    AuditUnavailable,
    CanonicalizationError,
    ChainConflict,
    DuplicateId,
    InvalidQuery,
    RecordNotFound,
)
from custos.audit.events import AuditEvent, EventType, Phase, StoredRecord
from custos.audit.store import AuditStore, SealedTranscript, TranscriptStore

__all__ = [
    "GENESIS_HASH",
    "SCHEMA_VERSION",
    "AuditError",
    "AuditEvent",
    "AuditStore",
    "AuditUnavailable",
    "CanonicalizationError",
    "ChainConflict",
    "ChainHead",
    "DuplicateId",
    "EventType",
    "InvalidQuery",
    "Phase",
    "RecordNotFound",
    "SealedTranscript",
    "StoredRecord",
    "TranscriptStore",
    "VerifyReport",
    "canonical_json",
    "default_sqlite_url",
    "make_engine",
    "migrate",
]
