"""Master keys held in a PKCS#11 token (an HSM, or SoftHSM2 in tests), never extractable.

Each master key version is an AES-256 secret key object labelled ``<label>-<version>`` with
``CKA_EXTRACTABLE`` false and ``CKA_SENSITIVE`` true: Custos only asks the token to wrap and unwrap
(``CKM_AES_KEY_WRAP_PAD``, RFC 5649), so the key bytes never enter this process. The newest version is
primary. The blind-index HMAC key is a generic secret labelled ``<label>-index``; it has to be readable (HMACs
are computed here), so it is backed up with the token like everything else on it.
"""

from __future__ import annotations

import re
import secrets
import threading
from pathlib import Path
from typing import Any

from custos.privacy.errors import DecryptionFailed, KeyFileError, KeyNotFound
from custos.privacy.keys import KEY_BYTES

_WRAP_MECHANISM = "AES_KEY_WRAP_PAD"


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise KeyFileError(
            "key_provider = 'pkcs11' needs python-pkcs11: pip install 'custos[pkcs11]'"
        ) from None
    return pkcs11


def read_pin(pin_file: Path) -> str:
    """Read the token PIN from a 0600 file (refused when group/other may read it)."""
    try:
        mode = pin_file.stat().st_mode
        if mode & 0o077:
            raise KeyFileError(
                f"PKCS#11 PIN file {pin_file} is accessible by group or others; "
                f"fix it with: chmod 600 {pin_file}"
            )
        return pin_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise KeyFileError(f"PKCS#11 PIN file {pin_file} does not exist") from None
    except PermissionError:
        raise KeyFileError(
            f"cannot read PKCS#11 PIN file {pin_file} (permission denied); chmod 600 it for the Custos user"
        ) from None


