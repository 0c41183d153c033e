"""Revision 0007 on a database of the previous release: its idempotency replies get a subject and an expiry.

Runs on SQLite and on the real PostgreSQL. The replies are written as revision 0006's code wrote them: sealed
by master key v1 (envelope format 1), no subject, no expiry. After the upgrade, erasure finds them by subject,
the housekeeping by expiry, the key inventory by master key version, and rewrap reseals them for the subject.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import command

from custos.audit import AuditStore, migrate
from custos.audit.db import alembic_config
from custos.audit.events import AuditEvent
from custos.privacy.envelope import FORMAT_SUBJECT, FORMAT_VERSION, read_header, seal
from custos.privacy.keys import FileKeyProvider
from custos.privacy.replies import (
    erase_subject_replies,
    legacy_reply_aad,
    open_reply,
    purge_expired_replies,
    reply_usage,
    reseal_legacy_replies,
)
from custos.privacy.subject_keys import SubjectKeyStore

KEYS = FileKeyProvider.generate()
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _upgrade_to(engine: sa.Engine, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def _request_record(store: AuditStore, subject_ref: str | None) -> str:
    event = AuditEvent(
        event_type="generate",
        phase="request",
        start_time=T0,
        end_time=T0,
        actor="crm",
        rpc="Generate",
        status="OK",
        subject_ref=subject_ref,
    )
    return store.append(event).id


def _legacy_row(conn: sa.Connection, key_ref: str, request_id: str | None, document: bytes | None) -> None:
    blob = None if document is None else seal(document, aad=legacy_reply_aad(key_ref), keys=KEYS)
    # As the UTCDateTime columns store them: timestamptz on PostgreSQL, naive UTC text on SQLite.
    when: object = T0 if conn.dialect.name == "postgresql" else T0.strftime("%Y-%m-%d %H:%M:%S.%f")
    conn.execute(
        sa.text(
            "INSERT INTO idempotency_keys (key_ref, request_digest, request_id, response, created_at, "
            "completed_at) VALUES (:ref, 'digest', :rid, :blob, :created, :completed)"
        ),
        {
            "ref": key_ref,
            "rid": request_id,
            "blob": blob,
            "created": when,
            "completed": None if document is None else when,
        },
    )


def test_previous_release_replies_are_found_by_subject_expiry_and_rewrap(
    engine_factory: Callable[..., sa.Engine],
) -> None:
    engine = engine_factory()
    _upgrade_to(engine, "0006")
    store = AuditStore(engine)
    subject_keys = SubjectKeyStore(engine, KEYS)
    subject_keys.get_or_create("subj-a")
    request_a = _request_record(store, "subj-a")
    request_b = _request_record(store, "subj-b")
    with engine.begin() as conn:
        _legacy_row(conn, "ref-a", request_a, b'{"text": "answer for a"}')
        _legacy_row(conn, "ref-b", request_b, b'{"text": "answer for b"}')
        _legacy_row(conn, "ref-pending", None, None)

    migrate(engine)

    with engine.connect() as conn:
        rows = {
            r.key_ref: r
            for r in conn.execute(
                sa.text("SELECT key_ref, subject_ref, format_version, key_version FROM idempotency_keys")
            )
        }
    assert {k: (r.subject_ref, r.format_version, r.key_version) for k, r in rows.items()} == {
        "ref-a": ("subj-a", FORMAT_VERSION, 1),
        "ref-b": ("subj-b", FORMAT_VERSION, 1),
        "ref-pending": (None, None, None),
    }
    assert reply_usage(engine).legacy_by_master_version == {1: 2}

    # Expiry: completion + the default TTL (24 h); nothing is purged before, everything after.
    assert purge_expired_replies(engine, now=T0 + timedelta(hours=23)) == 0

    # Rewrap: A's reply is resealed for A and still opens; B's subject has no key any more, so it goes.
    result = reseal_legacy_replies(engine, KEYS, subject_keys)
    assert (result.resealed, result.dropped) == (1, 1)
    with engine.connect() as conn:
        blob = conn.execute(sa.text("SELECT response FROM idempotency_keys WHERE key_ref = 'ref-a'")).scalar()
    assert read_header(bytes(blob)).format_version == FORMAT_SUBJECT
    opened = open_reply(
        bytes(blob), key_ref="ref-a", subject_ref="subj-a", keys=KEYS, subject_keys=subject_keys
    )
    assert opened == b'{"text": "answer for a"}'
    usage = reply_usage(engine)
    assert (usage.subject_sealed, usage.legacy) == (1, 0)

    # Erasure by subject; the pending claim of the previous release expires with the rest.
    assert erase_subject_replies(engine, "subj-a") == 1
    assert purge_expired_replies(engine, now=T0 + timedelta(hours=25)) == 1
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM idempotency_keys")).scalar() == 0
