"""Secure by default on first start: development certificates, an admin token, configuration audit.

The first start makes a development CA and server certificate, a bootstrap admin token and the audit
signing key (only while the log is empty: :func:`open_audit_trail`); every start appends a ``config_change``
record when the settings differ from the last start's.

The record holds a keyed digest per setting, never a value: HMAC-SHA256 under the blind-index key, which
never leaves the server, so nobody reading the audit log can test guesses against it (an unkeyed hash of a
database URL is a dictionary attack on its password). Secrets are split off first, so the password of
``database_url`` is its own field (``database_url.password``): a change of only the password is still
recorded as changed, and the URL's digest no longer depends on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretBytes, SecretStr
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from custos.audit.canonical import canonical_json
from custos.audit.checkpoints import load_public_key
from custos.audit.events import AuditEvent
from custos.audit.store import AuditStore
from custos.audit.trail import AuditTrail
from custos.privacy.keys import blind_index
from custos.security.tls import TLSPaths, init_dev_certs, write_private
from custos.security.tokens import TokenStore
from custos.server.settings import Settings

log = logging.getLogger("custos.server")

BOOTSTRAP_ACTOR = "custos:bootstrap"
ADMIN_PRINCIPAL = "admin"
# The bootstrap token can do everything but read transcripts, so the README's example works at once;
# operators create narrower tokens with it (`custos tokens create`).
ADMIN_ROLES = ("admin", "inference", "compliance")
#: How ``config_change`` digests are made; records without it were written by the first release
#: (unkeyed SHA-256, 16 hex digits, of every value, the database URL with its password).
FINGERPRINT_SCHEME = "hmac-sha256/v1"
_LEGACY_SCHEME = "sha256-16"
# libpq connection parameters that carry a secret when given in a URL's query string.
_SECRET_URL_PARAMETERS = frozenset({"password", "sslpassword"})


@dataclass(frozen=True)
class SecuritySetup:
    """What the start made; the CLI prints the connection hint when something was created."""

    ca_file: Path | None
    created_certs: bool
    admin_token_file: Path | None


def prepare_security(settings: Settings, tokens: TokenStore) -> SecuritySetup:
    """Make the development certificates and the admin token when missing (blocking: run on the executor)."""
    created_certs = False
    ca_file: Path | None = None
    if not settings.plaintext:
        if settings.tls_cert_file is None:
            paths = TLSPaths.in_dir(settings.tls_dir)
            ca_file = paths.ca_cert
            if not paths.server_cert.exists():
                init_dev_certs(paths, settings.listen)
                created_certs = True
        for path in (
            settings.resolved_tls_cert_file,
            settings.resolved_tls_key_file,
            settings.tls_client_ca_file,
        ):
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"TLS file {path} does not exist")
    admin_file: Path | None = None
    if not tokens.list() and not settings.admin_token_file.exists():
        token, _ = tokens.create(ADMIN_PRINCIPAL, ADMIN_ROLES, actor=BOOTSTRAP_ACTOR)
        write_private(settings.admin_token_file, token.encode() + b"\n")
        admin_file = settings.admin_token_file
    return SecuritySetup(ca_file=ca_file, created_certs=created_certs, admin_token_file=admin_file)


def open_audit_trail(settings: Settings, store: AuditStore, *, create_key: bool = False) -> AuditTrail:
    """The audit trail at the configured paths, with the pinned public key when one is configured.

    ``create_key`` is for the server's start: the signing key is made there, and only for an empty log.
    Raises :class:`~custos.audit.checkpoints.CheckpointError` (naming the file) when the key is missing for
    a log that has records or checkpoints, or differs from the pinned key.
    """
    key_file = settings.audit_public_key_file
    pinned = load_public_key(key_file) if key_file is not None else None
    return AuditTrail.open(
        store,
        settings.data_dir,
        every_records=settings.checkpoint_every_records,
        every_seconds=settings.checkpoint_every_seconds,
        signing_key=settings.resolved_audit_signing_key_file,
        checkpoint_file=settings.resolved_audit_checkpoint_file,
        public_key=pinned,
        create_key=create_key,
    )


def split_secrets(settings: Settings) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings as plain JSON with their secrets taken out, and the secrets by field name.

    Secrets: ``SecretStr``/``SecretBytes`` fields, and the password of ``database_url`` (in its user part or
    its query string), which becomes ``database_url.password``; a URL that does not parse is a secret whole.
    """
    values: dict[str, Any] = settings.model_dump(mode="json")
    secrets: dict[str, str] = {}
    for name in type(settings).model_fields:
        raw = getattr(settings, name)
        if isinstance(raw, SecretStr):
            secrets[name], values[name] = raw.get_secret_value(), "(secret)"
        elif isinstance(raw, SecretBytes):
            secrets[name], values[name] = raw.get_secret_value().hex(), "(secret)"
    if settings.database_url is not None:
        try:
            url = make_url(settings.database_url)
        except ArgumentError:
            secrets["database_url"], values["database_url"] = settings.database_url, "(secret)"
        else:
            hidden = {k: v for k, v in url.query.items() if k.lower() in _SECRET_URL_PARAMETERS}
            if url.password is not None or hidden:
                parts = [] if url.password is None else [str(url.password)]
                parts += [f"{k}={v}" for k, v in sorted(hidden.items())]
                secrets["database_url.password"] = "\n".join(parts)
            bare = URL.create(
                url.drivername,
                username=url.username,
                host=url.host,
                port=url.port,
                database=url.database,
                query={k: v for k, v in url.query.items() if k not in hidden},
            )
            values["database_url"] = bare.render_as_string(hide_password=False)
    return values, secrets


