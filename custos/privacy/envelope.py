"""Versioned envelope encryption for transcripts and vault rows.

Layout (all integers big-endian)::

    magic  "CSTE"          4
    format version         1   1 or 2
    wrap kind              1   1 = data key wrapped by a master key (format 1)
                               2 = data key wrapped by a subject key (format 2)
    key version            4   uint32: format 1 the master key version, format 2 the subject key version
    wrapped key length     2   uint16
    wrapped key            n   RFC 5649 (AES key wrap with padding) of the 256-bit data key
    nonce                 12   random, for AES-256-GCM
    ciphertext + tag     m+16

Everything before the nonce is the header. GCM's associated data is ``header || aad``: the header is
self-delimiting, so the concatenation is unambiguous, and neither the header (key version, wrap kind) nor the
row binding can be changed without failing authentication.

Format 1 (``seal``/``open_sealed``) wraps the data key directly with a master key; the caller supplies
``aad``. Format 2 (``seal_for_subject``/``open_for_subject``) wraps it with the subject's key, which is itself
wrapped by a versioned master key in the ``subject_keys`` table (so rotating master keys never rewrites
rows, and deleting the subject key crypto-shreds every row of that subject); its associated data is built
here from a :class:`RowBinding` (table, record id, subject reference) plus the key and format versions.
The fixed fields are the same in both formats, so ``read_header`` reads every generation of rows.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from custos.privacy.errors import DecryptionFailed
from custos.privacy.keys import KEY_BYTES, MasterKeyProvider, software_unwrap, software_wrap

MAGIC = b"CSTE"
FORMAT_VERSION = 1
FORMAT_SUBJECT = 2
#: Wrap kinds: how the data key in the header is protected.
WRAP_MASTER = 1
WRAP_SUBJECT = 2
#: Each format version has exactly one wrap kind.
_WRAP_KIND_OF_FORMAT = {FORMAT_VERSION: WRAP_MASTER, FORMAT_SUBJECT: WRAP_SUBJECT}
SUPPORTED_WRAP_KINDS = frozenset(_WRAP_KIND_OF_FORMAT.values())

NONCE_BYTES = 12
TAG_BYTES = 16
_FIXED = struct.Struct(">4sBBIH")  # magic, format, wrap kind, key version, wrapped-key length


@dataclass(frozen=True)
class EnvelopeHeader:
    """The unauthenticated-until-opened facts of an envelope: enough to pick the key, nothing secret."""

    format_version: int
    wrap_kind: int
    key_version: int


@dataclass(frozen=True)
class _Parsed:
    header: EnvelopeHeader
    header_bytes: bytes
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes


def _parse(blob: bytes) -> _Parsed:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise DecryptionFailed("envelope must be bytes")
    blob = bytes(blob)
    if len(blob) < _FIXED.size:
        raise DecryptionFailed("envelope too short")
    magic, format_version, wrap_kind, key_version, wrapped_length = _FIXED.unpack_from(blob)
    if magic != MAGIC:
        raise DecryptionFailed("not a Custos envelope (bad magic)")
    if format_version not in _WRAP_KIND_OF_FORMAT:
        raise DecryptionFailed(f"unsupported envelope format version {format_version}")
    if wrap_kind != _WRAP_KIND_OF_FORMAT[format_version]:
        raise DecryptionFailed(f"unsupported envelope wrap kind {wrap_kind} for format {format_version}")
    header_end = _FIXED.size + wrapped_length
    if len(blob) < header_end + NONCE_BYTES + TAG_BYTES:
        raise DecryptionFailed("envelope truncated")
    return _Parsed(
        header=EnvelopeHeader(format_version=format_version, wrap_kind=wrap_kind, key_version=key_version),
        header_bytes=blob[:header_end],
        wrapped_key=blob[_FIXED.size : header_end],
        nonce=blob[header_end : header_end + NONCE_BYTES],
        ciphertext=blob[header_end + NONCE_BYTES :],
    )


def read_header(blob: bytes) -> EnvelopeHeader:
    """Return the header of a sealed blob without decrypting (e.g. to find rows still on an old key version).

    The header is only authenticated by ``open_sealed``; raises DecryptionFailed if the blob is malformed.
    """
    return _parse(blob).header


def seal(plaintext: bytes, *, aad: bytes, keys: MasterKeyProvider) -> bytes:
    """Encrypt under a fresh data key, wrapped with the current master key; ``aad`` binds it to its row."""
    version = keys.current_version
    data_key = AESGCM.generate_key(bit_length=256)
    wrapped = keys.wrap(version, data_key)
    header = _FIXED.pack(MAGIC, FORMAT_VERSION, WRAP_MASTER, version, len(wrapped)) + wrapped
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, bytes(plaintext), header + bytes(aad))
    return header + nonce + ciphertext


def open_sealed(blob: bytes, *, aad: bytes, keys: MasterKeyProvider) -> bytes:
    """Decrypt a blob from ``seal``.

    Raises DecryptionFailed on any tampering or a wrong ``aad``, KeyNotFound on an unknown key version.
    """
    parsed = _parse(blob)
    if parsed.header.wrap_kind != WRAP_MASTER or parsed.header.format_version != FORMAT_VERSION:
        raise DecryptionFailed(
            f"envelope format {parsed.header.format_version} (wrap kind {parsed.header.wrap_kind}) is not "
            f"a master-key envelope; open it with open_for_subject"
        )
    # Raises KeyNotFound (or KeyRetired) for a version the provider does not hold or no longer accepts.
    data_key = keys.unwrap(parsed.header.key_version, parsed.wrapped_key)
    return _decrypt(parsed, data_key, parsed.header_bytes + bytes(aad))


def _decrypt(parsed: _Parsed, data_key: bytes, associated: bytes) -> bytes:
    if len(data_key) != KEY_BYTES:
        raise DecryptionFailed("envelope data key has the wrong length")
    try:
        return AESGCM(data_key).decrypt(parsed.nonce, parsed.ciphertext, associated)
    except InvalidTag:
        raise DecryptionFailed(
            "envelope failed authentication (tampered, or opened for another row)"
        ) from None


@dataclass(frozen=True)
class SubjectKey:
    """One subject's unwrapped 256-bit key and its version; never logged (``key`` is not in the repr)."""

    subject_ref: str
    version: int
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class RowBinding:
    """The row a format-2 ciphertext belongs to: it cannot be opened as any other row's."""

    table: str
    record_id: str
    subject_ref: str


