"""Sealing and opening transcripts in either envelope format.

New transcripts are sealed for their subject (format 2): the data key is wrapped by the subject's key and the
ciphertext is bound to (table, transcript id, subject reference). Transcripts written in format 1 (data key
wrapped directly by a master key, bound to id and conversation) stay readable.
"""

from __future__ import annotations

from custos.privacy.envelope import (
    FORMAT_SUBJECT,
    FORMAT_VERSION,
    RowBinding,
    SubjectKey,
    open_for_subject,
    open_sealed,
    read_header,
    seal_for_subject,
)
from custos.privacy.errors import DecryptionFailed
from custos.privacy.keys import MasterKeyProvider
from custos.privacy.subject_keys import SubjectKeyStore

TRANSCRIPT_TABLE = "transcripts"
#: Version of the transcript document inside the envelope (messages, anonymized messages, answers).
TRANSCRIPT_FORMAT = 1


def transcript_aad(transcript_id: str, conversation_ref: str) -> bytes:
    """Associated data of a format-1 transcript (kept to read rows written before subject keys)."""
    return f"custos:{TRANSCRIPT_TABLE}:v{TRANSCRIPT_FORMAT}:{transcript_id}:{conversation_ref}".encode()


def transcript_binding(transcript_id: str, subject_ref: str) -> RowBinding:
    """The row binding of a format-2 transcript."""
    return RowBinding(table=TRANSCRIPT_TABLE, record_id=transcript_id, subject_ref=subject_ref)


def seal_transcript(plaintext: bytes, *, transcript_id: str, subject_key: SubjectKey) -> bytes:
    """Seal a transcript document for its subject."""
    return seal_for_subject(
        plaintext, binding=transcript_binding(transcript_id, subject_key.subject_ref), subject_key=subject_key
    )


def open_transcript(
    ciphertext: bytes,
    *,
    transcript_id: str,
    conversation_ref: str | None,
    subject_ref: str | None,
    keys: MasterKeyProvider,
    subject_keys: SubjectKeyStore,
) -> bytes:
    """Open a stored transcript of either format.

    Raises SubjectKeyMissing for an erased subject, KeyNotFound/KeyRetired for an unknown or retired master
    version, DecryptionFailed for anything tampered or moved between rows.
    """
    header = read_header(ciphertext)
    if header.format_version == FORMAT_VERSION:
        return open_sealed(ciphertext, aad=transcript_aad(transcript_id, conversation_ref or ""), keys=keys)
    if header.format_version == FORMAT_SUBJECT:
        if not subject_ref:
            raise DecryptionFailed("a subject-key transcript row has no subject reference")
        subject_key = subject_keys.get(subject_ref)
        return open_for_subject(
            ciphertext, binding=transcript_binding(transcript_id, subject_ref), subject_key=subject_key
        )
    raise DecryptionFailed(f"unsupported envelope format version {header.format_version}")
