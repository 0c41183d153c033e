from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from custos.audit import AuditEvent, CanonicalizationError, EventType, Phase
from custos.audit.chain import (
    GENESIS_HASH,
    SCHEMA_VERSION,
    TYPED_FIELDS,
    build_payload,
    compute_row_hash,
    derived_columns,
    payload_template,
)
from custos.testing.audit import T0, event


def test_event_types_are_the_documented_list() -> None:
    assert [e.value for e in EventType] == [
        "generate", "classify", "anonymize", "denied", "invalid", "transcript_read", "audit_read",
        "feedback", "key_rotate", "key_rewrap", "erase_subject", "transcript_purge", "token_change",
        "config_change", "restore", "replay",
    ]  # fmt: skip


def test_row_hash_is_sha256_of_prev_hash_bytes_then_payload() -> None:
    payload = b'{"a":1}'
    assert GENESIS_HASH == "0" * 64
    assert compute_row_hash(GENESIS_HASH, payload) == hashlib.sha256(bytes(32) + payload).hexdigest()
    prev = "ab" * 32
    assert compute_row_hash(prev, payload) == hashlib.sha256(bytes.fromhex(prev) + payload).hexdigest()


def test_payload_holds_typed_fields_ids_seq_version_and_details_but_not_prev_hash() -> None:
    ev = event(details={"b": 2, "a": [1]})
    payload = build_payload(ev, record_id="r-1", request_id="r-1", seq=7)
    body = json.loads(payload)
    assert set(body) == {*TYPED_FIELDS, "id", "seq", "schema_version", "details"}
    assert (body["id"], body["seq"], body["schema_version"]) == ("r-1", 7, SCHEMA_VERSION)
    assert body["start_time"] == "2024-05-01T12:00:00.123456Z"
    assert body["details"] == {"a": [1], "b": 2}
    assert "prev_hash" not in body and "row_hash" not in body


def test_enum_fields_are_normalised() -> None:
    ev = event(event_type=EventType.CLASSIFY, phase=Phase.EVENT)
    assert ev.event_type == "classify" and isinstance(ev.event_type, EventType)
    plain = event(event_type="classify", phase="event")
    assert plain.event_type is EventType.CLASSIFY and plain.phase is Phase.EVENT


@pytest.mark.parametrize(
    ("overrides", "error", "fragment"),
    [
        pytest.param({"event_type": "generated"}, ValueError, "event_type must be one of", id="unknown type"),
        pytest.param({"phase": "done"}, ValueError, "phase must be one of", id="unknown phase"),
        pytest.param({"start_time": datetime(2024, 1, 1)}, ValueError, "start_time must be time", id="naive"),
        pytest.param({"end_time": "2024-01-01"}, TypeError, "end_time must be a datetime", id="str time"),
        pytest.param({"end_time": T0 - timedelta(seconds=1)}, ValueError, "not be before", id="end<start"),
        pytest.param({"actor": ""}, ValueError, "actor must not be empty", id="empty actor"),
        pytest.param({"actor": "x" * 513}, ValueError, "actor is longer than 512", id="long actor"),
        pytest.param({"status": None}, TypeError, "status must be a str", id="status none"),
        pytest.param({"model": 3}, TypeError, "model must be a str or None", id="model int"),
        pytest.param({"subject_ref": "s" * 129}, ValueError, "subject_ref is longer", id="long ref"),
        pytest.param({"details": [1]}, TypeError, "details must be a mapping", id="details list"),
        pytest.param({"phase": "completion"}, ValueError, "request_id is required", id="orphan completion"),
        pytest.param(
            {"phase": "completion", "request_id": "a", "record_id": "a"},
            ValueError, "cannot be its own request", id="completion is own request",
        ),
        pytest.param(
            {"phase": "request", "request_id": "a", "record_id": "b"},
            ValueError, "must be equal", id="request ids differ",
        ),
        pytest.param({"record_id": "x" * 37}, ValueError, "id is longer than 36", id="long record id"),
    ],
)  # fmt: skip
def test_invalid_events_are_refused_naming_the_field(
    overrides: dict[str, Any], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        event(**overrides)


def test_event_fields_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        AuditEvent("generate", "request")  # type: ignore[misc]
    ev = event()
    with pytest.raises(AttributeError):
        ev.status = "INTERNAL"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("phase", "request_id", "record_id", "expected"),
    [
        pytest.param("request", None, None, None, id="request fresh id"),
        pytest.param("request", "id-1", None, "id-1", id="request id from request_id"),
        pytest.param("event", None, "id-2", "id-2", id="event id from record_id"),
        pytest.param("event", "id-3", "id-3", "id-3", id="both equal"),
    ],
)
def test_request_and_single_event_ids_resolve_to_one_value(
    phase: str, request_id: str | None, record_id: str | None, expected: str | None
) -> None:
    ev = event(phase=phase, request_id=request_id, record_id=record_id)
    assert ev.record_id == ev.request_id == expected


def test_unserialisable_details_fail_when_building_the_payload() -> None:
    ev = event(details={"raw": b"bytes"})
    with pytest.raises(CanonicalizationError, match="bytes"):
        build_payload(ev, record_id=str(uuid.uuid4()), request_id="x", seq=1)


@pytest.mark.parametrize(
    "details",
    [
        {},
        {"seq": 0, "start_time": "x", "nested": {"seq": 0, "start_time": ',"seq":0,"start_time":'}},
        {"é": [1, 2.5, None], "pii": {"counts": {"PERSON": 2}}, "purpose": "support"},
    ],
)
def test_payload_template_gives_the_payload_of_every_seq(details: dict[str, object]) -> None:
    ev = event(details=details, transcript_id="t-1", subject_ref=None)
    template = payload_template(ev, record_id="r-1", request_id="r-1")
    for seq in (1, 9, 10, 12345678901):
        payload = build_payload(ev, record_id="r-1", request_id="r-1", seq=seq)
        assert template.payload(seq) == payload
        assert template.derived == derived_columns(payload)
        assert template.details == json.loads(payload)["details"]
