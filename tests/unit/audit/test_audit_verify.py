from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from custos.audit import AuditStore, StoredRecord
from custos.audit.canonical import canonical_json, format_timestamp
from custos.audit.chain import GENESIS_HASH, RAW_COLUMNS, ChainHead, ChainVerifier, compute_row_hash
from custos.audit.models import AuditRecordRow
from custos.audit.verify import verify_chain
from custos.testing.audit import T0, assert_linear_chain, completion, event

N = 6  # three request/completion pairs: seq 1..6

Tamper = Callable[[sa.Connection, list[StoredRecord]], None]


@pytest.fixture
def chain(store: AuditStore) -> list[StoredRecord]:
    records: list[StoredRecord] = []
    for i in range(N // 2):
        request = store.append(event(actor=f"svc:{i}"))
        records += [request, store.append(completion(request, actor=f"svc:{i}"))]
    return records


def _update(conn: sa.Connection, at: int, **values: object) -> None:
    conn.execute(sa.update(AuditRecordRow).where(AuditRecordRow.seq == at).values(**values))


def _row(record: StoredRecord, **changes: object) -> dict[str, object]:
    row = {c.name: getattr(record, c.name) for c in AuditRecordRow.__table__.columns}
    row.update(changes)
    return row


def flip_payload_byte(conn: sa.Connection, records: list[StoredRecord]) -> None:
    payload = bytearray(records[2].payload)
    payload[payload.index(b'"OK"') + 1] = ord("K")  # status "OK" -> "KK", still valid JSON
    _update(conn, 3, payload=bytes(payload))


def edit_status_column(conn: sa.Connection, records: list[StoredRecord]) -> None:
    _update(conn, 4, status="INTERNAL")


def edit_start_time_column(conn: sa.Connection, records: list[StoredRecord]) -> None:
    _update(conn, 2, start_time=records[1].start_time.replace(microsecond=0))


def edit_actor_column(conn: sa.Connection, records: list[StoredRecord]) -> None:
    _update(conn, 5, actor="svc:someone-else")


def delete_middle_row(conn: sa.Connection, records: list[StoredRecord]) -> None:
    conn.execute(sa.delete(AuditRecordRow).where(AuditRecordRow.seq == 3))


def delete_middle_row_and_renumber(conn: sa.Connection, records: list[StoredRecord]) -> None:
    conn.execute(sa.delete(AuditRecordRow).where(AuditRecordRow.seq == 3))
    for seq in (4, 5, 6):
        _update(conn, seq, seq=seq - 1)


def insert_forged_row_with_invented_link(conn: sa.Connection, records: list[StoredRecord]) -> None:
    conn.execute(
        sa.insert(AuditRecordRow), _row(records[-1], seq=N + 1, id=str(uuid.uuid4()), prev_hash="ab" * 32)
    )


def insert_forged_row_with_wrong_hash(conn: sa.Connection, records: list[StoredRecord]) -> None:
    head = records[-1]
    conn.execute(
        sa.insert(AuditRecordRow),
        _row(head, seq=N + 1, id=str(uuid.uuid4()), prev_hash=head.row_hash, row_hash="cd" * 32),
    )


def insert_forged_row_rehashed_from_a_copy(conn: sa.Connection, records: list[StoredRecord]) -> None:
    # Correct link and hash, but the payload is a replay of record 6 (its seq and id say 6).
    head = records[-1]
    row = _row(
        head, seq=N + 1, prev_hash=head.row_hash, row_hash=compute_row_hash(head.row_hash, head.payload)
    )
    conn.execute(sa.insert(AuditRecordRow), {**row, "id": str(uuid.uuid4())})


def swap_two_payloads(conn: sa.Connection, records: list[StoredRecord]) -> None:
    _update(conn, 2, payload=records[4].payload)
    _update(conn, 5, payload=records[1].payload)


def swap_two_rows_except_seq(conn: sa.Connection, records: list[StoredRecord]) -> None:
    conn.execute(sa.delete(AuditRecordRow).where(AuditRecordRow.seq.in_([2, 3])))
    conn.execute(sa.insert(AuditRecordRow), [_row(records[2], seq=2), _row(records[1], seq=3)])


def rewrite_one_row_consistently(conn: sa.Connection, records: list[StoredRecord]) -> None:
    # Change status in payload and column and recompute that row's hash: the next link must break.
    body = json.loads(records[3].payload)
    body["status"] = "INTERNAL"
    payload = canonical_json(body)
    _update(
        conn, 4, payload=payload, status="INTERNAL", row_hash=compute_row_hash(records[3].prev_hash, payload)
    )


def non_canonical_payload_rehashed(conn: sa.Connection, records: list[StoredRecord]) -> None:
    payload = json.dumps(json.loads(records[0].payload), indent=1).encode()
    _update(conn, 1, payload=payload, row_hash=compute_row_hash(GENESIS_HASH, payload))


def payload_with_extra_field_rehashed(conn: sa.Connection, records: list[StoredRecord]) -> None:
    payload = canonical_json({**json.loads(records[0].payload), "injected": 1})
    _update(conn, 1, payload=payload, row_hash=compute_row_hash(GENESIS_HASH, payload))


@pytest.mark.parametrize(
    ("tamper", "bad_seq", "reason"),
    [
        pytest.param(flip_payload_byte, 3, "row_hash mismatch", id="payload byte edited"),
        pytest.param(edit_status_column, 4, "column 'status' disagrees with payload", id="status column"),
        pytest.param(
            edit_start_time_column, 2, "column 'start_time' disagrees with payload", id="time column"
        ),
        pytest.param(edit_actor_column, 5, "column 'actor' disagrees with payload", id="actor column"),
        pytest.param(delete_middle_row, 3, "gap", id="middle row deleted"),
        pytest.param(delete_middle_row_and_renumber, 3, "broken link", id="deleted and renumbered"),
        pytest.param(insert_forged_row_with_invented_link, N + 1, "broken link", id="forged row bad link"),
        pytest.param(insert_forged_row_with_wrong_hash, N + 1, "row_hash mismatch", id="forged row bad hash"),
        pytest.param(
            insert_forged_row_rehashed_from_a_copy,
            N + 1,
            "column 'seq' disagrees with payload",
            id="replayed row",
        ),
        pytest.param(swap_two_payloads, 2, "row_hash mismatch", id="payloads swapped"),
        pytest.param(swap_two_rows_except_seq, 2, "broken link", id="rows swapped"),
        pytest.param(rewrite_one_row_consistently, 5, "broken link", id="one row rewritten and rehashed"),
        pytest.param(non_canonical_payload_rehashed, 1, "payload is not canonical JSON", id="non-canonical"),
        pytest.param(
            payload_with_extra_field_rehashed, 1, "payload fields do not match the schema", id="extra"
        ),
    ],
)
def test_verify_names_the_first_bad_record(
    store: AuditStore, chain: list[StoredRecord], tamper: Tamper, bad_seq: int, reason: str
) -> None:
    assert store.verify().ok
    with store.engine.begin() as conn:
        tamper(conn, chain)
    report = store.verify()
    assert (report.ok, report.first_bad_seq, report.reason) == (False, bad_seq, reason)
    # Checked in ranges joined at their boundaries (every record its own range, then pairs, ...), the
    # report is exactly the one-pass report.
    heads = [ChainHead(r.seq, r.row_hash) for r in chain]
    for size in (1, 2, 3, 4):
        split = verify_chain(store.engine, workers=1, range_rows=size, checkpoints=heads[-1:]).report
        assert split == store.verify(checkpoints=heads[-1:]), size
    assert report.count == bad_seq - 1
    with store.engine.connect() as conn:  # the last good record, as stored after tampering
        stored_hash = conn.scalar(sa.select(AuditRecordRow.row_hash).where(AuditRecordRow.seq == bad_seq - 1))
    assert (report.head_seq, report.head_hash) == (bad_seq - 1, stored_hash or GENESIS_HASH)


def test_intact_chain_verifies(store: AuditStore, chain: list[StoredRecord]) -> None:
    report = store.verify()
    assert (report.ok, report.count, report.first_bad_seq, report.reason, report.incomplete) == (
        True,
        N,
        None,
        "",
        0,
    )
    assert report.head_hash == chain[-1].row_hash
    assert_linear_chain(store, N)


def test_empty_chain_verifies(store: AuditStore) -> None:
    report = store.verify()
    assert (report.ok, report.count, report.head_hash, report.head_seq) == (True, 0, GENESIS_HASH, 0)


def test_request_without_completion_is_reported_but_not_a_failure(store: AuditStore) -> None:
    open_request = store.append(event())
    closed = store.append(event())
    store.append(completion(closed))
    store.append(event(phase="event", event_type="denied", status="PERMISSION_DENIED"))
    report = store.verify()
    assert (report.ok, report.count, report.incomplete) == (True, 4, 1)
    assert store.get(open_request.id).phase == "request"


def test_payload_bytes_are_exactly_what_is_hashed(store: AuditStore) -> None:
    record = store.append(event(details={"é": "ü", "n": 1.5, "t": T0}))
    stored = store.get(record.id)
    assert stored.row_hash == hashlib.sha256(bytes.fromhex(stored.prev_hash) + stored.payload).hexdigest()
    assert "é" in stored.payload.decode("utf-8")


@pytest.mark.parametrize(
    ("checkpoint_index", "truncate_from", "bad_seq", "reason"),
    [
        pytest.param(5, None, None, "", id="checkpoint present"),
        pytest.param(3, 5, None, "", id="truncated after checkpoint"),
        pytest.param(5, 5, 5, "chain shorter than checkpoint", id="truncated below checkpoint"),
        pytest.param(-1, None, 3, "checkpoint hash mismatch", id="different chain"),
    ],
)
def test_verify_against_a_checkpoint_detects_truncation(
    store: AuditStore,
    chain: list[StoredRecord],
    checkpoint_index: int,
    truncate_from: int | None,
    bad_seq: int | None,
    reason: str,
) -> None:
    if checkpoint_index >= 0:
        checkpoint = ChainHead(chain[checkpoint_index].seq, chain[checkpoint_index].row_hash)
    else:
        checkpoint = ChainHead(3, "ef" * 32)
    if truncate_from is not None:
        with store.engine.begin() as conn:
            conn.execute(sa.delete(AuditRecordRow).where(AuditRecordRow.seq >= truncate_from))
    report = store.verify(checkpoint=checkpoint)
    assert (report.ok, report.first_bad_seq, report.reason) == (bad_seq is None, bad_seq, reason)


def _varied_records(store: AuditStore) -> list[StoredRecord]:
    """Records exercising every kind of value the fast path rebuilds: NULLs, escapes, non-ASCII, numbers."""
    request = store.append(
        event(
            actor='svc:é"\\\n\u2028',
            model=None,
            conversation_ref=None,
            subject_ref=None,
            start_time=T0.replace(microsecond=0),
            details={"purpose": "support", "retention_class": "long", "pii": {"counts": {"PHONE": 1}}},
        )
    )
    details = {"ü": [1, -2.5, 1e300, None, True, {}], "nested": {"b": "\x00\x1f", "a": ""}, "pii": 3}
    return [
        request,
        store.append(completion(request, transcript_id=str(uuid.uuid4()), details=details)),
        store.append(event(phase="event", event_type="denied", status="PERMISSION_DENIED", details={})),
    ]


def test_well_formed_records_verify_on_the_fast_path(
    store: AuditStore, chain: list[StoredRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records the store wrote never need the per-record full check (which is what makes verify fast)."""
    _varied_records(store)

    def full_check(self: ChainVerifier, row: object) -> bool:
        raise AssertionError("record left the fast path")

    monkeypatch.setattr(ChainVerifier, "feed", full_check)
    report = store.verify()
    assert (report.ok, report.count, report.incomplete) == (True, N + 3, 0)


def test_fast_path_leaves_each_tampered_record_to_the_full_check(store: AuditStore) -> None:
    """feed_raw never accepts a record the full check rejects: a raw tuple per tampering kind."""
    records = _varied_records(store)
    raw = [tuple(getattr(r, name) for name in RAW_COLUMNS) for r in records]
    raw = [(*row[:8], *(format_timestamp(t) for t in row[8:10]), *row[10:]) for row in raw]
    verifier = ChainVerifier()
    assert verifier.feed_raw(raw[0]) is True
    second = dict(zip(RAW_COLUMNS, raw[1], strict=True))
    payload = second["payload"]
    assert isinstance(payload, bytes)

    def rehashed(new_payload: bytes, **columns: object) -> tuple[object, ...]:
        row = {**second, **columns, "payload": new_payload}
        row["row_hash"] = compute_row_hash(str(row["prev_hash"]), new_payload)
        return tuple(row[name] for name in RAW_COLUMNS)

    spaced = payload.replace(b'"nested":', b'"nested": ')
    reordered = payload.replace(b'{"a":"","b":"\\u0000\\u001f"}', b'{"b":"\\u0000\\u001f","a":""}')
    assert reordered != payload
    cases = {
        "status column": rehashed(payload, status="INTERNAL"),
        "time column": rehashed(payload, start_time="2024-05-01T12:00:00.000000Z"),
        "null column": rehashed(payload, model="m"),
        "whitespace in details": rehashed(spaced),
        "unsorted keys in details": rehashed(reordered),
        "escaped non-ASCII": rehashed(payload.replace("ü".encode(), b"\\u00fc")),
        "trailing data": rehashed(payload.replace(b',"end_time"', b',"x":1,"end_time"')),
        "NaN": rehashed(payload.replace(b"1e+300", b"NaN")),
        "duplicate key": rehashed(payload.replace(b'"pii":3', b'"pii":3,"pii":3')),
        "not UTF-8": rehashed(payload.replace("ü".encode(), b"\xff")),
        "wrong hash": (*raw[1][:3], "ab" * 32, *raw[1][4:]),
        "wrong seq": (7, *raw[1][1:]),
        "derived column": rehashed(payload, purpose="other"),
    }
    for name, row in cases.items():
        assert ChainVerifier(start=ChainHead(1, records[0].row_hash)).feed_raw(row) is None, name
    assert verifier.feed_raw(raw[1]) is True
    assert verifier.feed_raw(raw[2]) is True
    assert verifier.report().count == 3


def test_records_off_the_fast_path_still_verify(store: AuditStore) -> None:
    """A record the fast path cannot rebuild (a year below 1000) is accepted by the full check."""
    store.append(event(start_time=T0.replace(year=999), end_time=T0))
    store.append(event())
    report = store.verify()
    assert (report.ok, report.count) == (True, 2)


def test_ranges_join_open_requests_and_checkpoints(store: AuditStore) -> None:
    """Requests completed in a later range, checkpoints inside ranges and at the end, as in one pass."""
    first = store.append(event())
    second = store.append(event())
    store.append(completion(first))
    store.append(event())  # left open
    store.append(completion(second))
    head = store.head()
    checkpoints = [ChainHead(3, store.get(store.query(page_size=5)[0][2].id).row_hash), head]
    whole = store.verify(checkpoints=checkpoints)
    assert (whole.ok, whole.count, whole.incomplete) == (True, 5, 1)
    for size in (1, 2, 3):
        assert verify_chain(store.engine, workers=1, range_rows=size, checkpoints=checkpoints).report == whole
    beyond = [*checkpoints, ChainHead(9, "ab" * 32)]
    short = verify_chain(store.engine, workers=1, range_rows=2, checkpoints=beyond).report
    assert short == store.verify(checkpoints=beyond)
    assert (short.first_bad_seq, short.reason) == (6, "chain shorter than checkpoint")
    wrong = [ChainHead(4, "ab" * 32)]
    assert verify_chain(store.engine, workers=1, range_rows=2, checkpoints=wrong).report == store.verify(
        checkpoints=wrong
    )


def test_open_requests_at_a_cut(store: AuditStore) -> None:
    first = store.append(event())
    store.append(event())
    store.append(completion(first))
    result = verify_chain(store.engine, workers=1, cut=2)
    assert result.report.ok
    assert result.open_at_cut == {first.id, store.query(page_size=3)[0][1].id}
    assert verify_chain(store.engine, workers=1, cut=3).open_at_cut == {store.query(page_size=3)[0][1].id}


def test_worker_processes_give_the_one_pass_report(
    store: AuditStore, chain: list[StoredRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranges checked in spawned processes, intact and after tampering at a range boundary."""
    import custos.audit.verify as verify_module

    monkeypatch.setattr(verify_module, "PARALLEL_MIN_ROWS", 1)
    assert verify_chain(store.engine, workers=2, range_rows=2).report == store.verify()
    with store.engine.begin() as conn:
        delete_middle_row_and_renumber(conn, chain)  # seq 3 now links to seq 2's successor: range start
    parallel = verify_chain(store.engine, workers=2, range_rows=2).report
    assert parallel == store.verify()
    assert (parallel.first_bad_seq, parallel.reason) == (3, "broken link")
