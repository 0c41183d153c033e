from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from custos.audit import AuditStore, migrate
from custos.audit.db import alembic_config
from custos.audit.models import Base
from custos.testing.audit import assert_linear_chain, event


def _diff(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, Base.metadata))


def test_migrated_schema_matches_the_models(engine: sa.Engine) -> None:
    assert _diff(engine) == []


def test_migrated_schema_has_the_named_constraints_and_indexes(engine: sa.Engine) -> None:
    inspector = sa.inspect(engine)
    assert set(inspector.get_table_names()) >= {"audit_records", "transcripts", "alembic_version"}
    assert inspector.get_pk_constraint("audit_records")["constrained_columns"] == ["seq"]
    uniques = {u["name"]: u["column_names"] for u in inspector.get_unique_constraints("audit_records")}
    assert uniques == {"uq_audit_records_id": ["id"], "uq_audit_records_prev_hash": ["prev_hash"]}
    checks = {c["name"] for c in inspector.get_check_constraints("audit_records")}
    assert checks == {"ck_audit_records_phase", "ck_audit_records_seq_positive"}
    indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("audit_records")}
    assert indexes["ix_audit_records_request_id"] == ["request_id"]
    # Keyset pages newest first: equality filter and order in one index (revision 0008).
    for column in ("event_type", "actor", "status", "subject_ref", "conversation_ref", "purpose"):
        assert indexes[f"ix_audit_records_{column}_seq"] == [column, "seq"]
        assert f"ix_audit_records_{column}" not in indexes


def test_seq_is_never_generated_by_the_database(engine: sa.Engine) -> None:
    seq = next(c for c in sa.inspect(engine).get_columns("audit_records") if c["name"] == "seq")
    assert seq.get("default") is None and not seq.get("identity")
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            assert conn.scalar(sa.text("SELECT pg_get_serial_sequence('audit_records', 'seq')")) is None
        else:  # BIGINT, not INTEGER PRIMARY KEY: not an alias of SQLite's auto-assigned rowid
            ddl = conn.scalar(sa.text("SELECT sql FROM sqlite_master WHERE name = 'audit_records'"))
            assert "seq BIGINT NOT NULL" in ddl and "AUTOINCREMENT" not in ddl.upper()


def test_migrate_is_idempotent_and_at_head(engine: sa.Engine) -> None:
    migrate(engine)
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with engine.connect() as conn:
        assert head is not None
        assert MigrationContext.configure(conn).get_current_revision() == head


def test_downgrade_to_base_and_upgrade_again(engine: sa.Engine) -> None:
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert not {"audit_records", "transcripts"} & set(sa.inspect(engine).get_table_names())
    migrate(engine)
    assert _diff(engine) == []


def test_migrate_does_not_depend_on_the_working_directory(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine_factory: object
) -> None:
    monkeypatch.chdir(tmp_path)
    from custos.audit import make_engine

    engine = make_engine(db_url)
    try:
        migrate(engine)
        store = AuditStore(engine)
        store.append(event())
        assert_linear_chain(store, 1)
    finally:
        engine.dispose()


def test_migrations_ship_as_package_data() -> None:
    from importlib import resources

    root = resources.files("custos.audit")
    assert (root / "alembic.ini").is_file()
    assert (root / "migrations" / "env.py").is_file()
    assert any(p.name.endswith(".py") for p in (root / "migrations" / "versions").iterdir())