def _row_aad(header_bytes: bytes, binding: RowBinding, key_version: int) -> bytes:
    return header_bytes + bind_aad(
        "custos/row/v2",
        binding.table,
        binding.record_id,
        binding.subject_ref,
        str(key_version),
        str(FORMAT_SUBJECT),
    )


def seal_for_subject(plaintext: bytes, *, binding: RowBinding, subject_key: SubjectKey) -> bytes:
    """Encrypt under a fresh data key wrapped (RFC 5649) by the subject's key; bound to ``binding``."""
    if subject_key.subject_ref != binding.subject_ref:
        raise ValueError("the subject key belongs to another subject than the row")
    data_key = AESGCM.generate_key(bit_length=256)
    wrapped = software_wrap(subject_key.key, data_key)
    header = _FIXED.pack(MAGIC, FORMAT_SUBJECT, WRAP_SUBJECT, subject_key.version, len(wrapped)) + wrapped
    nonce = os.urandom(NONCE_BYTES)
    associated = _row_aad(header, binding, subject_key.version)
    return header + nonce + AESGCM(data_key).encrypt(nonce, bytes(plaintext), associated)


def open_for_subject(blob: bytes, *, binding: RowBinding, subject_key: SubjectKey) -> bytes:
    """Decrypt a blob from ``seal_for_subject``; DecryptionFailed on tampering or another row's binding."""
    parsed = _parse(blob)
    if parsed.header.wrap_kind != WRAP_SUBJECT or parsed.header.format_version != FORMAT_SUBJECT:
        raise DecryptionFailed(
            f"envelope format {parsed.header.format_version} (wrap kind {parsed.header.wrap_kind}) is not "
            f"a subject-key envelope"
        )
    if subject_key.subject_ref != binding.subject_ref:
        raise DecryptionFailed("the subject key belongs to another subject than the row")
    if parsed.header.key_version != subject_key.version:
        raise DecryptionFailed(
            f"envelope names subject key version {parsed.header.key_version}, "
            f"the subject's key is version {subject_key.version}"
        )
    data_key = software_unwrap(
        subject_key.key, parsed.wrapped_key, f"subject key version {subject_key.version}"
    )
    return _decrypt(parsed, data_key, _row_aad(parsed.header_bytes, binding, subject_key.version))


def bind_aad(*parts: str | bytes) -> bytes:
    """Encode row fields (table, row id, column, ...) as associated data; length prefixes keep parts apart."""
    out = bytearray(b"custos/aad/v1")
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else bytes(part)
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)
