"""Master keys for envelope encryption and the blind-index key, from a provider (file; later env, PKCS#11).

Key file format (JSON, mode 0600)::

    {"format": 1, "primary": 1, "master_keys": {"1": "<base64 32 bytes>"}, "index_key": "<base64 32 bytes>"}

``primary`` is the version new envelopes are sealed with; older versions stay for reading (rotation adds a
version and moves ``primary``). The index key is separate and never rotated with the master keys, because
blind indexes stored in audit rows must stay comparable for the life of the audit log.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from custos.privacy.errors import KeyFileError, KeyNotFound

KEY_BYTES = 32
KEY_FILE_FORMAT = 1
MAX_KEY_VERSION = 2**32 - 1  # stored as uint32 in envelope headers
_MAX_KEY_FILE_BYTES = 1 << 20
_BLIND_INDEX_DOMAIN = b"custos/blind-index/v1"


@runtime_checkable
class MasterKeyProvider(Protocol):
    """Source of versioned 32-byte master keys and of the blind-index key."""

    @property
    def current_version(self) -> int:
        """Version new envelopes are sealed with."""
        ...

    def key(self, version: int) -> bytes:
        """Return the 32-byte master key of ``version``; raise KeyNotFound if it is not held."""
        ...

    def index_key(self) -> bytes:
        """Return the 32-byte HMAC key for blind indexes (separate from master keys, never rotated)."""
        ...


def _check_key(name: str, key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"{name} must be {KEY_BYTES} bytes")
    return key


def _check_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_KEY_VERSION:
        raise ValueError(f"key version must be an integer in 1..{MAX_KEY_VERSION}")
    return version


class FileKeyProvider:
    """Master keys and the index key held in a 0600 JSON key file on local disk."""

    def __init__(
        self,
        *,
        primary: int,
        master_keys: Mapping[int, bytes],
        index_key: bytes,
        path: Path | None = None,
    ) -> None:
        """Hold already-loaded keys; use ``create``/``load``/``load_or_create`` to work with a file."""
        keys = {
            _check_version(version): _check_key(f"master key {version}", key)
            for version, key in master_keys.items()
        }
        if _check_version(primary) not in keys:
            raise ValueError(f"primary version {primary} has no master key")
        self._primary = primary
        self._keys = keys
        self._index_key = _check_key("index key", index_key)
        self.path = path

    def __repr__(self) -> str:
        return f"FileKeyProvider(path={str(self.path)!r}, primary={self._primary}, versions={self.versions})"

    @property
    def current_version(self) -> int:
        """Version new envelopes are sealed with (the file's ``primary``)."""
        return self._primary

    @property
    def versions(self) -> list[int]:
        """All master key versions held, ascending."""
        return sorted(self._keys)

    def key(self, version: int) -> bytes:
        """Return the master key of ``version``; KeyNotFound names only the version."""
        try:
            return self._keys[version]
        except KeyError:
            raise KeyNotFound(
                f"master key version {version} is not in the key file {self.path}; "
                f"it holds versions {self.versions}"
            ) from None

    def index_key(self) -> bytes:
        """Return the blind-index HMAC key."""
        return self._index_key

    def to_json(self) -> bytes:
        """Serialise to the key file format (contains key material: write it only with mode 0600)."""
        document = {
            "format": KEY_FILE_FORMAT,
            "primary": self._primary,
            "master_keys": {
                str(v): base64.b64encode(k).decode("ascii") for v, k in sorted(self._keys.items())
            },
            "index_key": base64.b64encode(self._index_key).decode("ascii"),
        }
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("ascii")

    @classmethod
    def generate(cls, path: Path | None = None) -> FileKeyProvider:
        """Return a provider with a fresh master key (version 1) and index key, in memory only."""
        return cls(
            primary=1,
            master_keys={1: secrets.token_bytes(KEY_BYTES)},
            index_key=secrets.token_bytes(KEY_BYTES),
            path=path,
        )

    @classmethod
    def create(cls, path: Path) -> FileKeyProvider:
        """Write a new key file atomically with mode 0600; refuse (KeyFileError) if the path exists."""
        path = Path(path)
        provider = cls.generate(path)
        try:
            _write_new_file(path, provider.to_json())
        except FileExistsError:
            raise KeyFileError(
                f"refusing to overwrite existing key file {path}: it may hold the only copy of keys that "
                f"decrypt stored data; load it, or move it away first if you really mean to start over"
            ) from None
        except OSError as err:
            raise KeyFileError(
                f"cannot create key file {path} ({err.strerror}); check that its directory exists and is "
                f"writable by the user running Custos"
            ) from None
        return provider

    @classmethod
    def load(cls, path: Path) -> FileKeyProvider:
        """Read and validate a key file.

        Refuses (KeyFileError with a fix) if it is missing, unreadable, open to group/others or malformed.
        """
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise KeyFileError(
                f"key file {path} does not exist; start Custos once to create it, "
                f"or restore it from your backup"
            ) from None
        except PermissionError:
            raise KeyFileError(
                f"cannot read key file {path} (permission denied); it must belong to the user running "
                f"Custos: chown that user {path} && chmod 600 {path}"
            ) from None
        except OSError as err:
            raise KeyFileError(f"cannot open key file {path} ({err.strerror})") from None
        try:
            # Checked on the open descriptor, so the file cannot be swapped between check and read.
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise KeyFileError(f"key file {path} is not a regular file")
            if info.st_mode & 0o077:
                raise KeyFileError(
                    f"key file {path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(info.st_mode):04o}); fix it with: chmod 600 {path}"
                )
            chunks: list[bytes] = []
            size = 0
            while size <= _MAX_KEY_FILE_BYTES:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            data = b"".join(chunks)
        except OSError as err:
            raise KeyFileError(f"cannot read key file {path} ({err.strerror})") from None
        finally:
            os.close(fd)
        if len(data) > _MAX_KEY_FILE_BYTES:
            raise KeyFileError(
                f"key file {path} is larger than {_MAX_KEY_FILE_BYTES} bytes; not a Custos key file"
            )
        return cls._parse(path, data)

    @classmethod
    def load_or_create(cls, path: Path) -> FileKeyProvider:
        """Load the key file, creating it first if it does not exist (first start); safe if racing."""
        path = Path(path)
        if not os.path.lexists(path):
            try:
                _write_new_file(path, cls.generate(path).to_json())
            except FileExistsError:
                pass  # another process created it between the check and the write: use theirs
            except OSError as err:
                raise KeyFileError(
                    f"cannot create key file {path} ({err.strerror}); check that its directory exists and is "
                    f"writable by the user running Custos"
                ) from None
        return cls.load(path)

    @classmethod
    def _parse(cls, path: Path, data: bytes) -> FileKeyProvider:
        def bad(reason: str) -> KeyFileError:
            return KeyFileError(
                f"key file {path} is malformed ({reason}); expected "
                f'{{"format": 1, "primary": N, "master_keys": {{"N": "<base64>"}}, "index_key": "<base64>"}}'
            )

        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise bad("not JSON") from None
        if not isinstance(document, dict):
            raise bad("not a JSON object")
        if document.get("format") != KEY_FILE_FORMAT:
            raise bad(f"unsupported format {document.get('format')!r}")
        unknown = sorted(set(document) - {"format", "primary", "master_keys", "index_key"})
        if unknown:
            raise bad(f"unknown fields {unknown}")
        primary = document.get("primary")
        if isinstance(primary, bool) or not isinstance(primary, int) or not 1 <= primary <= MAX_KEY_VERSION:
            raise bad("'primary' must be a positive integer")
        raw_keys = document.get("master_keys")
        if not isinstance(raw_keys, dict) or not raw_keys:
            raise bad("'master_keys' must be a non-empty object")
        master_keys: dict[int, bytes] = {}
        for name, encoded in raw_keys.items():
            if not (isinstance(name, str) and name.isdigit() and name == str(int(name))):
                raise bad("master key versions must be decimal integers without leading zeros")
            version = int(name)
            if not 1 <= version <= MAX_KEY_VERSION:
                raise bad(f"master key version {name} out of range")
            master_keys[version] = _decode_key(encoded, f"master key {name}", bad)
        if primary not in master_keys:
            raise bad(f"primary version {primary} has no master key")
        index_key = _decode_key(document.get("index_key"), "index_key", bad)
        return cls(primary=primary, master_keys=master_keys, index_key=index_key, path=path)


def _decode_key(encoded: object, name: str, bad: Callable[[str], KeyFileError]) -> bytes:
    if not isinstance(encoded, str):
        raise bad(f"{name} must be a base64 string")
    try:
        key = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise bad(f"{name} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise bad(f"{name} must decode to {KEY_BYTES} bytes")
    return key


def _write_new_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600, raising FileExistsError if ``path`` exists.

    The bytes go to a temporary file in the same directory first (fsynced), which is then hard-linked to
    ``path``: linking fails if ``path`` exists, so a reader sees either no file or the complete one.
    """
    directory = path.parent
    temporary = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask cannot widen it, but be explicit
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def blind_index(key: bytes, kind: str, value: str) -> str:
    """Return HMAC-SHA256 (hex) of ``value``, domain-separated by ``kind`` ("conversation", "subject", ...).

    Audit rows store these instead of identifiers: equal inputs compare equal, the identifier cannot be read
    back without the key, and the same value under two kinds gives unrelated indexes.
    """
    _check_key("blind index key", key)
    if not kind or not kind.isascii() or not kind.replace("_", "").replace("-", "").isalnum():
        raise ValueError("kind must be a non-empty ASCII word, e.g. 'conversation' or 'subject'")
    kind_bytes = kind.encode("ascii")
    value_bytes = value.encode("utf-8")
    # Length prefixes make (kind, value) → message injective, so no kind/value split can collide.
    message = (
        _BLIND_INDEX_DOMAIN
        + len(kind_bytes).to_bytes(4, "big")
        + kind_bytes
        + len(value_bytes).to_bytes(8, "big")
        + value_bytes
    )
    return hmac.new(key, message, hashlib.sha256).hexdigest()
