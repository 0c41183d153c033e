"""The key hierarchy: envelope format 2, subject keys, retired versions, rewrap, erasure and its ledger."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from custos.audit import AuditStore, default_sqlite_url, make_engine, migrate
from custos.audit.models import ConversationVaultRow, SubjectKeyRow, TranscriptRow
from custos.privacy.envelope import (
    FORMAT_SUBJECT,
    WRAP_SUBJECT,
    RowBinding,
    SubjectKey,
    open_for_subject,
    read_header,
    seal,
    seal_for_subject,
)
from custos.privacy.erasure import ErasureLedger, SubjectService
from custos.privacy.errors import DecryptionFailed, KeyNotFound, KeyRetired, SubjectKeyMissing
from custos.privacy.keys import FileKeyProvider, RetiringKeyProvider
from custos.privacy.subject_keys import SubjectKeyStore
from custos.privacy.transcripts import open_transcript, seal_transcript, transcript_aad
from custos.privacy.vault import ConversationVault, SubjectMismatch
from custos.testing.audit import all_records

KEY_1 = b"\x01" * 32
KEY_2 = b"\x02" * 32
INDEX = b"i" * 32
PLAINTEXT = b'{"messages": "John Smith asked about order A-12345"}'
SUBJECT_KEY = SubjectKey(subject_ref="subject-a", version=1, key=b"s" * 32)
BINDING = RowBinding(table="transcripts", record_id="row-1", subject_ref="subject-a")


def provider(primary: int = 1, versions: tuple[int, ...] = (1,)) -> FileKeyProvider:
    material = {1: KEY_1, 2: KEY_2, 3: b"\x03" * 32}
    return FileKeyProvider(primary=primary, master_keys={v: material[v] for v in versions}, index_key=INDEX)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = make_engine(default_sqlite_url(tmp_path))
    migrate(engine)
    yield engine
    engine.dispose()


# ---- envelope format 2 ------------------------------------------------------------------------------


def test_subject_envelope_round_trip_and_header() -> None:
    blob = seal_for_subject(PLAINTEXT, binding=BINDING, subject_key=SUBJECT_KEY)
    header = read_header(blob)
    assert (header.format_version, header.wrap_kind, header.key_version) == (FORMAT_SUBJECT, WRAP_SUBJECT, 1)
    assert open_for_subject(blob, binding=BINDING, subject_key=SUBJECT_KEY) == PLAINTEXT
    assert b"John" not in blob


def test_ciphertexts_swapped_between_rows_fail() -> None:
    other = RowBinding(table="transcripts", record_id="row-2", subject_ref="subject-a")
    blob_1 = seal_for_subject(b"row one", binding=BINDING, subject_key=SUBJECT_KEY)
    blob_2 = seal_for_subject(b"row two", binding=other, subject_key=SUBJECT_KEY)
    with pytest.raises(DecryptionFailed):
        open_for_subject(blob_1, binding=other, subject_key=SUBJECT_KEY)
    with pytest.raises(DecryptionFailed):
        open_for_subject(blob_2, binding=BINDING, subject_key=SUBJECT_KEY)


@pytest.mark.parametrize(
    "binding",
    [
        RowBinding(table="conversation_vault", record_id="row-1", subject_ref="subject-a"),
        RowBinding(table="transcripts", record_id="row-1", subject_ref="subject-b"),
    ],
    ids=["other-table", "other-subject"],
)
def test_other_table_or_subject_fails(binding: RowBinding) -> None:
    blob = seal_for_subject(PLAINTEXT, binding=BINDING, subject_key=SUBJECT_KEY)
    impostor = SubjectKey(subject_ref=binding.subject_ref, version=1, key=SUBJECT_KEY.key)
    with pytest.raises(DecryptionFailed):
        open_for_subject(blob, binding=binding, subject_key=impostor)


# Regions of a format-2 blob of PLAINTEXT: fixed header 12, wrapped data key 40, nonce 12, ciphertext, tag.
REGIONS = [
    ("header", 0, 12),
    ("wrapped-data-key", 12, 52),
    ("nonce", 52, 64),
    ("ciphertext", 64, 64 + len(PLAINTEXT)),
    ("tag", 64 + len(PLAINTEXT), None),
]


@pytest.mark.parametrize(("region", "start", "end"), REGIONS, ids=[r[0] for r in REGIONS])
def test_flipped_bit_anywhere_fails(region: str, start: int, end: int | None) -> None:
    blob = seal_for_subject(PLAINTEXT, binding=BINDING, subject_key=SUBJECT_KEY)
    stop = len(blob) if end is None else end
    for index in range(start, stop):
        for bit in (0, 3, 7):
            tampered = bytearray(blob)
            tampered[index] ^= 1 << bit
            with pytest.raises(DecryptionFailed):
                open_for_subject(bytes(tampered), binding=BINDING, subject_key=SUBJECT_KEY)


# ---- subject keys -----------------------------------------------------------------------------------


def test_subject_key_is_stored_only_wrapped_and_reused(db: sa.Engine) -> None:
    store = SubjectKeyStore(db, provider())
    first = store.get_or_create("subject-a")
    assert store.get_or_create("subject-a") == first == store.get("subject-a")
    assert store.get_or_create("subject-b").key != first.key
    with db.connect() as conn:
        row = conn.execute(sa.select(SubjectKeyRow).where(SubjectKeyRow.subject_ref == "subject-a")).one()
    assert row.master_version == 1 and first.key not in row.wrapped_key and len(row.wrapped_key) == 40


def test_flipped_bit_in_wrapped_subject_key_fails(db: sa.Engine) -> None:
    store = SubjectKeyStore(db, provider())
    store.get_or_create("subject-a")
    with db.connect() as conn:
        wrapped = conn.execute(sa.select(SubjectKeyRow.wrapped_key)).scalar_one()
    for index in range(len(wrapped)):
        tampered = bytearray(wrapped)
        tampered[index] ^= 0x10
        with db.begin() as conn:
            conn.execute(sa.update(SubjectKeyRow).values(wrapped_key=bytes(tampered)))
        with pytest.raises(DecryptionFailed, match="master key version 1"):
            store.get("subject-a")


def test_unknown_master_version_is_refused_with_a_clear_error(db: sa.Engine) -> None:
    SubjectKeyStore(db, provider(primary=2, versions=(1, 2))).get_or_create("subject-a")
    with pytest.raises(KeyNotFound, match=r"version 2 is not in the key file .* holds versions \[1\]"):
        SubjectKeyStore(db, provider()).get("subject-a")


def test_retired_master_version_is_refused(db: sa.Engine) -> None:
    SubjectKeyStore(db, provider()).get_or_create("subject-a")
    retiring = RetiringKeyProvider(provider(primary=2, versions=(1, 2)), min_version=2)
    with pytest.raises(KeyRetired, match="version 1 is retired"):
        SubjectKeyStore(db, retiring).get("subject-a")
    # A format-1 envelope on a retired version is refused the same way.
    old = seal(b"x", aad=b"row", keys=provider())
    from custos.privacy.envelope import open_sealed

    with pytest.raises(KeyRetired):
        open_sealed(old, aad=b"row", keys=retiring)


def test_primary_below_minimum_is_refused() -> None:
    with pytest.raises(KeyRetired, match="promote a newer version"):
        RetiringKeyProvider(provider(), min_version=2)


def test_rewrap_keeps_plaintexts_and_moves_every_version(db: sa.Engine) -> None:
    old = SubjectKeyStore(db, provider())
    blobs = {}
    for n in range(7):
        key = old.get_or_create(f"subject-{n}")
        binding = RowBinding(table="transcripts", record_id=f"t{n}", subject_ref=key.subject_ref)
        blobs[n] = (binding, seal_for_subject(f"plain {n}".encode(), binding=binding, subject_key=key))

    rotated = provider(primary=2, versions=(1, 2))
    store = SubjectKeyStore(db, rotated)
    assert store.pending_rewrap() == 7

    # Interrupted after the first batch, then resumed: nothing is done twice, nothing is left behind.
    class Stop(Exception):
        pass

    def stop(_: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        store.rewrap(batch_size=3, progress=stop)
    assert store.usage() == {1: 4, 2: 3}
    assert store.rewrap(batch_size=3) == 4
    assert store.usage() == {2: 7} and store.pending_rewrap() == 0

    # Version 1 can now be retired: every plaintext still opens with version 2 alone.
    retired = SubjectKeyStore(db, RetiringKeyProvider(rotated, min_version=2))
    only_v2 = SubjectKeyStore(db, provider(primary=2, versions=(2,)))
    for n, (binding, blob) in blobs.items():
        for reader in (retired, only_v2):
            key = reader.get(f"subject-{n}")
            assert open_for_subject(blob, binding=binding, subject_key=key) == f"plain {n}".encode()


# ---- transcripts: both formats ----------------------------------------------------------------------


def test_first_format_transcripts_stay_readable(db: sa.Engine) -> None:
    keys = provider()
    v1 = seal(PLAINTEXT, aad=transcript_aad("t-old", "conv-ref"), keys=keys)
    store = SubjectKeyStore(db, keys)
    assert (
        open_transcript(
            v1,
            transcript_id="t-old",
            conversation_ref="conv-ref",
            subject_ref="s",
            keys=keys,
            subject_keys=store,
        )
        == PLAINTEXT
    )
    v2 = seal_transcript(PLAINTEXT, transcript_id="t-new", subject_key=store.get_or_create("s"))
    assert (
        open_transcript(
            v2,
            transcript_id="t-new",
            conversation_ref="conv-ref",
            subject_ref="s",
            keys=keys,
            subject_keys=store,
        )
        == PLAINTEXT
    )
    with pytest.raises(DecryptionFailed):
        open_transcript(
            v2,
            transcript_id="t-old",
            conversation_ref="conv-ref",
            subject_ref="s",
            keys=keys,
            subject_keys=store,
        )


# ---- erasure ----------------------------------------------------------------------------------------


def _populate(db: sa.Engine, service: SubjectService, keys: FileKeyProvider) -> dict[str, str]:
    """One transcript and one vault row for subjects A and B; returns transcript id by subject."""
    vault = ConversationVault(db, keys, ttl_seconds=3600, subject_keys=service.subject_keys)
    ids = {}
    for subject in ("subject-a", "subject-b"):
        vault.update(f"conv-{subject}", lambda m: m.placeholder_for("PERSON", "John"), subject_ref=subject)
        transcript_id = f"t-{subject}"
        blob = seal_transcript(
            PLAINTEXT, transcript_id=transcript_id, subject_key=service.subject_keys.get_or_create(subject)
        )
        with db.begin() as conn:
            conn.execute(
                sa.insert(TranscriptRow).values(
                    id=transcript_id,
                    created_at=sa.func.now(),
                    conversation_ref=f"conv-{subject}",
                    subject_ref=subject,
                    key_version=1,
                    format_version=2,
                    ciphertext=blob,
                )
            )
        ids[subject] = transcript_id
    return ids


def _read(db: sa.Engine, service: SubjectService, keys: FileKeyProvider, transcript_id: str) -> bytes:
    with db.connect() as conn:
        row = conn.execute(sa.select(TranscriptRow).where(TranscriptRow.id == transcript_id)).one()
    return open_transcript(
        row.ciphertext,
        transcript_id=row.id,
        conversation_ref=row.conversation_ref,
        subject_ref=row.subject_ref,
        keys=keys,
        subject_keys=service.subject_keys,
    )


def test_erasing_a_leaves_a_unreadable_b_readable_and_the_chain_valid(db: sa.Engine, tmp_path: Path) -> None:
    keys = provider()
    audit = AuditStore(db)
    ledger = ErasureLedger(tmp_path / "erasure-ledger.jsonl")
    service = SubjectService(db, keys, audit, ledger)
    ids = _populate(db, service, keys)
    vault = ConversationVault(db, keys, ttl_seconds=3600, subject_keys=service.subject_keys)
    assert len(vault.load("conv-subject-a")) == 1

    result = service.erase("subject-a", actor="os:operator", rpc="cli:subjects erase")

    assert result.subject_key_destroyed and result.vault_rows_deleted == 1
    assert result.transcripts_unreadable == 1
    with pytest.raises(SubjectKeyMissing):
        _read(db, service, keys, ids["subject-a"])
    assert len(vault.load("conv-subject-a")) == 0
    assert _read(db, service, keys, ids["subject-b"]) == PLAINTEXT
    assert len(vault.load("conv-subject-b")) == 1

    report = audit.verify()
    assert report.ok, report.reason
    erased = [r for r in all_records(audit) if r.event_type == "erase_subject"]
    assert [(r.subject_ref, r.actor, r.id) for r in erased] == [
        ("subject-a", "os:operator", result.record_id)
    ]
    assert erased[0].details["transcripts_unreadable"] == 1
    assert ledger.subject_refs() == ["subject-a"]


def test_ledger_reapplied_after_a_database_restore(db: sa.Engine, tmp_path: Path) -> None:
    keys = provider()
    service = SubjectService(db, keys, AuditStore(db), ErasureLedger(tmp_path / "erasure-ledger.jsonl"))
    ids = _populate(db, service, keys)
    database_file = Path(db.url.database or "")
    db.dispose()
    backup = tmp_path / "backup.db"
    shutil.copy(database_file, backup)

    service.erase("subject-a", actor="os:operator", rpc="cli:subjects erase")
    db.dispose()
    shutil.copy(backup, database_file)  # the operator restores last night's backup
    assert service.subject_keys.get("subject-a")  # resurrected by the restore ...

    assert service.reapply_ledger() == 2  # ... until the ledger is re-applied (key + vault row)
    with pytest.raises(SubjectKeyMissing):
        _read(db, service, keys, ids["subject-a"])
    assert _read(db, service, keys, ids["subject-b"]) == PLAINTEXT
    with db.connect() as conn:
        refs = conn.execute(sa.select(ConversationVaultRow.subject_ref)).scalars().all()
    assert refs == ["subject-b"]


def test_a_vault_row_keeps_the_subject_it_was_created_with(db: sa.Engine) -> None:
    keys = provider()
    store = SubjectKeyStore(db, keys)
    vault = ConversationVault(db, keys, ttl_seconds=3600, subject_keys=store)
    first, _ = vault.update("conv", lambda m: m.placeholder_for("PERSON", "John"), subject_ref="subject-a")
    again, _ = vault.update("conv", lambda m: m.placeholder_for("PERSON", "John"), subject_ref="subject-a")
    # The caller names another subject mid-conversation: refused, the map stays sealed for the first one.
    with pytest.raises(SubjectMismatch):
        vault.update("conv", lambda m: m.placeholder_for("PERSON", "Mary"), subject_ref="subject-b")
    # Nothing is sealed under the master key alone while subject keys are in use.
    with pytest.raises(ValueError, match="subject_ref"):
        vault.update("conv", lambda m: m.placeholder_for("PERSON", "Mary"))
    assert first == again
    with db.connect() as conn:
        row = conn.execute(sa.select(ConversationVaultRow)).one()
    assert (row.subject_ref, row.version) == ("subject-a", 2)
    assert read_header(row.ciphertext).format_version == FORMAT_SUBJECT
    assert len(vault.load("conv")) == 1


def test_a_master_key_vault_row_is_resealed_for_the_subject_of_its_next_update(db: sa.Engine) -> None:
    keys = provider()
    legacy = ConversationVault(db, keys, ttl_seconds=3600)  # what an earlier release wrote
    legacy.update("conv", lambda m: m.placeholder_for("PERSON", "John"))
    vault = ConversationVault(db, keys, ttl_seconds=3600, subject_keys=SubjectKeyStore(db, keys))
    vault.update("conv", lambda m: m.placeholder_for("PERSON", "Mary"), subject_ref="subject-a")
    with db.connect() as conn:
        row = conn.execute(sa.select(ConversationVaultRow)).one()
    assert row.subject_ref == "subject-a" and read_header(row.ciphertext).format_version == FORMAT_SUBJECT
    assert len(vault.load("conv")) == 2


def test_an_expired_map_is_forgotten_with_its_subject(db: sa.Engine) -> None:
    keys = provider()
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    vault = ConversationVault(
        db, keys, ttl_seconds=60, subject_keys=SubjectKeyStore(db, keys), clock=lambda: now[0]
    )
    vault.update("conv", lambda m: m.placeholder_for("PERSON", "John"), subject_ref="subject-a")
    now[0] += timedelta(seconds=61)
    _, update = vault.update("conv", lambda m: m.placeholder_for("PERSON", "Mary"), subject_ref="subject-b")
    assert update.expired and update.entries == 1


def test_staged_rotation_keeps_replicas_without_the_new_version_reading(db: sa.Engine) -> None:
    old_replica = provider()  # has only version 1
    staged = provider().with_new_version(promote=False)  # version 2 added everywhere, not yet primary
    assert staged.versions == [1, 2] and staged.current_version == 1
    SubjectKeyStore(db, staged).get_or_create("written-while-staged")
    assert SubjectKeyStore(db, old_replica).get("written-while-staged")
    promoted = staged.with_primary(2)
    SubjectKeyStore(db, promoted).get_or_create("written-after-promotion")
    with pytest.raises(KeyNotFound):
        SubjectKeyStore(db, old_replica).get("written-after-promotion")


def test_reapplying_the_ledger_destroys_only_what_predates_the_erasure(db: sa.Engine, tmp_path: Path) -> None:
    keys = provider()
    ledger = ErasureLedger(tmp_path / "erasure-ledger.jsonl")
    service = SubjectService(db, keys, AuditStore(db), ledger)
    erased_at = datetime(2026, 3, 1, tzinfo=UTC)
    ledger.append("subject-a", record_id="r1", erased_at=erased_at)
    ledger.append("subject-b", record_id="r2", erased_at=erased_at)
    for subject, created in (("subject-a", erased_at - timedelta(days=1)), ("subject-b", erased_at)):
        SubjectKeyStore(db, keys, clock=lambda created=created: created).get_or_create(subject)
    # A's key predates its erasure (a restored backup); B's was made when B came back afterwards.
    assert service.reapply_ledger() == 1
    with db.connect() as conn:
        assert conn.execute(sa.select(SubjectKeyRow.subject_ref)).scalars().all() == ["subject-b"]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["2026-03-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00"], datetime(2026, 3, 1, tzinfo=UTC)),
        (["2026-03-01T00:00:00", None], None),  # a line of unknown time covers everything
        ([None, "2026-03-01T00:00:00+00:00"], None),
        (["not a time"], None),
    ],
    ids=["latest-wins", "unknown-later", "unknown-first", "unreadable"],
)
def test_ledger_keeps_the_latest_erasure_per_subject(
    tmp_path: Path, lines: list[str | None], expected: datetime | None
) -> None:
    path = tmp_path / "erasure-ledger.jsonl"
    path.write_text(
        "".join(
            json.dumps({"subject_ref": "s", "audit_record": "r", **({"erased_at": t} if t else {})}) + "\n"
            for t in lines
        )
    )
    assert ErasureLedger(path).last_erasures() == {"s": expected}
