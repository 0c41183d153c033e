"""The walking skeleton end to end over a real socket: privacy before the model, audit, transcripts."""

from __future__ import annotations

import json
import logging
import sqlite3
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from custos.audit.errors import AuditUnavailable
from custos.cli.main import app as cli_app
from custos.privacy.envelope import FORMAT_SUBJECT, read_header
from custos.privacy.transcripts import open_transcript
from custos.testing.builders import generate_request
from custos.testing.server import ScriptedEngine, ScriptedServer, ServerHarness, SpyEngine
from custos.v1 import audit_pb2, common_pb2, inference_pb2

NAME = "John Smith"
EMAIL = "john.smith@example.com"
PHONE = "212-555-0187"
CARD = "4111 1111 1111 1111"
PII = (NAME, EMAIL, PHONE, CARD)
QUESTION = (
    f"Hi, I am {NAME}. My email is {EMAIL} and my phone is {PHONE}. Please refund the charge on card {CARD}."
)


def request(content: str = QUESTION, **fields: object) -> inference_pb2.GenerateRequest:
    return generate_request(content, **fields)


def db_rows(harness: ServerHarness, table: str) -> list[dict[str, object]]:
    engine = create_engine(harness.server.settings.resolved_database_url)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]
    engine.dispose()
    return rows


def contains_any(value: object, needles: tuple[str, ...]) -> list[str]:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    haystack = str(value).lower()
    return [n for n in needles if n.lower() in haystack]


def test_model_never_receives_raw_pii(tiny_server: ServerHarness, spy: SpyEngine) -> None:
    response = tiny_server.inference.Generate(request())

    assert len(spy.prompts) == 1
    prompt = spy.prompts[0]
    assert contains_any(prompt, PII) == []
    for placeholder in ("<PERSON_1>", "<EMAIL_ADDRESS_1>", "<PHONE_NUMBER_1>", "<CREDIT_CARD_1>"):
        assert placeholder in prompt
    counts = {e.entity_type: e.count for e in response.redaction.entities}
    assert counts == {"PERSON": 1, "EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1, "CREDIT_CARD": 1}
    assert response.redaction.total == 4
    assert response.request_id
    assert response.usage.completion_tokens >= 1
    assert response.finish_reason in (inference_pb2.FINISH_REASON_LENGTH, inference_pb2.FINISH_REASON_STOP)


def test_same_value_same_placeholder_within_a_request(tiny_server: ServerHarness, spy: SpyEngine) -> None:
    req = inference_pb2.GenerateRequest(
        conversation_id="conv-2",
        messages=[
            common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=f"Write to {EMAIL} please."),
            common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, content="Which address?"),
            common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=f"{EMAIL}, or jane.doe@example.org."),
        ],
        parameters=inference_pb2.GenerationParameters(max_new_tokens=4),
    )
    tiny_server.inference.Generate(req)
    turns = spy.turns[0]
    assert "<EMAIL_ADDRESS_1>" in turns[0].content and "<EMAIL_ADDRESS_1>" in turns[2].content
    assert "<EMAIL_ADDRESS_2>" in turns[2].content


REPLY = "Hello <PERSON_1>, we wrote to <EMAIL_ADDRESS_1> about <CREDIT_CARD_1>. <UNKNOWN_9> stays."


@pytest.fixture
def scripted(scripted_server: ScriptedServer) -> tuple[ServerHarness, ScriptedEngine]:
    return scripted_server(REPLY, chunk=2)


