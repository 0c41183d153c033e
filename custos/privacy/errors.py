"""Domain errors of the privacy package.

The server maps these to gRPC status codes in one interceptor. Messages are written for operators and may
reach logs, so they name files, key versions and entity types, never plaintext or personal data.
"""

from __future__ import annotations


class PrivacyError(Exception):
    """Base class of every error raised by ``custos.privacy``."""


class KeyFileError(PrivacyError):
    """The key file is missing, unreadable, malformed or too permissive; the message says how to fix it."""


class KeyNotFound(PrivacyError):
    """A ciphertext names a master key version the key provider does not hold."""


class KeyRetired(KeyNotFound):
    """A ciphertext names a master key version below the minimum decryption version."""


class SubjectKeyMissing(KeyNotFound):
    """The subject's key does not exist: the subject was erased (crypto-shredded) or never had data."""


class DecryptionFailed(PrivacyError):
    """A sealed blob failed authentication or is malformed (wrong key, wrong row, tampered bytes)."""


class UnsupportedLanguage(PrivacyError):
    """The analyzer has no pipeline for the requested language; text is refused, never passed through."""


class UnsupportedEntity(PrivacyError):
    """An entity type was requested that no configured recognizer detects (it would be silently ignored)."""
