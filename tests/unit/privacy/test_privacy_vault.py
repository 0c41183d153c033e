"""Conversation vault: sealed at rest, per-row binding, expiry, and consistent concurrent updates."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from custos.audit import default_sqlite_url, make_engine, migrate
from custos.audit.models import ConversationVaultRow
from custos.privacy.errors import DecryptionFailed
from custos.privacy.keys import FileKeyProvider
from custos.privacy.pseudonymize import PlaceholderMap
from custos.privacy.vault import ConversationVault
from custos.testing.audit import postgres_schema, schema_url

KEYS = FileKeyProvider(primary=1, master_keys={1: b"k" * 32}, index_key=b"i" * 32)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        db = make_engine(default_sqlite_url(tmp_path))
        migrate(db)
        yield db
        db.dispose()
        return
    with postgres_schema("custos_vault_test") as schema:
        db = make_engine(schema_url(schema))
        try:
            migrate(db)
            yield db
        finally:
            db.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def add(entity_type: str, value: str) -> object:
    return lambda mapping: mapping.placeholder_for(entity_type, value)


def test_same_value_same_placeholder_across_calls(engine: sa.Engine) -> None:
    vault = ConversationVault(engine, KEYS, ttl_seconds=3600)
    first, _ = vault.update("conv-a", add("PERSON", "John Smith"))
    second, _ = vault.update("conv-a", add("PERSON", "Maria Garcia"))
    again, update = vault.update("conv-a", add("PERSON", "john  SMITH"))
    assert (first, second, again) == ("<PERSON_1>", "<PERSON_2>", "<PERSON_1>")
    assert update.version == 3
    assert vault.load("conv-a").value_of("<PERSON_2>") == "Maria Garcia"


def test_conversations_do_not_share(engine: sa.Engine) -> None:
    vault = ConversationVault(engine, KEYS, ttl_seconds=3600)
    vault.update("conv-a", add("PERSON", "John Smith"))
    other, _ = vault.update("conv-b", add("PERSON", "Maria Garcia"))
    assert other == "<PERSON_1>"
    assert vault.load("conv-b").value_of("<PERSON_1>") == "Maria Garcia"
    assert vault.load("conv-c").value_of("<PERSON_1>") is None


def test_row_is_encrypted_at_rest_and_bound_to_its_row(engine: sa.Engine) -> None:
    vault = ConversationVault(engine, KEYS, ttl_seconds=3600)
    vault.update("conv-a", add("EMAIL_ADDRESS", "john.smith@example.org"))
    vault.update("conv-b", add("PERSON", "Maria Garcia"))
    with engine.begin() as conn:
        rows = {r.conversation_ref: r for r in conn.execute(sa.select(ConversationVaultRow))}
        for row in rows.values():
            assert b"john.smith" not in row.ciphertext and b"Maria" not in row.ciphertext
            assert row.ciphertext.startswith(b"CSTE")
        # Copy conv-a's blob into conv-b's row: it must not open there.
        conn.execute(
            sa.update(ConversationVaultRow)
            .where(ConversationVaultRow.conversation_ref == "conv-b")
            .values(ciphertext=rows["conv-a"].ciphertext, version=rows["conv-a"].version)
        )
    with pytest.raises(DecryptionFailed):
        vault.load("conv-b")


def test_replayed_older_version_fails(engine: sa.Engine) -> None:
    vault = ConversationVault(engine, KEYS, ttl_seconds=3600)
    vault.update("conv-a", add("PERSON", "John Smith"))
    with engine.connect() as conn:
        old = conn.execute(sa.select(ConversationVaultRow.ciphertext)).scalar_one()
    vault.update("conv-a", add("PERSON", "Maria Garcia"))
    with engine.begin() as conn:
        conn.execute(sa.update(ConversationVaultRow).values(ciphertext=old))
    with pytest.raises(DecryptionFailed):
        vault.load("conv-a")


def test_expired_map_is_forgotten_and_purged(engine: sa.Engine) -> None:
    clock = Clock()
    vault = ConversationVault(engine, KEYS, ttl_seconds=60, clock=clock)
    vault.update("conv-a", add("PERSON", "John Smith"))
    clock.now += timedelta(seconds=30)
    assert vault.load("conv-a").value_of("<PERSON_1>") == "John Smith"
    clock.now += timedelta(seconds=61)
    assert len(vault.load("conv-a")) == 0
    placeholder, update = vault.update("conv-a", add("PERSON", "Maria Garcia"))
    assert placeholder == "<PERSON_1>" and update.expired
    vault.update("conv-b", add("PERSON", "X Y"))
    clock.now += timedelta(seconds=61)
    assert vault.purge_expired() == 2


def test_concurrent_updates_stay_consistent(engine: sa.Engine) -> None:
    vault = ConversationVault(engine, KEYS, ttl_seconds=3600)
    names = [f"Person Number{i}" for i in range(12)]
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def worker(worker_id: int) -> None:
        try:
            barrier.wait()
            for i in range(worker_id % 3, len(names), 2):
                placeholder, _ = vault.update("conv-a", add("PERSON", names[i]))
                previous = results.setdefault(i, placeholder)
                assert previous == placeholder
        except BaseException as err:  # collected and re-raised in the main thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    final: PlaceholderMap = vault.load("conv-a")
    assert len(final) == len(results)
    for i, placeholder in results.items():
        assert final.value_of(placeholder) == names[i]
    assert sorted(final.placeholders()) == sorted(f"<PERSON_{n}>" for n in range(1, len(results) + 1))
