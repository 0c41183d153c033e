from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from custos.audit import (
    AuditStore,
    CanonicalizationError,
    ChainConflict,
    DuplicateId,
    InvalidQuery,
    RecordNotFound,
    SealedTranscript,
    TranscriptStore,
)
from custos.audit import store as store_module
from custos.audit.chain import GENESIS_HASH, ChainHead, compute_row_hash
from custos.audit.models import AuditRecordRow
from custos.testing.audit import T0, all_records, assert_linear_chain, completion, event


def test_first_append_links_to_genesis_and_get_returns_the_same_record(store: AuditStore) -> None:
    record = store.append(event())
    assert (record.seq, record.prev_hash) == (1, GENESIS_HASH)
    assert record.row_hash == compute_row_hash(GENESIS_HASH, record.payload)
    assert record.request_id == record.id and uuid.UUID(record.id).version == 4
    assert record.payload_json == record.payload.decode()
    assert record.details == {"pii": [{"type": "PERSON", "start": 0, "end": 4, "score": 0.85}], "tokens": 12}
    assert store.get(record.id) == record


def test_typed_fields_round_trip_and_times_come_back_aware_utc(store: AuditStore) -> None:
    cest = timezone(timedelta(hours=2))
    start = datetime(2024, 5, 1, 14, 0, 0, 7, tzinfo=cest)
    stored = store.get(store.append(event(start_time=start, end_time=start, model=None)).id)
    assert stored.start_time == start and stored.start_time.tzinfo == UTC
    assert stored.start_time.hour == 12 and stored.start_time.microsecond == 7
    assert (stored.event_type, stored.phase, stored.model) == ("generate", "request", None)
    assert json.loads(stored.payload_json)["start_time"] == "2024-05-01T12:00:00.000007Z"


def test_completion_points_at_its_request_and_closes_it(store: AuditStore) -> None:
    request = store.append(event())
    assert store.verify().incomplete == 1
    done = store.append(completion(request, status="OK"))
    assert (done.seq, done.prev_hash, done.request_id) == (2, request.row_hash, request.id)
    report = store.verify()
    assert (report.ok, report.count, report.incomplete) == (True, 2, 0)


def test_caller_chosen_id_is_used_and_a_duplicate_is_refused(store: AuditStore) -> None:
    chosen = str(uuid.uuid4())
    assert store.append(event(request_id=chosen)).id == chosen
    with pytest.raises(DuplicateId):
        store.append(event(record_id=chosen))
    assert_linear_chain(store, 1)


def test_unserialisable_details_write_nothing(store: AuditStore) -> None:
    store.append(event())
    with pytest.raises(CanonicalizationError):
        store.append(event(details={"when": datetime(2024, 1, 1)}))
    assert_linear_chain(store, 1)


def test_get_unknown_id_raises_record_not_found(store: AuditStore) -> None:
    with pytest.raises(RecordNotFound):
        store.get(str(uuid.uuid4()))


def test_append_many_commits_all_in_order(store: AuditStore) -> None:
    records = store.append_many([event(actor=f"svc:{i}") for i in range(5)])
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert [r.actor for r in assert_linear_chain(store, 5)] == [f"svc:{i}" for i in range(5)]


def test_append_many_is_all_or_nothing(store: AuditStore) -> None:
    taken = store.append(event()).id
    with pytest.raises(DuplicateId):
        store.append_many([event(actor="first"), event(record_id=taken)])
    assert_linear_chain(store, 1)


def test_head_tracks_the_last_record(store: AuditStore) -> None:
    assert store.head() == ChainHead(0, GENESIS_HASH)
    last = store.append_many([event(), event()])[-1]
    assert store.head() == ChainHead(2, last.row_hash)


# --- query -------------------------------------------------------------------------------------------------


@pytest.fixture
def populated(store: AuditStore) -> AuditStore:
    """Twelve records: four actors, three event types, one failing status, one hour apart."""
    specs: list[dict[str, Any]] = []
    for i in range(12):
        specs.append(
            {
                "actor": f"svc:{i % 4}",
                "event_type": ["generate", "classify", "denied"][i % 3],
                "phase": "event",
                "status": "PERMISSION_DENIED" if i % 3 == 2 else "OK",
                "start_time": T0 + timedelta(hours=i),
                "end_time": T0 + timedelta(hours=i, seconds=1),
                "subject_ref": "subject-a" if i < 6 else "subject-b",
            }
        )
    store.append_many([event(**spec) for spec in specs])
    return store


