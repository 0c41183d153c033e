"""PostgreSQL hardening: the application role may read and append audit rows, never change or remove them.

:func:`harden_postgres` (run once by the database owner, e.g. ``custos audit harden --app-role custos_app``)

- installs a row trigger that refuses every ``UPDATE`` of ``audit_records``, and every ``DELETE`` unless the
  transaction set ``custos.maintenance = 'archive'`` *and* runs as the maintenance role (archiving);
- installs a statement trigger that refuses every ``TRUNCATE`` of ``audit_records`` (``TRUNCATE`` fires no
  row triggers, so without it the table owner could still empty the log in one statement);
- revokes ``UPDATE``, ``DELETE`` and ``TRUNCATE`` on ``audit_records`` from the application role and grants
  it ``SELECT`` and ``INSERT`` only, ``SELECT, INSERT, DELETE`` on ``transcripts`` (purge deletes) and
  ``SELECT, INSERT, UPDATE, DELETE`` (never ``TRUNCATE``) on the other Custos tables (tokens, vault, subject
  keys, idempotency, feedback), so a role with no other grants can run the server;
- optionally grants the maintenance role ``SELECT`` and ``DELETE`` for archiving.

The grants stop the application role; the triggers also stop the table owner and anyone granted too much by
mistake. A superuser can still disable triggers: that is what the signed checkpoints outside the database
are for.
"""

from __future__ import annotations

import re

from sqlalchemy import Engine, text

from custos.audit.models import Base

__all__ = ["harden_postgres"]

_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_FUNCTION = """
CREATE OR REPLACE FUNCTION custos_audit_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE'
     AND current_setting('custos.maintenance', true) = 'archive'
     AND (TG_ARGV[0] = '' OR pg_has_role(current_user, TG_ARGV[0], 'MEMBER')) THEN
    RETURN OLD;
  END IF;
  -- UPDATE, and DELETE outside archiving (row trigger); TRUNCATE (statement trigger).
  RAISE EXCEPTION 'audit records are append-only (% refused)', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$$
"""


# Tables the server reads and changes in place (tokens revoked, vault rows renewed, keys destroyed).
_OTHER_TABLES = tuple(
    t.name for t in Base.metadata.sorted_tables if t.name not in ("audit_records", "transcripts")
)


def _ident(name: str, what: str) -> str:
    if not _IDENT.fullmatch(name):
        raise ValueError(f"{what} must be a lower-case PostgreSQL identifier")
    return name


def harden_postgres(engine: Engine, *, app_role: str, maintenance_role: str | None = None) -> None:
    """Install the immutability trigger and the grants described in the module docstring (idempotent)."""
    if engine.dialect.name != "postgresql":
        raise ValueError("hardening applies to PostgreSQL; SQLite relies on file permissions")
    app = _ident(app_role, "app_role")
    maintenance = _ident(maintenance_role, "maintenance_role") if maintenance_role else ""
    with engine.begin() as conn:
        conn.execute(text(_FUNCTION))
        conn.execute(text("DROP TRIGGER IF EXISTS custos_audit_immutable ON audit_records"))
        conn.execute(
            text(
                "CREATE TRIGGER custos_audit_immutable BEFORE UPDATE OR DELETE ON audit_records "
                f"FOR EACH ROW EXECUTE FUNCTION custos_audit_immutable('{maintenance}')"
            )
        )
        conn.execute(text("DROP TRIGGER IF EXISTS custos_audit_no_truncate ON audit_records"))
        conn.execute(
            text(
                "CREATE TRIGGER custos_audit_no_truncate BEFORE TRUNCATE ON audit_records "
                f"FOR EACH STATEMENT EXECUTE FUNCTION custos_audit_immutable('{maintenance}')"
            )
        )
        conn.execute(text(f'REVOKE UPDATE, DELETE, TRUNCATE ON audit_records FROM "{app}"'))
        conn.execute(text(f'GRANT SELECT, INSERT ON audit_records TO "{app}"'))
        conn.execute(text(f'REVOKE TRUNCATE ON transcripts FROM "{app}"'))
        conn.execute(text(f'GRANT SELECT, INSERT, DELETE ON transcripts TO "{app}"'))
        for table in _OTHER_TABLES:
            conn.execute(text(f'REVOKE TRUNCATE ON "{table}" FROM "{app}"'))
            conn.execute(text(f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{table}" TO "{app}"'))
        conn.execute(text(f'GRANT SELECT ON alembic_version TO "{app}"'))
        if maintenance:
            conn.execute(text(f'GRANT SELECT, DELETE ON audit_records TO "{maintenance}"'))
