"""The master keys as the settings configure them, for the server and the ``custos keys`` commands.

Opens the configured master key provider (file, environment or PKCS#11) and lists every key Custos uses.
Erasure, retention and subject export work on plain values and live in ``custos.privacy.erasure``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from custos.audit.checkpoints import SIGNING_KEY_FILE
from custos.audit.db import read_only
from custos.audit.models import ConversationVaultRow, SubjectKeyRow
from custos.privacy.errors import KeyFileError
from custos.privacy.keys import EnvKeyProvider, FileKeyProvider, MasterKeyProvider, RetiringKeyProvider
from custos.privacy.replies import ReplyUsage, reply_usage
from custos.privacy.subject_keys import SubjectKeyStore
from custos.server.settings import Settings


def open_master_keys(settings: Settings, *, create: bool = True) -> MasterKeyProvider:
    """The configured provider, refusing retired versions below ``key_min_decrypt_version``.

    ``create`` makes the key file on first start (file provider only); the other providers must be set up
    with ``custos keys init`` (PKCS#11) or by the operator (environment).
    """
    provider = open_raw_provider(settings, create=create)
    return RetiringKeyProvider(provider, min_version=settings.key_min_decrypt_version)


def open_raw_provider(settings: Settings, *, create: bool = True) -> Any:
    """The provider itself (a FileKeyProvider, EnvKeyProvider or Pkcs11KeyProvider), for key commands."""
    if settings.key_provider == "env":
        return EnvKeyProvider.from_environment(settings.key_env_var)
    if settings.key_provider == "pkcs11":
        from custos.privacy.pkcs11_provider import Pkcs11KeyProvider, read_pin

        if settings.pkcs11_module is None or settings.pkcs11_pin_file is None:
            raise KeyFileError("key_provider = 'pkcs11' needs pkcs11_module and pkcs11_pin_file")
        return Pkcs11KeyProvider.open(
            module=settings.pkcs11_module,
            token_label=settings.pkcs11_token_label,
            pin=read_pin(settings.pkcs11_pin_file),
            label=settings.pkcs11_key_label,
        )
    path = settings.resolved_key_file
    if create:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return FileKeyProvider.load_or_create(path)
    return FileKeyProvider.load(path)


@dataclass(frozen=True)
class KeyInfo:
    """One line of ``custos keys list``."""

    name: str
    provider: str
    created: datetime | None
    use: str


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None


def key_inventory(settings: Settings, keys: MasterKeyProvider, engine: Engine | None) -> list[KeyInfo]:
    """Every key: master versions (and what each wraps), signing key, index key, subjects.

    Idempotency replies are counted with the key they depend on: subject-sealed ones with the subject keys,
    replies of the previous release (sealed by a master key alone) with their master version, until
    ``custos keys rewrap`` reseals them.
    """
    usage: dict[int, int] = {}
    subjects = 0
    oldest: datetime | None = None
    replies = ReplyUsage(subject_sealed=0, legacy_by_master_version={})
    if engine is not None:
        usage = SubjectKeyStore(engine, keys).usage()
        replies = reply_usage(engine)
        with read_only(engine) as conn:
            subjects, oldest = conn.execute(select(func.count(), func.min(SubjectKeyRow.created_at))).one()
            vault_rows = int(
                conn.execute(select(func.count()).select_from(ConversationVaultRow)).scalar_one()
            )
    else:
        vault_rows = 0
    provider = keys.kind
    source_file = settings.resolved_key_file if provider == "file" else None
    created = _mtime(source_file) if source_file is not None else None
    primary = keys.current_version
    minimum = settings.key_min_decrypt_version
    rows = []
    held = keys.inner if isinstance(keys, RetiringKeyProvider) else keys  # retired versions are listed too
    for version in held.versions:
        state = "primary" if version == primary else ("retired" if version < minimum else "decrypt-only")
        use = f"{state}; wraps {usage.get(version, 0)} subject keys"
        legacy = replies.legacy_by_master_version.get(version, 0)
        if legacy:
            use += f" and {legacy} legacy idempotency replies (custos keys rewrap reseals them)"
        rows.append(KeyInfo(name=f"master key v{version}", provider=provider, created=created, use=use))
    rows.append(
        KeyInfo(
            name="blind-index HMAC key",
            provider=provider,
            created=created,
            use="subject/conversation references in audit rows; never rotated",
        )
    )
    signing = settings.data_dir / SIGNING_KEY_FILE
    rows.append(
        KeyInfo(
            name="audit checkpoint signing key (Ed25519)",
            provider=f"file {signing}",
            created=_mtime(signing),
            use="signs audit checkpoints",
        )
    )
    rows.append(
        KeyInfo(
            name=f"subject keys ({subjects})",
            provider="database, wrapped by master keys",
            created=oldest,
            use=(
                f"wrap data keys of transcripts, {vault_rows} vault rows and {replies.subject_sealed} "
                "idempotency replies; deleted on erasure"
            ),
        )
    )
    return rows