@pytest.mark.parametrize(
    ("reidentify", "expected"),
    [
        (True, f"Hello {NAME}, we wrote to {EMAIL} about {CARD}. <UNKNOWN_9> stays."),
        (False, REPLY),
    ],
)
def test_reidentify_restores_only_when_asked(
    scripted: tuple[ServerHarness, ScriptedEngine], reidentify: bool, expected: str
) -> None:
    harness, engine = scripted
    unary = harness.inference.Generate(request(reidentify=reidentify))
    assert unary.text == expected

    events = list(harness.inference.GenerateStream(request(reidentify=reidentify)))
    assert events[0].WhichOneof("event") == "start" and events[0].start.request_id
    assert events[-1].WhichOneof("event") == "end"
    deltas = [e.delta for e in events[1:-1]]
    assert all(e.WhichOneof("event") == "delta" for e in events[1:-1])
    assert "".join(deltas) == expected
    if reidentify:
        # Placeholders arrive in 2-character chunks; no delta may carry a fragment of one.
        assert not any(fragment in d for d in deltas for fragment in ("<PER", "<EMA", "<CRE"))
    # The model itself only ever saw placeholders.
    assert all(contains_any(t.content, PII) == [] for call in engine.calls for t in call)


def test_audit_rows_hold_no_raw_values_and_transcript_decrypts(
    tiny_server: ServerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = tiny_server.inference.Generate(request(subject_id="customer-42", purpose="support"))

    records = db_rows(tiny_server, "audit_records")
    generate_rows = [r for r in records if r["event_type"] == "generate"]
    assert [r["phase"] for r in generate_rows] == ["request", "completion"]
    assert {r["request_id"] for r in generate_rows} == {response.request_id}
    assert generate_rows[0]["id"] == response.request_id
    for row in records:
        for column, value in row.items():
            assert contains_any(value, PII) == [], f"raw PII in audit_records.{column}"
        assert "customer-42" not in str(row["subject_ref"]) and "conv-1" not in str(row["conversation_ref"])

    completion = json.loads(generate_rows[1]["payload"])
    assert completion["details"]["usage"]["completion_tokens"] == response.usage.completion_tokens
    request_payload = json.loads(generate_rows[0]["payload"])
    findings = request_payload["details"]["pii"]["findings"]
    assert {f["entity_type"] for f in findings} == {"PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD"}
    assert request_payload["details"]["model_info"]["name"] == "tiny-random-gemma3"

    transcripts = db_rows(tiny_server, "transcripts")
    assert len(transcripts) == 1
    row = transcripts[0]
    assert row["id"] == generate_rows[1]["transcript_id"]
    assert contains_any(row["ciphertext"], PII) == []
    keys, subject_keys = tiny_server.server.keys, tiny_server.server.subject_keys
    assert keys is not None and subject_keys is not None
    assert read_header(bytes(row["ciphertext"])).format_version == FORMAT_SUBJECT  # type: ignore[arg-type]
    plain = open_transcript(
        row["ciphertext"],  # type: ignore[arg-type]
        transcript_id=str(row["id"]),
        conversation_ref=str(row["conversation_ref"]),
        subject_ref=str(row["subject_ref"]),
        keys=keys,
        subject_keys=subject_keys,
    )
    transcript = json.loads(plain)
    assert transcript["messages"] == [{"role": "user", "content": QUESTION}]
    assert contains_any(transcript["anonymized_messages"][0]["content"], PII) == []
    assert transcript["answer"] == response.text
    # Bound to its row: the same bytes under another row's id do not open.
    with pytest.raises(Exception, match=r"(?i)decrypt|authent"):
        open_transcript(
            row["ciphertext"],  # type: ignore[arg-type]
            transcript_id="other-id",
            conversation_ref=str(row["conversation_ref"]),
            subject_ref=str(row["subject_ref"]),
            keys=keys,
            subject_keys=subject_keys,
        )

    logged = "\n".join(
        r.getMessage() + json.dumps(getattr(r, "fields", {}), default=str) for r in caplog.records
    )
    assert contains_any(logged, PII) == []


def test_verify_passes_then_names_the_edited_row(tiny_server: ServerHarness) -> None:
    at_start = len(db_rows(tiny_server, "audit_records"))  # configuration and bootstrap-token records
    tiny_server.inference.Generate(request())
    tiny_server.inference.Generate(request("Where is my parcel?"))
    report = tiny_server.audit.Verify(audit_pb2.AuditVerifyRequest())
    assert report.ok and report.count == at_start + 4 and report.incomplete == 0

    db_path = tiny_server.server.settings.data_dir / "custos.db"
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "UPDATE audit_records SET payload = CAST(REPLACE(CAST(payload AS TEXT), '\"OK\"', "
            f"'\"NO\"') AS BLOB) WHERE seq = {at_start + 2}"
        )
    report = tiny_server.audit.Verify(audit_pb2.AuditVerifyRequest())
    assert not report.ok
    assert report.first_bad_seq == at_start + 2
    assert report.reason

    result = CliRunner().invoke(
        cli_app, ["audit", "verify", "--data-dir", str(tiny_server.server.settings.data_dir)]
    )
    assert result.exit_code == 1
    bad = at_start + 2
    assert f"seq {bad}" in result.output or f'"first_bad_seq": {bad}' in result.output


