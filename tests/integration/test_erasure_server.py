"""Over real gRPC: erasure leaves no raw personal data behind (issue 15, items 1, 2 and 4).

A conversation's placeholder map stays sealed for the subject it was created with (a feedback comment or a
call with another subject cannot re-seal it), erasure removes every vault row of the subject's conversations
and its feedback comments, a restart re-applies the erasure ledger without shredding what a returning
customer sent after the erasure, and ad hoc Classify labels reach neither the model nor the audit log raw.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from presidio_analyzer import AnalyzerEngine

from custos.engine.scoring import ContinuationScores
from custos.privacy.vault import ConversationVault
from custos.tasks.labels import LabelSetRegistry
from custos.testing.builders import generate_request
from custos.testing.server import ScriptedEngine, ServerHarness, make_server
from custos.v1 import admin_pb2, audit_pb2, feedback_pb2, inference_pb2

REPLY = "Hello <PERSON_1>, your parcel is on its way."
MESSAGE = "I am John Smith, where is my parcel?"
COMMENT = "Maria Garcia from the depot never called me back"


def generate(
    channel: grpc.Channel, conversation: str, subject_id: str | None, text: str = MESSAGE
) -> inference_pb2.GenerateResponse:
    fields: dict[str, Any] = {} if subject_id is None else {"subject_id": subject_id}
    request = generate_request(text, conversation_id=conversation, **fields)
    response: inference_pb2.GenerateResponse = channel.unary_unary(
        "/custos.v1.Inference/Generate", response_deserializer=inference_pb2.GenerateResponse.FromString
    )(request.SerializeToString(), timeout=30)
    return response


def submit_feedback(channel: grpc.Channel, request_id: str, comment: str) -> feedback_pb2.FeedbackResponse:
    response: feedback_pb2.FeedbackResponse = channel.unary_unary(
        "/custos.v1.Feedback/Submit", response_deserializer=feedback_pb2.FeedbackResponse.FromString
    )(
        feedback_pb2.FeedbackRequest(request_id=request_id, rating=2, comment=comment).SerializeToString(),
        timeout=30,
    )
    return response


def erase(channel: grpc.Channel, subject_id: str) -> admin_pb2.EraseSubjectResponse:
    response: admin_pb2.EraseSubjectResponse = channel.unary_unary(
        "/custos.v1.Admin/EraseSubject", response_deserializer=admin_pb2.EraseSubjectResponse.FromString
    )(admin_pb2.EraseSubjectRequest(subject_id=subject_id).SerializeToString(), timeout=30)
    return response


def get_transcript(channel: grpc.Channel, transcript_id: str) -> audit_pb2.Transcript:
    response: audit_pb2.Transcript = channel.unary_unary(
        "/custos.v1.Audit/GetTranscript", response_deserializer=audit_pb2.Transcript.FromString
    )(
        audit_pb2.GetTranscriptRequest(
            transcript_id=transcript_id, reason="erasure test"
        ).SerializeToString(),
        timeout=30,
    )
    return response


def request_record(harness: ServerHarness, request_id: str, phase: str = "request") -> dict[str, Any]:
    rows = harness.rows(
        "SELECT * FROM audit_records WHERE request_id = :r AND phase = :p", r=request_id, p=phase
    )
    assert len(rows) == 1
    return rows[0]


def vault_of(harness: ServerHarness) -> ConversationVault:
    """A vault on the server's database and keys, to try to open a conversation's map as the server would."""
    from sqlalchemy import create_engine

    server = harness.server
    assert server.keys is not None
    return ConversationVault(
        create_engine(server.settings.resolved_database_url),
        server.keys,
        ttl_seconds=3600,
        subject_keys=server.subject_keys,
    )


def all_payloads(harness: ServerHarness) -> str:
    return "\n".join(
        bytes(r["payload"]).decode("utf-8") for r in harness.rows("SELECT payload FROM audit_records")
    )


@pytest.fixture
def server(tmp_path: Path, analyzer: AnalyzerEngine) -> Any:
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY)) as harness:
        yield harness


def test_a_conversation_keeps_the_subject_it_was_created_with(server: ServerHarness) -> None:
    crm = server.channel_for("inference", principal="crm")
    first = generate(crm, "conv-a", "customer-a")
    conversation_ref = request_record(server, first.request_id)["conversation_ref"]
    subject_ref = request_record(server, first.request_id)["subject_ref"]

    for other in ("customer-b", None):  # another subject, or none (the conversation's anonymous subject)
        with pytest.raises(grpc.RpcError) as info:
            generate(crm, "conv-a", other, "This is Maria Garcia speaking")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "subject_id" in (info.value.details() or "")
    # The refusals are audited; the map was never re-sealed under another subject.
    refused = server.rows(
        "SELECT status FROM audit_records WHERE event_type = 'generate' AND status = 'FAILED_PRECONDITION'"
    )
    assert len(refused) == 2
    rows = server.rows("SELECT subject_ref, version FROM conversation_vault")
    assert rows == [{"subject_ref": subject_ref, "version": 1}]
    assert "Maria Garcia" not in json.dumps(vault_of(server).load(conversation_ref).to_dict())
    # The same subject goes on in its conversation; a new conversation may have another subject.
    generate(crm, "conv-a", "customer-a")
    generate(crm, "conv-b", "customer-b")


def test_feedback_and_erasure_leave_no_readable_map_or_comment(server: ServerHarness) -> None:
    crm = server.channel_for("inference", principal="crm")
    admin = server.channel_for("admin")
    answer = generate(crm, "conv-a", "customer-a")
    record = request_record(server, answer.request_id)
    conversation_ref, subject_ref = record["conversation_ref"], record["subject_ref"]
    feedback = submit_feedback(crm, answer.request_id, COMMENT)
    assert "Maria Garcia" not in feedback.comment

    # The comment went through the conversation's vault: the map is still sealed for its subject only.
    rows = server.rows(
        "SELECT subject_ref FROM conversation_vault WHERE conversation_ref = :c", c=conversation_ref
    )
    assert rows == [{"subject_ref": subject_ref}]
    mapping = vault_of(server).load(conversation_ref).to_dict()
    assert "John Smith" in json.dumps(mapping) and "Maria Garcia" in json.dumps(mapping)

    result = erase(admin, "customer-a")
    assert result.subject_key_destroyed and result.vault_rows_deleted >= 1
    assert (
        server.rows("SELECT * FROM conversation_vault WHERE conversation_ref = :c", c=conversation_ref) == []
    )
    assert len(vault_of(server).load(conversation_ref)) == 0
    # The stored comment goes with its subject; the rating stays for the satisfaction report.
    stored = server.rows("SELECT rating, comment FROM feedback WHERE id = :i", i=feedback.feedback_id)
    assert stored == [{"rating": 2, "comment": None}]
    erasure = server.audit_rows("erase_subject")[-1]["payload"]["details"]
    assert erasure["vault_rows_deleted"] == result.vault_rows_deleted
    assert erasure["feedback_comments_erased"] == 1


def test_a_restart_keeps_what_a_returning_customer_sent_after_erasure(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY)) as first:
        crm = first.channel_for("inference", principal="crm")
        before = generate(crm, "conv-old", "customer-a")
        erase(first.channel_for("admin"), "customer-a")
        # The customer comes back: new data under a new subject key, in a new conversation.
        after = generate(crm, "conv-new", "customer-a")
        transcript_id = request_record(first, after.request_id, "completion")["transcript_id"]
        new_ref = request_record(first, after.request_id)["conversation_ref"]
        old_transcript = request_record(first, before.request_id, "completion")["transcript_id"]
        keys_before = first.rows("SELECT subject_ref, created_at FROM subject_keys")
    # A restart (the app rebuilt on the same database) re-applies the erasure ledger.
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY)) as second:
        officer = second.channel_for("compliance-transcripts")
        assert get_transcript(officer, transcript_id).messages[0].content == MESSAGE
        with pytest.raises(grpc.RpcError) as info:
            get_transcript(officer, old_transcript)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert second.rows("SELECT subject_ref, created_at FROM subject_keys") == keys_before
        assert "John Smith" in json.dumps(vault_of(second).load(new_ref).to_dict())
        crm = second.channel_for("inference", principal="crm")
        generate(crm, "conv-new", "customer-a")  # the conversation goes on with its map


def test_a_restored_backup_does_not_bring_back_an_erased_comment_or_map(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    backup = tmp_path / "backup.db"
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY)) as first:
        crm = first.channel_for("inference", principal="crm")
        answer = generate(crm, "conv-a", "customer-a")
        conversation_ref = request_record(first, answer.request_id)["conversation_ref"]
        feedback = submit_feedback(crm, answer.request_id, COMMENT)
        database = Path(first.server.settings.resolved_database_url.removeprefix("sqlite:///"))
        with sqlite3.connect(database) as source, sqlite3.connect(backup) as target:
            source.backup(target)
        erase(first.channel_for("admin"), "customer-a")
    with sqlite3.connect(backup) as source, sqlite3.connect(database) as target:
        source.backup(target)
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY)) as second:
        assert second.rows("SELECT comment FROM feedback WHERE id = :i", i=feedback.feedback_id) == [
            {"comment": None}
        ]
        assert (
            second.rows("SELECT * FROM conversation_vault WHERE conversation_ref = :c", c=conversation_ref)
            == []
        )


class ContinuationSpy(ScriptedEngine):
    """The scripted engine, also recording the continuations (label texts) it is asked to score."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.continuations: list[list[str]] = []

    def score_continuations(self, prefix: str, continuations: Sequence[str]) -> ContinuationScores:
        """Record the label texts, then score them like the scripted engine."""
        self.continuations.append(list(continuations))
        return super().score_continuations(prefix, continuations)