@pytest.mark.parametrize(
    ("filters", "expected_seqs"),
    [
        pytest.param({}, list(range(12, 0, -1)), id="no filter newest first"),
        pytest.param({"event_type": "classify"}, [11, 8, 5, 2], id="event_type"),
        pytest.param({"actor": "svc:1"}, [10, 6, 2], id="actor"),
        pytest.param({"status": "PERMISSION_DENIED"}, [12, 9, 6, 3], id="status"),
        pytest.param({"since": T0 + timedelta(hours=9)}, [12, 11, 10], id="since inclusive"),
        pytest.param({"until": T0 + timedelta(hours=2)}, [2, 1], id="until exclusive"),
        pytest.param(
            {"since": T0 + timedelta(hours=3), "until": T0 + timedelta(hours=7), "event_type": "generate"},
            [7, 4],
            id="combined",
        ),
        pytest.param({"subject_ref": "subject-b", "actor": "svc:0"}, [9], id="subject and actor"),
        pytest.param({"phase": "request"}, [], id="phase none match"),
        pytest.param({"actor": "nobody"}, [], id="no match"),
    ],
)
def test_query_filters(populated: AuditStore, filters: dict[str, Any], expected_seqs: list[int]) -> None:
    records, token = populated.query(**filters)
    assert [r.seq for r in records] == expected_seqs
    assert token is None


def test_query_by_request_id_finds_request_and_completion(store: AuditStore) -> None:
    request = store.append(event())
    store.append(event())
    done = store.append(completion(request))
    records, _ = store.query(request_id=request.id)
    assert [r.id for r in records] == [done.id, request.id]


