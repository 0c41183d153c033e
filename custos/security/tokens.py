"""Bearer tokens ``id.secret``: a 256-bit secret stored only as its SHA-256, compared in constant time.

Looked up by id; with expiry, listing and revocation. Every change is an audited ``token_change`` event.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, select, update

from custos.audit.db import read_only, translate_db_errors
from custos.audit.events import AuditEvent
from custos.audit.models import AccessTokenRow
from custos.audit.store import AuditStore

SECRET_BYTES = 32  # 256 bits
_TOKEN_ID = re.compile(r"^[0-9a-f]{16}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{43}$")


class TokenError(Exception):
    """Why a presented token was refused; the message is for the audit trail, not for the client."""


@dataclass(frozen=True)
class TokenInfo:
    """A stored token, without its secret."""

    id: str
    principal: str
    roles: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def state(self, now: datetime) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def token_id_of(token: str) -> str | None:
    """The id part of ``token`` when it has the form ``id.secret`` (nothing is looked up); else ``None``."""
    token_id, sep, secret = token.partition(".")
    if not sep or not _TOKEN_ID.match(token_id) or not _SECRET.match(secret):
        return None
    return token_id


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _info(row: AccessTokenRow) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        principal=row.principal,
        roles=tuple(r for r in row.roles.split(",") if r),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


class TokenStore:
    """Tokens in the ``access_tokens`` table of the audit database."""

    def __init__(self, engine: Engine, audit: AuditStore) -> None:
        self._engine = engine
        self._audit = audit

    def create(
        self,
        principal: str,
        roles: Sequence[str],
        *,
        actor: str,
        expires_in: timedelta | None = None,
    ) -> tuple[str, TokenInfo]:
        """Create a token; returns ``id.secret`` (shown once, never stored) and its stored facts."""
        from custos.security.auth import ROLES  # the role table lives with the permissions

        unknown = sorted(set(roles) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown role(s) {', '.join(unknown)}; known: {', '.join(sorted(ROLES))}")
        if not principal or len(principal) > 512:
            raise ValueError("principal must be 1..512 characters")
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(SECRET_BYTES)
        now = datetime.now(UTC)
        row = {
            "id": token_id,
            "principal": principal,
            "roles": ",".join(sorted(set(roles))),
            "secret_sha256": _digest(secret),
            "created_at": now,
            "expires_at": now + expires_in if expires_in is not None else None,
            "revoked_at": None,
        }
        with translate_db_errors(), self._engine.begin() as conn:
            conn.execute(insert(AccessTokenRow), row)
        info = self.get(token_id)
        self._record(actor, "create", info)
        return f"{token_id}.{secret}", info

    def get(self, token_id: str) -> TokenInfo:
        """One token by id; KeyError when there is none."""
        with read_only(self._engine) as conn:
            row = conn.execute(select(AccessTokenRow.__table__).where(AccessTokenRow.id == token_id)).first()
        if row is None:
            raise KeyError(token_id)
        return _info(_row(row))

    def list(self) -> list[TokenInfo]:
        """Every token, oldest first."""
        with read_only(self._engine) as conn:
            rows = conn.execute(select(AccessTokenRow.__table__).order_by(AccessTokenRow.created_at)).all()
        return [_info(_row(r)) for r in rows]

    def revoke(self, token_id: str, *, actor: str) -> TokenInfo:
        """Revoke a token (idempotent); KeyError when there is none."""
        info = self.get(token_id)
        if info.revoked_at is None:
            with translate_db_errors(), self._engine.begin() as conn:
                conn.execute(
                    update(AccessTokenRow)
                    .where(AccessTokenRow.id == token_id)
                    .values(revoked_at=datetime.now(UTC))
                )
            info = self.get(token_id)
            self._record(actor, "revoke", info)
        return info

    def verify(self, token: str, *, now: datetime | None = None) -> TokenInfo:
        """The token's facts if ``token`` is valid; :class:`TokenError` naming why not otherwise."""
        token_id, sep, secret = token.partition(".")
        if not sep or not _TOKEN_ID.match(token_id) or not _SECRET.match(secret):
            raise TokenError("malformed")
        with read_only(self._engine) as conn:
            row = conn.execute(select(AccessTokenRow.__table__).where(AccessTokenRow.id == token_id)).first()
        presented = _digest(secret)
        # Compare even when the id is unknown, so timing does not tell which ids exist.
        stored = row.secret_sha256 if row is not None else _digest(secrets.token_urlsafe(SECRET_BYTES))
        if not hmac.compare_digest(stored, presented) or row is None:
            raise TokenError("unknown token or wrong secret")
        info = _info(_row(row))
        state = info.state(now or datetime.now(UTC))
        if state != "active":
            raise TokenError(state)
        return info

    def _record(self, actor: str, action: str, info: TokenInfo) -> None:
        now = datetime.now(UTC)
        self._audit.append(
            AuditEvent(
                event_type="token_change",
                phase="event",
                start_time=now,
                end_time=now,
                actor=actor,
                rpc=f"tokens.{action}",
                status="OK",
                details={
                    "action": action,
                    "token_id": info.id,
                    "principal": info.principal,
                    "roles": list(info.roles),
                    "expires_at": info.expires_at.isoformat() if info.expires_at else None,
                    "actor": {"principal": actor},
                },
            )
        )


def _row(row: object) -> AccessTokenRow:
    """A Core row of ``access_tokens`` as a detached model instance (typed access to its columns)."""
    mapping = row._mapping  # type: ignore[attr-defined]
    return AccessTokenRow(**{c: mapping[c] for c in AccessTokenRow.__table__.columns.keys()})  # noqa: SIM118