def _code(call: object) -> grpc.StatusCode:
    assert isinstance(call, grpc.RpcError)
    return call.code()  # type: ignore[no-any-return]


INVALID = [
    (inference_pb2.GenerateRequest(conversation_id="c"), "messages"),
    (request(""), "messages[0].content"),
    (
        inference_pb2.GenerateRequest(
            conversation_id="c",
            messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_UNSPECIFIED, content="hi")],
        ),
        "messages[0].role",
    ),
    (
        inference_pb2.GenerateRequest(
            conversation_id="c",
            messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")],
            parameters=inference_pb2.GenerationParameters(max_new_tokens=65),
        ),  # the limit is 64 here
        "parameters.max_new_tokens",
    ),
    (
        inference_pb2.GenerateRequest(
            conversation_id="c",
            messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")],
            parameters=inference_pb2.GenerationParameters(temperature=-1.0),
        ),
        "parameters.temperature",
    ),
]


@pytest.mark.parametrize(("req", "field"), INVALID)
def test_invalid_requests_get_invalid_argument_and_an_audit_record(
    tiny_server: ServerHarness, spy: SpyEngine, req: inference_pb2.GenerateRequest, field: str
) -> None:
    for method in (tiny_server.inference.Generate, lambda r: list(tiny_server.inference.GenerateStream(r))):
        with pytest.raises(grpc.RpcError) as info:
            method(req)
        assert _code(info.value) == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(field)  # type: ignore[attr-defined]
    assert spy.prompts == []
    invalid = [r for r in db_rows(tiny_server, "audit_records") if r["event_type"] == "invalid"]
    assert [json.loads(r["payload"])["details"]["field"] for r in invalid] == [field, field]  # type: ignore[arg-type]
    assert {r["status"] for r in invalid} == {"INVALID_ARGUMENT"}


def test_oversized_and_malformed_requests(tiny_server: ServerHarness, spy: SpyEngine) -> None:
    with pytest.raises(grpc.RpcError) as info:
        tiny_server.inference.Generate(request("x" * 5000))  # max_request_bytes is 4096 here
    assert _code(info.value) == grpc.StatusCode.RESOURCE_EXHAUSTED

    raw_call = tiny_server.channel.unary_unary(
        "/custos.v1.Inference/Generate", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as info:
        raw_call(b"\x12\xff\xff\xff\x0f garbage")
    assert _code(info.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert spy.prompts == []
    statuses = [r["status"] for r in db_rows(tiny_server, "audit_records") if r["event_type"] == "invalid"]
    assert statuses == ["RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"]
    # Still serving afterwards.
    assert tiny_server.inference.Generate(request("Where is my parcel?")).request_id


def test_no_answer_without_an_audit_record(
    tiny_server: ServerHarness, spy: SpyEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tiny_server.server.audit
    assert store is not None

    def unavailable(event: object) -> object:
        raise AuditUnavailable("database unreachable")

    monkeypatch.setattr(store, "append", unavailable)
    with pytest.raises(grpc.RpcError) as info:
        tiny_server.inference.Generate(request())
    assert _code(info.value) == grpc.StatusCode.UNAVAILABLE
    assert "database unreachable" not in info.value.details()  # type: ignore[attr-defined]
    assert spy.prompts == []


def test_health_reflection_and_metrics(tiny_server: ServerHarness) -> None:
    health = health_pb2_grpc.HealthStub(tiny_server.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="custos.v1.Inference")).status
        == health_pb2.HealthCheckResponse.SERVING
    )

    stub = reflection_pb2_grpc.ServerReflectionStub(tiny_server.channel)
    answers = list(
        stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    )
    services = {s.name for s in answers[0].list_services_response.service}
    assert {
        "custos.v1.Inference",
        "custos.v1.Privacy",
        "custos.v1.Audit",
        "custos.v1.Feedback",
        "custos.v1.Admin",
        "grpc.health.v1.Health",
    } <= services

    tiny_server.inference.Generate(request())
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{tiny_server.server.metrics_port}/metrics").read().decode()
    )
    assert 'custos_requests_total{code="OK",rpc="Generate"} 1.0' in body
    assert 'custos_pii_entities_total{entity_type="EMAIL_ADDRESS"} 1.0' in body
    assert "custos_request_latency_seconds_count" in body
    assert contains_any(body, PII) == []


