"""Over real gRPC: transcripts sealed per subject, Audit.GetTranscript with a reason, Admin.EraseSubject."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import pytest
from presidio_analyzer import AnalyzerEngine

from custos.privacy.envelope import FORMAT_SUBJECT, read_header
from custos.testing.builders import generate_request
from custos.testing.server import ScriptedEngine, ScriptedServer, ServerHarness, make_server
from custos.v1 import admin_pb2, audit_pb2, inference_pb2

REPLY = "Hello <PERSON_1>, your parcel is on its way."


@pytest.fixture
def server(scripted_server: ScriptedServer) -> ServerHarness:
    harness, _ = scripted_server(REPLY)
    return harness


def rows_at(database: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as conn:
        return list(conn.execute(sql))


def generate(
    harness: ServerHarness,
    channel: grpc.Channel,
    subject_id: str,
    conversation: str,
    idempotency_key: str | None = None,
) -> str:
    request = generate_request(
        "I am John Smith, where is it?",
        conversation_id=conversation,
        subject_id=subject_id,
        idempotency_key=idempotency_key,
    )
    response = channel.unary_unary(
        "/custos.v1.Inference/Generate", response_deserializer=inference_pb2.GenerateResponse.FromString
    )(request.SerializeToString(), timeout=30)
    records = harness.rows(
        f"SELECT transcript_id FROM audit_records WHERE request_id = '{response.request_id}' "
        "AND phase = 'completion'",
    )
    return str(records[0]["transcript_id"])


def get_transcript(channel: grpc.Channel, transcript_id: str, reason: str) -> Any:
    return channel.unary_unary(
        "/custos.v1.Audit/GetTranscript", response_deserializer=audit_pb2.Transcript.FromString
    )(
        audit_pb2.GetTranscriptRequest(transcript_id=transcript_id, reason=reason).SerializeToString(),
        timeout=30,
    )


def test_transcripts_read_with_a_reason_and_erasure_shreds_one_subject(server: ServerHarness) -> None:
    inference = server.channel_for("inference")
    officer = server.channel_for("compliance-transcripts")
    plain_compliance = server.channel_for("compliance")
    admin = server.channel_for("admin")
    id_a = generate(server, inference, "customer-a", "conv-a", idempotency_key="retry-a")
    id_b = generate(server, inference, "customer-b", "conv-b", idempotency_key="retry-b")

    stored = server.rows("SELECT id, format_version, ciphertext FROM transcripts")
    assert {r["format_version"] for r in stored} == {FORMAT_SUBJECT}
    assert all(read_header(bytes(r["ciphertext"])).format_version == FORMAT_SUBJECT for r in stored)
    assert len(server.rows("SELECT * FROM subject_keys")) == 2

    # Reading needs a reason and the transcript.read permission; the read is audited with the reason.
    with pytest.raises(grpc.RpcError) as info:
        get_transcript(officer, id_a, "")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "reason" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        get_transcript(plain_compliance, id_a, "ticket 7")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    transcript = get_transcript(officer, id_a, "ticket 7")
    assert transcript.messages[0].content == "I am John Smith, where is it?"
    assert "John Smith" not in transcript.anonymized_messages[0].content
    assert transcript.answer
    reads = server.rows("SELECT * FROM audit_records WHERE event_type = 'transcript_read'")
    assert [(r["transcript_id"], r["status"], r["id"]) for r in reads] == [
        (id_a, "OK", transcript.audit_record_id)
    ]
    assert json.loads(reads[0]["payload"])["details"]["reason"] == "ticket 7"

    # Right of access: A's export holds A's transcript and the records naming A, and nothing of B.
    chunks = admin.unary_stream(
        "/custos.v1.Admin/ExportSubject", response_deserializer=admin_pb2.ExportSubjectChunk.FromString
    )(admin_pb2.ExportSubjectRequest(subject_id="customer-a").SerializeToString(), timeout=30)
    export = json.loads(b"".join(c.data for c in chunks))
    assert [t["id"] for t in export["transcripts"]] == [id_a]
    assert export["transcripts"][0]["messages"][0]["content"] == "I am John Smith, where is it?"
    assert {r["subject_ref"] for r in export["audit_records"]} == {export["subject_ref"]}
    assert id_a in {r["transcript_id"] for r in export["audit_records"]}
    exported = server.rows(f"SELECT * FROM audit_records WHERE id = '{export['export_record']}'")
    assert exported[0]["event_type"] == "transcript_read" and exported[0]["actor"] == "admin"

    # Erasure of A: A's transcript becomes unreadable, B's stays readable, the chain still verifies.
    erase = admin.unary_unary(
        "/custos.v1.Admin/EraseSubject", response_deserializer=admin_pb2.EraseSubjectResponse.FromString
    )
    result = erase(admin_pb2.EraseSubjectRequest(subject_id="customer-a").SerializeToString(), timeout=30)
    assert (
        result.subject_key_destroyed and result.transcripts_unreadable == 1 and result.vault_rows_deleted == 1
    )
    assert "customer-a" not in result.subject_ref
    with pytest.raises(grpc.RpcError) as info:
        get_transcript(officer, id_a, "ticket 8")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "erased" in (
        info.value.details() or ""
    )
    assert get_transcript(officer, id_b, "ticket 9").messages[0].content.startswith("I am John Smith")
    # The stored idempotency reply of A's request (sealed for A, found by subject) goes with A; B's stays.
    replies = server.rows("SELECT request_id FROM idempotency_keys")
    b_requests = server.rows(f"SELECT request_id FROM audit_records WHERE transcript_id = '{id_b}'")
    assert [r["request_id"] for r in replies] == [b_requests[0]["request_id"]]
    again = erase(admin_pb2.EraseSubjectRequest(subject_id="customer-a").SerializeToString(), timeout=30)
    assert not again.subject_key_destroyed and again.subject_ref == result.subject_ref
    erasures = server.rows("SELECT * FROM audit_records WHERE event_type = 'erase_subject' ORDER BY seq")
    assert [(r["subject_ref"], r["actor"]) for r in erasures] == [(result.subject_ref, "admin")] * 2
    verify = officer.unary_unary(
        "/custos.v1.Audit/Verify", response_deserializer=audit_pb2.AuditVerifyResponse.FromString
    )(audit_pb2.AuditVerifyRequest().SerializeToString(), timeout=30)
    assert verify.ok, verify.reason
    ledger = server.server.settings.data_dir / "erasure-ledger.jsonl"
    assert [json.loads(line)["subject_ref"] for line in ledger.read_text().splitlines()] == [
        result.subject_ref
    ] * 2


def test_a_restored_backup_does_not_resurrect_an_erased_subject(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    backup = tmp_path / "backup.db"
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY)) as first:
        inference = first.channel_for("inference")
        id_a = generate(first, inference, "customer-a", "conv-a")
        id_b = generate(first, inference, "customer-b", "conv-b")
        database = Path(first.server.settings.resolved_database_url.removeprefix("sqlite:///"))
        source = sqlite3.connect(database)
        target = sqlite3.connect(backup)
        source.backup(target)  # last night's backup, taken before the erasure
        source.close()
        target.close()
        first.channel_for("admin").unary_unary("/custos.v1.Admin/EraseSubject")(
            admin_pb2.EraseSubjectRequest(subject_id="customer-a").SerializeToString(), timeout=30
        )
    # The operator restores it (through SQLite's backup API, which is safe with the WAL).
    source = sqlite3.connect(backup)
    target = sqlite3.connect(database)
    source.backup(target)
    source.close()
    target.close()
    assert len(rows_at(database, "SELECT * FROM subject_keys")) == 2  # A's key is back in the database

    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY)) as second:
        officer = second.channel_for("compliance-transcripts")
        with pytest.raises(grpc.RpcError) as info:
            get_transcript(officer, id_a, "audit of the restore")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert get_transcript(officer, id_b, "audit of the restore").answer
        assert len(second.rows("SELECT * FROM subject_keys")) == 1
        assert second.rows("SELECT subject_ref FROM conversation_vault") == [
            {"subject_ref": r["subject_ref"]} for r in second.rows("SELECT subject_ref FROM subject_keys")
        ]


def test_server_purges_transcripts_past_retention(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY), transcript_retention_days=30) as harness:
        inference = harness.channel_for("inference")
        old = generate(harness, inference, "customer-a", "conv-a")
        fresh = generate(harness, inference, "customer-b", "conv-b")
        database = Path(harness.server.settings.resolved_database_url.removeprefix("sqlite:///"))
        with sqlite3.connect(database) as conn:
            conn.execute(
                "UPDATE transcripts SET created_at = '2020-01-01 00:00:00.000000' WHERE id = ?", (old,)
            )
        deleted = asyncio.run_coroutine_threadsafe(
            harness.server.purge_expired_transcripts(), harness.loop
        ).result(timeout=30)
        assert deleted == 1
        assert [r["id"] for r in harness.rows("SELECT id FROM transcripts")] == [fresh]
        purges = harness.rows("SELECT * FROM audit_records WHERE event_type = 'transcript_purge'")
        assert [(p["actor"], json.loads(p["payload"])["details"]["deleted"]) for p in purges] == [
            ("custos:retention", 1)
        ]
        assert harness.server.metrics.transcripts_purged._value.get() == 1
