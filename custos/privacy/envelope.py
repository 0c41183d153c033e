"""Versioned envelope encryption for transcripts and vault rows.

Layout (all integers big-endian)::

    magic  "CSTE"          4
    format version = 1     1
    wrap kind              1   1 = data key wrapped by a master key
    key version            4   uint32, the master key version
    wrapped key length     2   uint16
    wrapped key            n   RFC 5649 (AES key wrap with padding) of the 256-bit data key
    nonce                 12   random, for AES-256-GCM
    ciphertext + tag     m+16

Everything before the nonce is the header. GCM's associated data is ``header || aad``: the header is
self-delimiting, so the concatenation is unambiguous, and neither the header (key version, wrap kind) nor the
caller's row binding (``aad``) can be changed without failing authentication. Later wrap kinds (a data key
wrapped by a subject key wrapped by a master key) add a kind number and their own wrapped-key contents; the
fixed fields stay where they are, so ``read_header`` reads every generation of rows.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from custos.privacy.errors import DecryptionFailed
from custos.privacy.keys import KEY_BYTES, MasterKeyProvider

MAGIC = b"CSTE"
FORMAT_VERSION = 1
#: Wrap kinds: how the data key in the header is protected. Only 1 exists today.
WRAP_MASTER = 1
SUPPORTED_WRAP_KINDS = frozenset({WRAP_MASTER})

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
    if format_version != FORMAT_VERSION:
        raise DecryptionFailed(f"unsupported envelope format version {format_version}")
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
    master_key = keys.key(version)
    data_key = AESGCM.generate_key(bit_length=256)
    wrapped = aes_key_wrap_with_padding(master_key, data_key)
    header = _FIXED.pack(MAGIC, FORMAT_VERSION, WRAP_MASTER, version, len(wrapped)) + wrapped
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, bytes(plaintext), header + bytes(aad))
    return header + nonce + ciphertext


def open_sealed(blob: bytes, *, aad: bytes, keys: MasterKeyProvider) -> bytes:
    """Decrypt a blob from ``seal``.

    Raises DecryptionFailed on any tampering or a wrong ``aad``, KeyNotFound on an unknown key version.
    """
    parsed = _parse(blob)
    if parsed.header.wrap_kind not in SUPPORTED_WRAP_KINDS:
        raise DecryptionFailed(f"unsupported envelope wrap kind {parsed.header.wrap_kind}")
    master_key = keys.key(parsed.header.key_version)  # raises KeyNotFound
    try:
        data_key = aes_key_unwrap_with_padding(master_key, parsed.wrapped_key)
    except (InvalidUnwrap, ValueError):
        raise DecryptionFailed(
            f"envelope data key does not unwrap with master key version {parsed.header.key_version}"
        ) from None
    if len(data_key) != KEY_BYTES:
        raise DecryptionFailed("envelope data key has the wrong length")
    try:
        return AESGCM(data_key).decrypt(parsed.nonce, parsed.ciphertext, parsed.header_bytes + bytes(aad))
    except InvalidTag:
        raise DecryptionFailed(
            "envelope failed authentication (tampered, or opened for another row)"
        ) from None


def bind_aad(*parts: str | bytes) -> bytes:
    """Encode row fields (table, row id, column, ...) as associated data; length prefixes keep parts apart."""
    out = bytearray(b"custos/aad/v1")
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else bytes(part)
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)