def test_audit_query_get_and_cli(tiny_server: ServerHarness) -> None:
    response = tiny_server.inference.Generate(request())
    page = tiny_server.audit.Query(audit_pb2.AuditQueryRequest(event_type="generate", page_size=1))
    assert len(page.records) == 1 and page.next_page_token
    assert page.records[0].phase == "completion" and page.records[0].request_id == response.request_id
    second = tiny_server.audit.Query(
        audit_pb2.AuditQueryRequest(event_type="generate", page_size=1, page_token=page.next_page_token)
    )
    assert second.records[0].id == response.request_id

    got = tiny_server.audit.Get(audit_pb2.AuditGetRequest(id=response.request_id))
    assert got.row_hash == second.records[0].row_hash and json.loads(got.payload_json)["id"] == got.id
    with pytest.raises(grpc.RpcError) as info:
        tiny_server.audit.Get(audit_pb2.AuditGetRequest(id="no-such-record"))
    assert _code(info.value) == grpc.StatusCode.NOT_FOUND

    reads = tiny_server.audit.Query(audit_pb2.AuditQueryRequest(event_type="audit_read"))
    assert len(reads.records) >= 2

    data_dir = str(tiny_server.server.settings.data_dir)
    result = CliRunner().invoke(
        cli_app, ["audit", "query", "--data-dir", data_dir, "--event-type", "generate"]
    )
    assert result.exit_code == 0, result.output
    assert "generate" in result.output and "completion" in result.output
    result = CliRunner().invoke(cli_app, ["audit", "verify", "--data-dir", data_dir])
    assert result.exit_code == 0, result.output
    assert "intact" in result.output


def test_a_failing_stage_is_audited_and_reported_without_its_text(
    tiny_server: ServerHarness, spy: SpyEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = tiny_server.server.flows
    assert pipeline is not None
    pseudonymizer = pipeline.privacy._pseudonymizer

    def broken(calls: list[list[str]]) -> object:
        raise RuntimeError(f"analyzer crashed on {calls[0][0]}")

    monkeypatch.setattr(pseudonymizer, "analyze_many", broken)
    with pytest.raises(grpc.RpcError) as info:
        tiny_server.inference.Generate(request())
    assert _code(info.value) == grpc.StatusCode.INTERNAL
    details = info.value.details()  # type: ignore[attr-defined]
    assert details.startswith("internal error (request id ") and contains_any(details, PII) == []
    assert spy.prompts == []
    failures = [r for r in db_rows(tiny_server, "audit_records") if r["status"] == "INTERNAL"]
    assert len(failures) == 1
    payload = json.loads(failures[0]["payload"])  # type: ignore[arg-type]
    assert payload["event_type"] == "generate" and payload["details"]["failed_stage"] == "privacy"
    assert contains_any(failures[0]["payload"], PII) == []


def test_cli_help_describes_each_command() -> None:
    result = CliRunner().invoke(cli_app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "audit", "model"):
        assert command in result.output
    for args, words in ((["audit", "--help"], ("query", "verify")), (["model", "--help"], ("prepare",))):
        sub = CliRunner().invoke(cli_app, args)
        assert sub.exit_code == 0 and all(w in sub.output for w in words)
