"""Master keys for envelope encryption and the blind-index key, from a provider (file, environment, PKCS#11).

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

from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from custos.privacy.errors import DecryptionFailed, KeyFileError, KeyNotFound, KeyRetired

KEY_BYTES = 32
KEY_FILE_FORMAT = 1
MAX_KEY_VERSION = 2**32 - 1  # stored as uint32 in envelope headers
_MAX_KEY_FILE_BYTES = 1 << 20
_BLIND_INDEX_DOMAIN = b"custos/blind-index/v1"


@runtime_checkable
class MasterKeyProvider(Protocol):
    """Source of versioned master keys (used only to wrap and unwrap other keys) and of the blind-index key.

    Master keys never have to leave the provider: a PKCS#11 token wraps and unwraps on the token.
    """

    @property
    def kind(self) -> str:
        """Provider name for inventories and audit records: ``file``, ``env`` or ``pkcs11``."""
        ...

    @property
    def current_version(self) -> int:
        """Version new keys are wrapped with (the primary version)."""
        ...

    @property
    def versions(self) -> list[int]:
        """Every master key version held, ascending."""
        ...

    def wrap(self, version: int, key: bytes) -> bytes:
        """Wrap ``key`` (RFC 5649) with master key ``version``; KeyNotFound if it is not held."""
        ...

    def unwrap(self, version: int, wrapped: bytes) -> bytes:
        """Unwrap with master key ``version``: KeyNotFound if not held, DecryptionFailed if it fails."""
        ...

    def index_key(self) -> bytes:
        """Return the 32-byte HMAC key for blind indexes (separate from master keys, never rotated)."""
        ...


def software_wrap(master_key: bytes, key: bytes) -> bytes:
    """RFC 5649 (AES key wrap with padding) of ``key`` under ``master_key``."""
    return aes_key_wrap_with_padding(master_key, key)


def software_unwrap(wrapping_key: bytes, wrapped: bytes, name: str) -> bytes:
    """Reverse :func:`software_wrap`; DecryptionFailed names only the wrapping key (``name``)."""
    try:
        return aes_key_unwrap_with_padding(wrapping_key, bytes(wrapped))
    except (InvalidUnwrap, ValueError):
        raise DecryptionFailed(f"wrapped key does not unwrap with {name}") from None


class RetiringKeyProvider:
    """A provider that refuses master key versions below a minimum decryption version.

    Rotation adds a version, ``keys rewrap`` moves every subject key to it; raising the minimum then retires
    the old versions everywhere, even while they are still in the key file or the token.
    """

    def __init__(self, inner: MasterKeyProvider, *, min_version: int) -> None:
        """Wrap ``inner``; the primary version must not itself be retired."""
        if min_version > inner.current_version:
            raise KeyRetired(
                f"the primary master key version {inner.current_version} is below the minimum decryption "
                f"version {min_version}; promote a newer version first (custos keys rotate)"
            )
        self.inner = inner
        self.min_version = min_version

    def __repr__(self) -> str:
        return f"RetiringKeyProvider({self.inner!r}, min_version={self.min_version})"

    @property
    def kind(self) -> str:
        """The wrapped provider's kind."""
        return self.inner.kind

    @property
    def current_version(self) -> int:
        """The wrapped provider's primary version."""
        return self.inner.current_version

    @property
    def versions(self) -> list[int]:
        """The versions still usable (at or above the minimum)."""
        return [v for v in self.inner.versions if v >= self.min_version]

    def _check(self, version: int) -> None:
        if version < self.min_version:
            raise KeyRetired(
                f"master key version {version} is retired (minimum decryption version "
                f"{self.min_version}); rows still on it must be rewrapped with an older minimum first"
            )

    def wrap(self, version: int, key: bytes) -> bytes:
        """Wrap with ``version`` unless it is retired."""
        self._check(version)
        return self.inner.wrap(version, key)

    def unwrap(self, version: int, wrapped: bytes) -> bytes:
        """Unwrap with ``version`` unless it is retired."""
        self._check(version)
        return self.inner.unwrap(version, wrapped)

    def index_key(self) -> bytes:
        """The wrapped provider's blind-index key."""
        return self.inner.index_key()


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

    kind = "file"

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

    def wrap(self, version: int, key: bytes) -> bytes:
        """RFC 5649 wrap of ``key`` under master key ``version``."""
        return software_wrap(self.key(version), key)

    def unwrap(self, version: int, wrapped: bytes) -> bytes:
        """RFC 5649 unwrap under master key ``version``."""
        return software_unwrap(self.key(version), wrapped, f"master key version {version}")

    def index_key(self) -> bytes:
        """Return the blind-index HMAC key."""
        return self._index_key

    def with_new_version(self, *, promote: bool = True) -> FileKeyProvider:
        """Return a copy with master key version highest + 1 added, primary unless ``promote`` is off."""
        version = max(self._keys) + 1
        _check_version(version)
        return FileKeyProvider(
            primary=version if promote else self._primary,
            master_keys={**self._keys, version: secrets.token_bytes(KEY_BYTES)},
            index_key=self._index_key,
            path=self.path,
        )

    def with_primary(self, version: int) -> FileKeyProvider:
        """Return a copy whose primary is ``version`` (which must be held)."""
        self.key(version)
        return FileKeyProvider(
            primary=version, master_keys=self._keys, index_key=self._index_key, path=self.path
        )

    def save(self) -> None:
        """Replace the key file atomically (same 0600 mode); the previous content is gone afterwards."""
        if self.path is None:
            raise ValueError("this key set has no file")
        _replace_file(self.path, self.to_json())

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
    def from_document(cls, data: bytes, *, source: str) -> FileKeyProvider:
        """Parse the key file format from bytes held elsewhere (an environment variable)."""
        return cls._parse(Path(source), data)

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


def _write_durably(path: Path, data: bytes, place: Callable[[Path, Path], None]) -> None:
    """Write ``data`` durably at ``path`` through a 0600 temporary file that ``place`` moves or links there.

    The temporary file is fsynced before ``place`` and removed whatever happens; then the directory is
    fsynced.
    """
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
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
        place(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_new_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600, raising FileExistsError if ``path`` exists.

    The bytes go to a temporary file in the same directory first (fsynced), which is then hard-linked to
    ``path``: linking fails if ``path`` exists, so a reader sees either no file or the complete one.
    """
    _write_durably(path, data, os.link)


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a 0600 temporary file beside ``path``, fsync, then rename it over ``path``."""
    _write_durably(path, data, os.replace)


class EnvKeyProvider(FileKeyProvider):
    """The key file's JSON document held in an environment variable (for secret stores that inject env)."""

    kind = "env"

    @classmethod
    def from_environment(cls, variable: str, environ: Mapping[str, str] | None = None) -> FileKeyProvider:
        """Parse the variable; KeyFileError says what is wrong and never echoes the value."""
        environ = os.environ if environ is None else environ
        value = environ.get(variable)
        if not value:
            raise KeyFileError(
                f"environment variable {variable} is not set; put the key file's JSON document in it "
                f"(custos keys init --print-env prints one), or use key_provider = 'file'"
            )
        parsed = FileKeyProvider._parse(Path(f"${variable}"), value.encode("utf-8", "surrogateescape"))
        return cls(
            primary=parsed.current_version,
            master_keys={v: parsed.key(v) for v in parsed.versions},
            index_key=parsed.index_key(),
        )

    def __repr__(self) -> str:
        return f"EnvKeyProvider(primary={self.current_version}, versions={self.versions})"


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