class Pkcs11KeyProvider:
    """A :class:`~custos.privacy.keys.MasterKeyProvider` backed by one PKCS#11 token session."""

    kind = "pkcs11"

    def __init__(self, session: Any, *, label: str) -> None:
        """Use an open read-write user session; call :meth:`open` to get one from settings."""
        self._pkcs11 = _pkcs11()
        self._session = session
        self._label = label
        self._lock = threading.Lock()  # a PKCS#11 session must not be used by two threads at once
        self._keys: dict[int, Any] = {}
        self._index_key: bytes | None = None
        self.reload()

    @classmethod
    def open(cls, *, module: Path, token_label: str, pin: str, label: str) -> Pkcs11KeyProvider:
        """Open the token named ``token_label`` through the PKCS#11 ``module`` and log in with ``pin``."""
        pkcs11 = _pkcs11()
        try:
            lib = pkcs11.lib(str(module))
        except (OSError, RuntimeError, pkcs11.PKCS11Error) as err:
            raise KeyFileError(f"cannot load PKCS#11 module {module} ({type(err).__name__})") from None
        try:
            token = lib.get_token(token_label=token_label)
            try:
                session = token.open(user_pin=pin, rw=True)
            except pkcs11.UserAlreadyLoggedIn:
                # Login is per process and token: a second session of this process shares it.
                session = token.open(rw=True)
        except pkcs11.NoSuchToken:
            raise KeyFileError(f"no PKCS#11 token labelled {token_label!r} in {module}") from None
        except pkcs11.PKCS11Error as err:
            raise KeyFileError(
                f"cannot open PKCS#11 token {token_label!r} ({type(err).__name__}); check the PIN"
            ) from None
        return cls(session, label=label)

    def __repr__(self) -> str:
        return f"Pkcs11KeyProvider(label={self._label!r}, versions={self.versions})"

    def reload(self) -> None:
        """Find the master key versions and the index key on the token."""
        pkcs11 = self._pkcs11
        pattern = re.compile(rf"^{re.escape(self._label)}-(\d+)$")
        keys: dict[int, Any] = {}
        index_key: bytes | None = None
        with self._lock:
            for obj in self._session.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY}):
                name = obj.label
                match = pattern.match(name or "")
                if match:
                    keys[int(match.group(1))] = obj
                elif name == f"{self._label}-index":
                    index_key = bytes(obj[pkcs11.Attribute.VALUE])
        self._keys = keys
        self._index_key = index_key

    @property
    def current_version(self) -> int:
        """The newest master key version on the token."""
        if not self._keys:
            raise KeyNotFound(
                f"the PKCS#11 token holds no master key labelled {self._label}-N; run custos keys init"
            )
        return max(self._keys)

    @property
    def versions(self) -> list[int]:
        """Master key versions on the token, ascending."""
        return sorted(self._keys)

    def _key(self, version: int) -> Any:
        try:
            return self._keys[version]
        except KeyError:
            raise KeyNotFound(
                f"master key version {version} is not on the PKCS#11 token; it holds versions {self.versions}"
            ) from None

    def wrap(self, version: int, key: bytes) -> bytes:
        """Wrap ``key`` on the token (RFC 5649) with master key ``version``."""
        pkcs11 = self._pkcs11
        master = self._key(version)
        attribute = pkcs11.Attribute
        with self._lock:
            temporary = self._session.create_object(
                {
                    attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                    attribute.KEY_TYPE: pkcs11.KeyType.AES,
                    attribute.VALUE: bytes(key),
                    attribute.TOKEN: False,
                    attribute.EXTRACTABLE: True,
                    attribute.SENSITIVE: False,
                }
            )
            try:
                return bytes(master.wrap_key(temporary, mechanism=getattr(pkcs11.Mechanism, _WRAP_MECHANISM)))
            finally:
                temporary.destroy()

    def unwrap(self, version: int, wrapped: bytes) -> bytes:
        """Unwrap on the token with master key ``version``; the result is a session object read back once."""
        pkcs11 = self._pkcs11
        master = self._key(version)
        attribute = pkcs11.Attribute
        with self._lock:
            try:
                unwrapped = master.unwrap_key(
                    pkcs11.ObjectClass.SECRET_KEY,
                    pkcs11.KeyType.AES,
                    bytes(wrapped),
                    mechanism=getattr(pkcs11.Mechanism, _WRAP_MECHANISM),
                    store=False,
                    template={attribute.EXTRACTABLE: True, attribute.SENSITIVE: False},
                )
            except pkcs11.PKCS11Error:
                raise DecryptionFailed(
                    f"wrapped key does not unwrap with master key version {version}"
                ) from None
            try:
                return bytes(unwrapped[attribute.VALUE])
            finally:
                unwrapped.destroy()

    def index_key(self) -> bytes:
        """The blind-index HMAC key stored on the token."""
        if self._index_key is None:
            raise KeyNotFound(
                f"the PKCS#11 token holds no index key labelled {self._label}-index; run custos keys init"
            )
        return self._index_key

    def add_version(self) -> int:
        """Generate the next master key version on the token (non-extractable); it becomes primary."""
        pkcs11 = self._pkcs11
        attribute = pkcs11.Attribute
        version = max(self._keys, default=0) + 1
        with self._lock:
            self._session.generate_key(
                pkcs11.KeyType.AES,
                256,
                label=f"{self._label}-{version}",
                store=True,
                template={
                    attribute.EXTRACTABLE: False,
                    attribute.SENSITIVE: True,
                    attribute.WRAP: True,
                    attribute.UNWRAP: True,
                    attribute.ENCRYPT: False,
                    attribute.DECRYPT: False,
                },
            )
        self.reload()
        return version

    def initialize(self) -> None:
        """Create master key version 1 and the index key if the token has none (``custos keys init``)."""
        pkcs11 = self._pkcs11
        attribute = pkcs11.Attribute
        if self._index_key is None:
            with self._lock:
                self._session.create_object(
                    {
                        attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                        attribute.KEY_TYPE: pkcs11.KeyType.GENERIC_SECRET,
                        attribute.VALUE: secrets.token_bytes(KEY_BYTES),
                        attribute.LABEL: f"{self._label}-index",
                        attribute.TOKEN: True,
                        attribute.PRIVATE: True,
                        attribute.EXTRACTABLE: True,
                        attribute.SENSITIVE: False,
                    }
                )
        if not self._keys:
            self.add_version()
        self.reload()

    def is_extractable(self, version: int) -> bool:
        """Whether the token would let master key ``version`` out (it never should)."""
        pkcs11 = self._pkcs11
        with self._lock:
            return bool(self._key(version)[pkcs11.Attribute.EXTRACTABLE])

    def close(self) -> None:
        """Close the token session."""
        with self._lock:
            self._session.close()
