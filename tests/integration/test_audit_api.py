"""The compliance API and CLI over a real server: filters, Export, audit_read records, formats, remote CLI."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from custos.audit.export import verify_export
from custos.cli.main import app as cli_app
from custos.testing.builders import generate_request
from custos.testing.server import ServerHarness
from custos.v1 import audit_pb2, inference_pb2

QUESTION = "Hi, I am John Smith, email john.smith@example.com. Where is my parcel?"


def _generate(harness: ServerHarness, **fields: Any) -> inference_pb2.GenerateResponse:
    request = generate_request(QUESTION, max_new_tokens=4, **fields)
    return harness.inference.Generate(request)  # type: ignore[no-any-return]


def _reads(harness: ServerHarness) -> list[dict[str, Any]]:
    page = harness.audit.Query(audit_pb2.AuditQueryRequest(event_type="audit_read", page_size=500))
    return [json.loads(r.payload_json) for r in reversed(page.records)]


def _export(harness: ServerHarness, **request: Any) -> bytes:
    chunks = harness.audit.Export(audit_pb2.AuditExportRequest(**request))
    return b"".join(c.data for c in chunks)


@pytest.fixture
def served(tiny_server: ServerHarness) -> ServerHarness:
    _generate(tiny_server, purpose="support")
    return tiny_server


def _request_seq(harness: ServerHarness) -> int:
    """Seq of the first generate request record (records written at start come before it)."""
    records = harness.audit.Query(audit_pb2.AuditQueryRequest(event_type="generate", phase="request")).records
    return min(r.seq for r in records)


def test_query_filters_by_entity_type_model_and_purpose(served: ServerHarness) -> None:
    def seqs(**filters: Any) -> list[int]:
        return [r.seq for r in served.audit.Query(audit_pb2.AuditQueryRequest(**filters)).records]

    first = _request_seq(served)
    assert seqs(entity_type="EMAIL_ADDRESS") == [first]  # the request record carries the findings
    assert seqs(entity_type="IBAN_CODE") == []
    assert seqs(purpose="support") == [first]
    model = served.audit.Query(audit_pb2.AuditQueryRequest(event_type="generate")).records[0].model
    assert seqs(model=model, event_type="generate") == [first + 1, first]
    assert seqs(model="other-model") == []
    with pytest.raises(grpc.RpcError) as info:
        served.audit.Query(audit_pb2.AuditQueryRequest(entity_type="bad type"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "entity_type" in (
        info.value.details() or ""
    )
    refused = [r for r in _reads(served) if r["status"] == "INVALID_ARGUMENT"]
    assert refused and refused[-1]["details"]["field"] == "entity_type"


def test_jsonl_export_verifies_offline_and_is_itself_audited(served: ServerHarness) -> None:
    data = _export(served, filter=audit_pb2.AuditQueryRequest(event_type="generate"))
    lines = data.splitlines()
    key = served.server.trail.signer.public_key_hex  # type: ignore[union-attr]
    report = verify_export(lines, expected_public_key=key)
    assert report.ok and report.records == 2 and report.checkpoints >= 1, report
    exports = [r for r in _reads(served) if r["details"]["kind"] == "export"]
    assert len(exports) == 1 and exports[0]["details"]["filters"] == {"event_type": "generate"}
    # the export was recorded before it was produced, so it appears in it as a link
    assert exports[0]["seq"] <= report.head.seq  # type: ignore[union-attr]


def test_csv_export_and_bad_format(served: ServerHarness) -> None:
    rows = list(csv.DictReader(io.StringIO(_export(served, format="csv").decode())))
    generate = [r for r in rows if r["event_type"] == "generate"]
    assert [r["phase"] for r in generate] == ["request", "completion"]
    assert [int(r["seq"]) for r in rows] == list(range(1, len(rows) + 1))
    with pytest.raises(grpc.RpcError) as info:
        _export(served, format="xml")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "format" in (info.value.details() or "")


def test_every_read_rpc_leaves_an_audit_read_record(served: ServerHarness) -> None:
    record_id = served.audit.Query(audit_pb2.AuditQueryRequest()).records[0].id
    served.audit.Get(audit_pb2.AuditGetRequest(id=record_id))
    verify = served.audit.Verify(audit_pb2.AuditVerifyRequest())
    assert verify.ok and verify.head_seq == verify.count
    _export(served)
    kinds = [r["details"]["kind"] for r in _reads(served)]
    assert kinds == ["query", "get", "verify", "export"]
    assert all(r["actor"] and r["details"]["actor"]["peer"] for r in _reads(served))


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli_app, list(args))


def test_cli_formats_show_export_and_offline_verify(served: ServerHarness, tmp_path: Path) -> None:
    data_dir = str(served.server.settings.data_dir)
    as_json = _cli("audit", "query", "--data-dir", data_dir, "--event-type", "generate", "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["phase"] for r in rows] == ["completion", "request"]
    as_csv = _cli("audit", "query", "--data-dir", data_dir, "--entity-type", "PERSON", "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["seq"] for r in parsed] == [str(_request_seq(served))]
    table = _cli("audit", "query", "--data-dir", data_dir, "--event-type", "generate")
    assert "completion" in table.stdout and "request" in table.stdout
    show = _cli("audit", "show", rows[1]["id"], "--data-dir", data_dir, "--format", "json")
    assert json.loads(show.stdout)["details"]["pii"]["counts"]["EMAIL_ADDRESS"] == 1
    bad = _cli("audit", "query", "--data-dir", data_dir, "--format", "xml")
    assert bad.exit_code == 2

    target = tmp_path / "export.jsonl"
    exported = _cli("audit", "export", "--data-dir", data_dir, "--output", str(target), "--actor", "admin")
    assert exported.exit_code == 0, exported.output
    key = served.server.trail.signer.public_key_hex  # type: ignore[union-attr]
    ok = _cli("audit", "verify", "--export", str(target), "--public-key", key, "--format", "json")
    assert ok.exit_code == 0 and json.loads(ok.stdout.splitlines()[-1])["ok"] is True, ok.output
    lines = target.read_bytes().splitlines()
    target.write_bytes(b"\n".join(lines[:2] + lines[3:]) + b"\n")  # drop row 2
    broken = _cli("audit", "verify", "--export", str(target), "--format", "json")
    assert broken.exit_code == 1
    assert json.loads(broken.stdout.splitlines()[-1])["first_bad_seq"] == 2

    local = _cli("audit", "verify", "--data-dir", data_dir)
    assert local.exit_code == 0 and "signed checkpoint" in local.stdout, local.output
    kinds = [r["details"]["kind"] for r in _reads(served) if r["rpc"].startswith("cli.")]
    assert kinds == ["query", "query", "query", "show", "export", "verify"]


class _CapturingAudit:
    """A stand-in Audit server that records the metadata of each call."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    def verify(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.metadata.append({m.key: m.value for m in context.invocation_metadata()})  # type: ignore[misc]
        return audit_pb2.AuditVerifyResponse(ok=True, count=3, head_seq=3, checkpoints=1).SerializeToString()


