"""Secure by default on first start: development certificates, an admin token, configuration audit.

The first start makes a development CA and server certificate and a bootstrap admin token; every start
appends a ``config_change`` record when the settings differ from the last start's.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from custos.audit.canonical import canonical_json
from custos.audit.events import AuditEvent
from custos.audit.store import AuditStore
from custos.security.tls import TLSPaths, init_dev_certs, write_private
from custos.security.tokens import TokenStore
from custos.server.settings import Settings

log = logging.getLogger("custos.server")

BOOTSTRAP_ACTOR = "custos:bootstrap"
ADMIN_PRINCIPAL = "admin"
# The bootstrap token can do everything but read transcripts, so the README's example works at once;
# operators create narrower tokens with it (`custos tokens create`).
ADMIN_ROLES = ("admin", "inference", "compliance")


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


def settings_fingerprint(settings: Settings) -> dict[str, str]:
    """A digest per setting (values never stored: paths and addresses can be sensitive)."""
    values = settings.model_dump(mode="json")
    return {
        name: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
        for name, value in sorted(values.items())
    }


def record_config_change(audit: AuditStore, settings: Settings, *, actor: str = BOOTSTRAP_ACTOR) -> bool:
    """Append a ``config_change`` record when the settings differ from the last recorded ones."""
    fields = settings_fingerprint(settings)
    digest = hashlib.sha256(canonical_json(fields)).hexdigest()
    previous, _ = audit.query(event_type="config_change", page_size=1)
    before: dict[str, str] = {}
    if previous:
        if previous[0].details.get("digest") == digest:
            return False
        stored = previous[0].details.get("fields")
        before = dict(stored) if isinstance(stored, dict) else {}
    changed = sorted(name for name in fields.keys() | before.keys() if fields.get(name) != before.get(name))
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
                "digest": digest,
                "previous_digest": previous[0].details.get("digest") if previous else None,
                "changed": changed,
                "fields": fields,
                "actor": {"principal": actor},
            },
        )
    )
    return True