def settings_fingerprint(settings: Settings, index_key: bytes) -> dict[str, str]:
    """A keyed digest per setting (and per secret part): equal values compare equal, nothing can be read back.

    ``index_key`` is the blind-index key (:meth:`MasterKeyProvider.index_key`), so digests stay comparable
    across restarts and key rotations, and a reader of the audit log cannot test guesses.
    """
    values, secrets = split_secrets(settings)
    entries: dict[str, Any] = {**values, **secrets}
    return {
        name: blind_index(index_key, "setting", f"{name}={json.dumps(value, sort_keys=True)}")[:32]
        for name, value in sorted(entries.items())
    }


def _legacy_fingerprint(settings: Settings) -> dict[str, str]:
    """The first release's digests, computed only to compare with its records; never stored again."""
    values = settings.model_dump(mode="json")
    return {
        name: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
        for name, value in sorted(values.items())
    }


def record_config_change(
    audit: AuditStore, settings: Settings, *, index_key: bytes, actor: str = BOOTSTRAP_ACTOR
) -> bool:
    """Append a ``config_change`` record when the settings differ from the last recorded ones.

    A last record of the first release (unkeyed digests) is compared with digests of that kind computed
    here in memory, so ``changed`` stays accurate across the upgrade; the new record holds keyed ones only.
    """
    fields = settings_fingerprint(settings, index_key)
    digest = hashlib.sha256(canonical_json(fields)).hexdigest()
    previous, _ = audit.query(event_type="config_change", page_size=1)
    last = previous[0].details if previous else {}
    scheme = last.get("scheme", _LEGACY_SCHEME) if previous else None
    if scheme == FINGERPRINT_SCHEME and last.get("digest") == digest:
        return False
    stored = last.get("fields")
    before: dict[str, str] = dict(stored) if isinstance(stored, dict) else {}
    current = fields if scheme in (None, FINGERPRINT_SCHEME) else _legacy_fingerprint(settings)
    changed = sorted(name for name in current.keys() | before.keys() if current.get(name) != before.get(name))
    _, secrets = split_secrets(settings)
    now = datetime.now(UTC)
    audit.append(
        AuditEvent(
            event_type="config_change",
            phase="event",
            start_time=now,
            end_time=now,
            actor=actor,
            rpc="start",
            status="OK",
            details={
                "scheme": FINGERPRINT_SCHEME,
                "digest": digest,
                "previous_digest": last.get("digest") if previous else None,
                "previous_scheme": scheme,
                "changed": changed,
                "fields": fields,
                "secret_fields": sorted(secrets),
                "actor": {"principal": actor},
            },
        )
    )
    return True