@pytest.fixture
def capturing() -> Iterator[tuple[str, _CapturingAudit]]:
    fake = _CapturingAudit()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler(
        "custos.v1.Audit", {"Verify": grpc.unary_unary_rpc_method_handler(fake.verify)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", fake
    server.stop(None)


def test_remote_cli_sends_the_bearer_token(capturing: tuple[str, _CapturingAudit]) -> None:
    target, fake = capturing
    result = _cli("audit", "verify", "--server", target, "--token", "tok.secret", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == 3
    assert fake.metadata[0]["authorization"] == "Bearer tok.secret"
    assert _cli("audit", "verify", "--token", "x").exit_code == 2  # a token without --server is refused


def test_remote_cli_against_the_real_server(served: ServerHarness) -> None:
    settings = served.server.settings
    result = _cli(
        "audit", "query", "--server", served.target, "--ca-file", str(settings.tls_dir / "ca.pem"),
        "--token", served.admin_token, "--event-type", "generate", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["phase"] for x in result.stdout.splitlines()] == ["completion", "request"]


def test_explanation_records_carry_model_parameters_findings_latency_and_confidence(
    served: ServerHarness,
) -> None:
    page = served.audit.Query(audit_pb2.AuditQueryRequest(event_type="generate"))
    completion, request = (json.loads(r.payload_json)["details"] for r in page.records)
    assert set(request["model_info"]) >= {
        "name", "source_sha256", "cache_digest", "quantization", "precision", "device",
        "prompt_format", "prompt_format_version", "prompt_format_sha256",
    }  # fmt: skip
    assert set(request["parameters"]) >= {"max_new_tokens", "temperature", "top_p", "seed"}
    finding = request["pii"]["findings"][0]
    assert {"entity_type", "start", "end", "score", "recognizer", "explanation"} <= set(finding)
    assert request["purpose"] == "support" and request["retention_class"]
    assert set(request["actor"]) == {"principal", "role", "peer", "fingerprint"}
    assert set(completion["latency_ms"]) >= {"privacy", "audit", "queue", "prefill", "decode", "transcript"}
    assert set(completion["confidence"]) == {"mean_logprob", "min_logprob"}
    assert completion["finish_reason"] and set(completion["usage"]) == {"prompt_tokens", "completion_tokens"}


@pytest.fixture
def purpose_server(tmp_path: Path, analyzer: Any, spy: Any) -> Iterator[ServerHarness]:
    from custos.testing.server import make_server

    with make_server(tmp_path, analyzer, spy, purposes={"admin": ["support"]}) as harness:
        yield harness


@pytest.mark.parametrize("purpose", ["marketing", None])
def test_purpose_outside_the_callers_configured_ones_is_refused_and_audited(
    purpose_server: ServerHarness, purpose: str | None
) -> None:
    _generate(purpose_server, purpose="support")
    with pytest.raises(grpc.RpcError) as info:
        _generate(purpose_server, **({"purpose": purpose} if purpose else {}))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "purpose" in (info.value.details() or "")
    invalid = purpose_server.audit.Query(audit_pb2.AuditQueryRequest(event_type="invalid")).records
    assert [json.loads(r.payload_json)["details"]["field"] for r in invalid] == ["purpose"]
    assert "marketing" not in invalid[0].payload_json


def test_report_processing_and_archive_from_the_cli(served: ServerHarness, tmp_path: Path) -> None:
    data_dir = str(served.server.settings.data_dir)
    report = _cli("report", "processing", "--data-dir", data_dir, "--format", "json")
    assert report.exit_code == 0, report.output
    body = json.loads(report.stdout)
    assert body["purposes"] == {"support": 1}
    assert {"PERSON", "EMAIL_ADDRESS"} <= set(body["categories_of_personal_data"])
    assert body["recipients"] == {"admin": 1}
    assert body["retention"]["configured_class"] == served.server.settings.retention_class

    archived = _cli(
        "audit", "archive", "--data-dir", data_dir, "--before", "2999-01-01", "--dir", str(tmp_path)
    )
    assert archived.exit_code == 0, archived.output
    files = list(tmp_path.glob("audit-archive-*.jsonl"))
    assert len(files) == 1 and verify_export(files[0].read_bytes().splitlines()).ok
    _generate(served, purpose="support")
    verify = _cli("audit", "verify", "--data-dir", data_dir, "--format", "json")
    assert verify.exit_code == 0, verify.output
    result = json.loads(verify.stdout)
    assert result["ok"] and result["count"] >= 2 and result["head_seq"] > result["count"]
    assert result["mode"] == "full"
    kinds = [r["details"]["kind"] for r in _reads(served) if r["rpc"].startswith("cli.")]
    assert kinds[-2:] == ["archive", "verify"]

    assert served.server.trail is not None
    served.server.trail.writer.write("head")  # a signed checkpoint of the head, as the server writes
    _cli("audit", "verify", "--data-dir", data_dir)  # passes and records the verified state at it
    _generate(served, purpose="support")
    again = _cli("audit", "verify", "--data-dir", data_dir, "--incremental", "--format", "json")
    assert again.exit_code == 0, again.output
    incremental = json.loads(again.stdout)
    assert incremental["ok"] and incremental["mode"] == "incremental"
    assert incremental["count"] == incremental["head_seq"] - incremental["resumed_from"] > 0


def test_seeded_values_sent_to_the_audit_rpcs_never_reach_the_trail(served: ServerHarness) -> None:
    email, phone = "john.smith@example.com", "212-555-0187"
    served.audit.Query(
        audit_pb2.AuditQueryRequest(conversation_ref=email, subject_ref=phone, request_id=email)
    )
    with pytest.raises(grpc.RpcError) as info:
        served.audit.Get(audit_pb2.AuditGetRequest(id=email))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    _export(served, filter=audit_pb2.AuditQueryRequest(subject_ref=email), format="csv")
    reads = _reads(served)
    assert [(r["details"]["kind"], r["status"]) for r in reads] == [
        ("query", "OK"),
        ("get", "NOT_FOUND"),
        ("export", "OK"),
    ]
    everything = _export(served).decode()
    assert email not in everything and phone not in everything