@pytest.mark.parametrize("page_size", [1, 5, 11, 12, 13])
def test_pagination_walks_every_record_once_newest_first(populated: AuditStore, page_size: int) -> None:
    seen: list[int] = []
    token: str | None = None
    pages = 0
    while True:
        page, token = populated.query(page_size=page_size, page_token=token)
        pages += 1
        assert len(page) <= page_size
        seen.extend(r.seq for r in page)
        if token is None:
            break
    assert seen == list(range(12, 0, -1))
    assert pages == -(-12 // page_size)


def test_pagination_is_stable_while_records_are_appended(populated: AuditStore) -> None:
    first, token = populated.query(page_size=5)
    populated.append(event())
    second, _ = populated.query(page_size=5, page_token=token)
    assert [r.seq for r in first + second] == list(range(12, 2, -1))


def test_pagination_keeps_filters(populated: AuditStore) -> None:
    first, token = populated.query(event_type="denied", page_size=3)
    rest, end = populated.query(event_type="denied", page_size=3, page_token=token)
    assert [r.seq for r in first + rest] == [12, 9, 6, 3] and end is None


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({"page_token": "not a token!"}, "page_token is malformed", id="garbage token"),
        pytest.param({"page_token": "czA"}, "page_token is malformed", id="token seq 0"),
        pytest.param({"page_token": "eDU"}, "page_token is malformed", id="wrong prefix"),
        pytest.param({"page_token": ""}, "page_token is malformed", id="empty token"),
        pytest.param({"page_size": 0}, "page_size", id="page size 0"),
        pytest.param({"page_size": 1001}, "page_size", id="page size too big"),
        pytest.param({"since": datetime(2024, 1, 1)}, "since must be timezone-aware", id="naive since"),
        pytest.param({"until": datetime(2024, 1, 1)}, "until must be timezone-aware", id="naive until"),
        pytest.param({"event_type": "nope"}, "event_type", id="unknown event type"),
        pytest.param({"phase": "nope"}, "phase", id="unknown phase"),
    ],
)
def test_query_rejects_bad_arguments(store: AuditStore, kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:  # InvalidQuery is a ValueError
        store.query(**kwargs)
    assert isinstance(info.value, InvalidQuery)
    assert info.value.field == next(iter(kwargs))


# --- fork guard --------------------------------------------------------------------------------------------


def test_database_refuses_a_second_record_on_the_same_head(store: AuditStore) -> None:
    first = store.append(event())
    row = {c.name: getattr(first, c.name) for c in AuditRecordRow.__table__.columns}
    forged = {**row, "seq": 2, "id": str(uuid.uuid4())}  # same prev_hash as seq 1: a fork
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(sa.insert(AuditRecordRow), forged)
    assert_linear_chain(store, 1)


def test_stale_head_hits_the_fork_guard_and_the_append_retries(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append(event())
    real_head_of = store_module._head_of
    calls = {"n": 0}

    def stale_once(row: Sequence[Any] | None) -> ChainHead:
        calls["n"] += 1
        return ChainHead(0, GENESIS_HASH) if calls["n"] == 1 else real_head_of(row)

    monkeypatch.setattr(store_module, "_head_of", stale_once)
    record = store.append(event())
    assert record.seq == 2 and calls["n"] == 2
    assert_linear_chain(store, 2)


def test_persistently_stale_head_raises_chain_conflict(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append(event())
    monkeypatch.setattr(store_module, "_head_of", lambda row: ChainHead(0, GENESIS_HASH))
    with pytest.raises(ChainConflict):
        store.append(event())
    monkeypatch.undo()
    assert_linear_chain(store, 1)


# --- transcripts -------------------------------------------------------------------------------------------


def sealed(transcript_id: str | None = None, **overrides: Any) -> SealedTranscript:
    fields: dict[str, Any] = {
        "id": transcript_id or str(uuid.uuid4()),
        "created_at": T0,
        "conversation_ref": "c" * 64,
        "subject_ref": None,
        "key_version": 3,
        "format_version": 1,
        "ciphertext": b"\x00\x01sealed\xff",
    }
    fields.update(overrides)
    return SealedTranscript(**fields)


def test_transcript_put_get_delete(store: AuditStore) -> None:
    transcripts = TranscriptStore(store.engine)
    tid = str(uuid.uuid4())
    transcripts.put(
        transcript_id=tid,
        conversation_ref="conv",
        subject_ref="subj",
        key_version=2,
        format_version=1,
        ciphertext=b"\x00ct\xff",
    )
    got = transcripts.get(tid)
    assert (got.id, got.conversation_ref, got.subject_ref) == (tid, "conv", "subj")
    assert (got.key_version, got.format_version, got.ciphertext) == (2, 1, b"\x00ct\xff")
    assert got.created_at.tzinfo == UTC
    with pytest.raises(DuplicateId):
        transcripts.put(
            transcript_id=tid,
            conversation_ref=None,
            subject_ref=None,
            key_version=2,
            format_version=1,
            ciphertext=b"",
        )
    assert transcripts.delete(tid) is True
    assert transcripts.delete(tid) is False
    with pytest.raises(RecordNotFound):
        transcripts.get(tid)


def test_append_with_commits_transcript_and_completion_together(store: AuditStore) -> None:
    request = store.append(event())
    transcript = sealed()
    done = store.append_with(completion(request, transcript_id=transcript.id), transcript=transcript)
    assert TranscriptStore(store.engine).get(transcript.id) == transcript
    assert done.transcript_id == transcript.id
    assert_linear_chain(store, 2)


def test_append_with_writes_neither_when_the_transcript_id_is_taken(store: AuditStore) -> None:
    request = store.append(event())
    transcript = sealed()
    store.append_with(completion(request, transcript_id=transcript.id), transcript=transcript)
    again = sealed(transcript.id, ciphertext=b"other")
    with pytest.raises(DuplicateId):
        store.append_with(completion(request, transcript_id=again.id), transcript=again)
    assert TranscriptStore(store.engine).get(transcript.id).ciphertext == transcript.ciphertext
    assert_linear_chain(store, 2)


def test_append_with_writes_neither_when_the_record_fails(store: AuditStore) -> None:
    transcript = sealed()
    with pytest.raises(DuplicateId):
        taken = store.append(event()).id
        store.append_with(event(record_id=taken, transcript_id=transcript.id), transcript=transcript)
    with pytest.raises(RecordNotFound):
        TranscriptStore(store.engine).get(transcript.id)
    assert len(all_records(store)) == 1


def test_append_with_requires_matching_transcript_id(store: AuditStore) -> None:
    with pytest.raises(ValueError, match="transcript_id"):
        store.append_with(event(transcript_id=str(uuid.uuid4())), transcript=sealed())


def test_a_tampered_record_can_still_be_read(store: AuditStore) -> None:
    record = store.append(event())
    with store.engine.begin() as conn:
        conn.execute(sa.update(AuditRecordRow).values(payload=b"\xff not json"))
    stored = store.get(record.id)
    assert (stored.payload, stored.details, stored.status) == (b"\xff not json", {}, "OK")
    assert store.verify().reason == "row_hash mismatch"


@pytest.mark.parametrize(
    ("events", "transcripts", "fragment"),
    [
        pytest.param([event(record_id="a"), event(record_id="a")], [], "record ids", id="same record id"),
        pytest.param([event()], [sealed("t"), sealed("t")], "transcript ids", id="same transcript id"),
    ],
)
def test_append_many_rejects_duplicates_within_the_batch(
    store: AuditStore, events: list[Any], transcripts: list[SealedTranscript], fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        store.append_many(events, transcripts=transcripts)
    assert store.head().seq == 0


@pytest.mark.parametrize(
    ("overrides", "error", "fragment"),
    [
        pytest.param({"id": "x" * 37}, ValueError, "id is longer than 36", id="long id"),
        pytest.param(
            {"created_at": datetime(2024, 1, 1)}, ValueError, "created_at must be timezone", id="naive"
        ),
        pytest.param({"key_version": -1}, ValueError, "key_version", id="negative key version"),
        pytest.param({"format_version": "1"}, ValueError, "format_version", id="str format version"),
        pytest.param({"ciphertext": "text"}, TypeError, "ciphertext must be bytes", id="str ciphertext"),
        pytest.param({"subject_ref": "s" * 129}, ValueError, "subject_ref is longer", id="long ref"),
    ],
)
def test_sealed_transcript_is_validated(
    overrides: dict[str, Any], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        sealed(**overrides)
