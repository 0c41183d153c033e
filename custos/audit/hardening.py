"""PostgreSQL hardening: the application role may read and append audit rows, never change or remove them.

:func:`harden_postgres` (run once by the database owner, e.g. ``custos audit harden --app-role custos_app``)

- installs a trigger that refuses every ``UPDATE`` of ``audit_records``, and every ``DELETE`` unless the
  transaction set ``custos.maintenance = 'archive'`` *and* runs as the maintenance role (archiving);
- revokes ``UPDATE``, ``DELETE`` and ``TRUNCATE`` on ``audit_records`` from the application role and grants
  it ``SELECT`` and ``INSERT`` only (plus what it needs on ``transcripts``, which purge deletes);
- optionally grants the maintenance role ``SELECT`` and ``DELETE`` for archiving.

The grants stop the application role; the trigger also stops the table owner and anyone granted too much by
mistake. A superuser can still disable triggers: that is what the signed checkpoints outside the database
are for.
"""

from __future__ import annotations

import re

from sqlalchemy import Engine, text

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
  RAISE EXCEPTION 'audit records are append-only (% refused)', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$$
"""


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
        conn.execute(text(f'REVOKE UPDATE, DELETE, TRUNCATE ON audit_records FROM "{app}"'))
        conn.execute(text(f'GRANT SELECT, INSERT ON audit_records TO "{app}"'))
        conn.execute(text(f'GRANT SELECT, INSERT, DELETE ON transcripts TO "{app}"'))
        conn.execute(text(f'GRANT SELECT ON alembic_version TO "{app}"'))
        if maintenance:
            conn.execute(text(f'GRANT SELECT, DELETE ON audit_records TO "{maintenance}"'))