def test_ad_hoc_labels_are_anonymized_for_the_model_and_audited_as_digests(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    engine = ContinuationSpy(REPLY)
    labels = ["refund for John Smith", "call back Maria Garcia", "delivery"]
    with make_server(tmp_path, analyzer, engine) as harness:
        crm = harness.channel_for("inference", principal="crm")
        classify = crm.unary_unary(
            "/custos.v1.Inference/Classify", response_deserializer=inference_pb2.ClassifyResponse.FromString
        )
        request = inference_pb2.ClassifyRequest(
            conversation_id="conv-a", message=MESSAGE, labels=labels, subject_id="customer-a"
        )
        response = classify(request.SerializeToString(), timeout=30)
        # The caller gets its own label names back.
        assert {p.label for p in response.distribution} == set(labels) and response.label in labels
        # The model sees placeholders only; the same person gets the same placeholder as in the message.
        scored = " | ".join(engine.continuations[-1]) + " | " + engine.prefixes[-1]
        for value in ("John", "Smith", "Maria", "Garcia"):
            assert value not in scored
        assert engine.continuations[-1][0] == " refund for <PERSON_1>" and "<PERSON_1>" in engine.prefixes[-1]
        assert engine.continuations[-1][2] == " delivery"
        # No label text reaches the audit log, not even the one without a name in it.
        payloads = all_payloads(harness)
        for value in ("John", "Smith", "Maria", "Garcia", "refund for", "delivery"):
            assert value not in payloads
        request_details, completion = (r["payload"]["details"] for r in harness.audit_rows("classify"))
        assert len(completion["classification"]["distribution"]) == len(labels)
        assert request_details["label_set"]["id"] == "ad-hoc"
        # Configured label sets keep their names: they are not caller text.
        configured = inference_pb2.ClassifyRequest(
            conversation_id="conv-a", message=MESSAGE, label_set="sentiment", subject_id="customer-a"
        )
        classify(configured.SerializeToString(), timeout=30)
        names = LabelSetRegistry.load().get("sentiment").names
        request_details, completion = (r["payload"]["details"] for r in harness.audit_rows("classify")[2:])
        assert request_details["label_set"]["labels"] == names
        assert set(completion["classification"]["distribution"]) == set(names)
