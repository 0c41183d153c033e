"""Transport, authentication, the permission matrix, capacity limits and idempotency, over a real socket."""

from __future__ import annotations

import json
import logging
import re
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from presidio_analyzer import AnalyzerEngine
from typer.testing import CliRunner

from custos.cli.main import app as cli_app
from custos.security.auth import ROLES, RPC_PERMISSIONS
from custos.security.tls import TLSPaths, init_dev_certs, issue_cert, make_ca
from custos.server.app import SERVICES, Components, CustosServer
from custos.server.settings import load_settings
from custos.testing.builders import generate_request
from custos.testing.server import ScriptedEngine, ScriptedServer, ServerHarness, make_server
from custos.v1 import inference_pb2_grpc

README = Path(__file__).resolve().parents[2] / "README.md"
REPLY = "Hello <PERSON_1>, your parcel is on its way."

# The role table of ARCHITECTURE.md, written out independently of the code under test.
EXPECTED_ROLES = {
    "inference": {"generate", "reidentify", "anonymize", "classify", "feedback.submit"},
    "compliance": {"audit.read", "feedback.read"},
    "compliance-transcripts": {"audit.read", "feedback.read", "transcript.read"},
    "admin": {"keys.admin", "subjects.admin", "tokens.admin"},
    "inference-anonymous": {"generate", "anonymize", "classify", "feedback.submit"},
}
# What an authorized caller gets for an empty request; a newly implemented RPC must be added here.
EMPTY_REQUEST_CODE = {
    "/custos.v1.Inference/Generate": grpc.StatusCode.INVALID_ARGUMENT,
    "/custos.v1.Inference/GenerateStream": grpc.StatusCode.INVALID_ARGUMENT,
    "/custos.v1.Audit/Query": grpc.StatusCode.OK,
    "/custos.v1.Audit/Get": grpc.StatusCode.INVALID_ARGUMENT,
    "/custos.v1.Audit/Verify": grpc.StatusCode.OK,
    "/custos.v1.Audit/Export": grpc.StatusCode.OK,
    "/custos.v1.Privacy/Anonymize": grpc.StatusCode.INVALID_ARGUMENT,
    "/custos.v1.Audit/GetTranscript": grpc.StatusCode.INVALID_ARGUMENT,
    "/custos.v1.Admin/EraseSubject": grpc.StatusCode.INVALID_ARGUMENT,
    "/custos.v1.Admin/ExportSubject": grpc.StatusCode.INVALID_ARGUMENT,
    "/custos.v1.Inference/Classify": grpc.StatusCode.INVALID_ARGUMENT,
    "/custos.v1.Feedback/Submit": grpc.StatusCode.INVALID_ARGUMENT,
    "/custos.v1.Feedback/Satisfaction": grpc.StatusCode.OK,
}
METHODS = [(f"/{s.full_name}/{m.name}", m.server_streaming) for s in SERVICES for m in s.methods]
CALLERS = [None, "no-roles", *sorted(EXPECTED_ROLES)]


def request(content: str = "Hi, I am John Smith. Where is my parcel?", **fields: Any) -> Any:
    return generate_request(content, **fields)


def call_code(channel: grpc.Channel, method: str, streaming: bool, payload: bytes = b"") -> grpc.StatusCode:
    try:
        if streaming:
            list(channel.unary_stream(method)(payload, timeout=20))
        else:
            channel.unary_unary(method)(payload, timeout=20)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture
def scripted(scripted_server: ScriptedServer) -> tuple[ServerHarness, ScriptedEngine]:
    return scripted_server(REPLY, chunk=4)


@pytest.fixture(scope="module")
def matrix_server(
    tmp_path_factory: pytest.TempPathFactory, analyzer: AnalyzerEngine
) -> Iterator[tuple[ServerHarness, dict[str | None, grpc.Channel]]]:
    tmp = tmp_path_factory.mktemp("matrix")
    # Every RPC is called without credentials: more failed attempts than the default burst allows.
    with make_server(tmp, analyzer, ScriptedEngine(REPLY), auth_failure_burst=1000) as harness:
        channels: dict[str | None, grpc.Channel] = {None: harness.anonymous_channel()}
        channels["no-roles"] = harness.channel_for(principal="nobody")
        for role in EXPECTED_ROLES:
            channels[role] = harness.channel_for(role)
        yield harness, channels


def test_role_table_matches_the_architecture() -> None:
    assert {role: set(perms) for role, perms in ROLES.items()} == EXPECTED_ROLES


@pytest.mark.parametrize(("method", "streaming"), METHODS, ids=[m for m, _ in METHODS])
@pytest.mark.parametrize("role", CALLERS, ids=[str(c) for c in CALLERS])
def test_permission_matrix(
    matrix_server: tuple[ServerHarness, dict[str | None, grpc.Channel]],
    method: str,
    streaming: bool,
    role: str | None,
) -> None:
    _, channels = matrix_server
    if role is None:
        expected = grpc.StatusCode.UNAUTHENTICATED
    elif RPC_PERMISSIONS.get(method) not in EXPECTED_ROLES.get(role, set()):
        expected = grpc.StatusCode.PERMISSION_DENIED  # includes every RPC without a table entry
    else:
        expected = EMPTY_REQUEST_CODE.get(method, grpc.StatusCode.UNIMPLEMENTED)
    assert call_code(channels[role], method, streaming) == expected


def test_denials_are_audited_and_public_services_stay_open(
    matrix_server: tuple[ServerHarness, dict[str | None, grpc.Channel]],
) -> None:
    harness, channels = matrix_server
    before = len(harness.audit_rows("denied"))
    assert call_code(channels[None], "/custos.v1.Audit/Verify", False) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        call_code(channels["inference"], "/custos.v1.Audit/Verify", False)
        == grpc.StatusCode.PERMISSION_DENIED
    )
    harness.flush_denials()  # unauthenticated refusals are aggregated per client address and interval
    denied = harness.audit_rows("denied")[before:]
    by_actor = {d["actor"]: d for d in denied}
    assert set(by_actor) == {"unauthenticated", "inference"}
    assert (by_actor["inference"]["status"], by_actor["inference"]["rpc"]) == ("PERMISSION_DENIED", "Verify")
    assert by_actor["inference"]["payload"]["details"]["permission"] == "audit.read"
    unauthenticated = by_actor["unauthenticated"]["payload"]["details"]
    assert by_actor["unauthenticated"]["status"] == "UNAUTHENTICATED"
    assert "/custos.v1.Audit/Verify" in unauthenticated.get("methods", {unauthenticated["method"]: 1})
    health = health_pb2_grpc.HealthStub(channels[None])
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channels[None])
    answer = next(
        iter(
            reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
    )
    assert "custos.v1.Inference" in {s.name for s in answer.list_services_response.service}


def test_an_rpc_missing_from_the_table_is_denied(
    matrix_server: tuple[ServerHarness, dict[str | None, grpc.Channel]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import custos.security.auth as auth

    table = dict(auth.RPC_PERMISSIONS)
    del table["/custos.v1.Audit/Verify"]
    monkeypatch.setattr(auth, "RPC_PERMISSIONS", table)
    _, channels = matrix_server
    assert (
        call_code(channels["compliance"], "/custos.v1.Audit/Verify", False)
        == grpc.StatusCode.PERMISSION_DENIED
    )


def test_reidentify_needs_its_permission(scripted: tuple[ServerHarness, ScriptedEngine]) -> None:
    harness, engine = scripted
    anonymous_inference = inference_pb2_grpc.InferenceStub(harness.channel_for("inference-anonymous"))
    assert anonymous_inference.Generate(request()).text == REPLY  # placeholders only
    for call in (anonymous_inference.Generate, lambda r: list(anonymous_inference.GenerateStream(r))):
        with pytest.raises(grpc.RpcError) as info:
            call(request(reidentify=True))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert info.value.details().startswith("reidentify")
    assert len(engine.calls) == 1
    denied = harness.audit_rows("denied")
    assert [d["payload"]["details"]["permission"] for d in denied] == ["reidentify", "reidentify"]
    assert "John Smith" in harness.inference.Generate(request(reidentify=True)).text


@pytest.mark.parametrize("kind", ["missing", "malformed", "wrong-secret", "unknown-id", "expired", "revoked"])
def test_bad_credentials_are_unauthenticated(
    scripted: tuple[ServerHarness, ScriptedEngine], kind: str
) -> None:
    harness, engine = scripted
    tokens = harness.server.tokens
    assert tokens is not None
    good = harness.create_token("inference")
    token_id, secret = good.split(".")
    if kind == "missing":
        channel = harness.anonymous_channel()
    else:
        if kind == "expired":
            token, _ = tokens.create("old", ["inference"], actor="test", expires_in=timedelta(seconds=-1))
        elif kind == "revoked":
            tokens.revoke(token_id, actor="test")
            token = good
        else:
            token = {
                "malformed": "not-a-token",
                "wrong-secret": f"{token_id}.{secret[::-1]}",
                "unknown-id": f"{'0' * 16}.{secret}",
            }[kind]
        channel = harness.channel_with_token(token)
    with pytest.raises(grpc.RpcError) as info:
        inference_pb2_grpc.InferenceStub(channel).Generate(request())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert info.value.details() == "missing or invalid credentials"
    assert engine.calls == []
    assert harness.inference.Generate(request()).request_id  # the server keeps serving good tokens


def test_tokens_are_stored_as_sha256_only(scripted: tuple[ServerHarness, ScriptedEngine]) -> None:
    harness, _ = scripted
    token = harness.create_token("compliance", principal="auditor")
    token_id, secret = token.split(".")
    assert len(secret) == 43  # 256 bits, urlsafe base64
    stored = harness.rows("SELECT * FROM access_tokens")
    assert secret not in json.dumps(stored, default=str)
    import hashlib

    mine = [r for r in stored if r["id"] == token_id]
    assert mine[0]["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    changes = harness.audit_rows("token_change")
    assert {c["payload"]["details"]["token_id"] for c in changes} >= {token_id}
    assert secret not in json.dumps([c["payload"] for c in changes])


def test_first_start_makes_private_tls_files_and_refuses_plaintext_clients(
    scripted: tuple[ServerHarness, ScriptedEngine],
) -> None:
    harness, _ = scripted
    settings = harness.server.settings
    for path in (*TLSPaths.in_dir(settings.tls_dir).all(), settings.admin_token_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(settings.tls_dir.stat().st_mode) == 0o700
    plain = grpc.insecure_channel(harness.target)
    with pytest.raises(grpc.RpcError) as info:
        inference_pb2_grpc.InferenceStub(plain).Generate(request(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    plain.close()
    assert [r["actor"] for r in harness.audit_rows("config_change")] == ["custos:bootstrap"]


def test_certificates_reload_without_restart(scripted: tuple[ServerHarness, ScriptedEngine]) -> None:
    harness, _ = scripted
    paths = TLSPaths.in_dir(harness.server.settings.tls_dir)
    old_ca = paths.ca_cert.read_bytes()
    init_dev_certs(paths, "127.0.0.1:0", force=True)  # a new CA and server certificate on disk
    new_ca = paths.ca_cert.read_bytes()
    assert new_ca != old_ca

    def generate_with(ca: bytes) -> grpc.StatusCode:
        creds = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates=ca),
            grpc.access_token_call_credentials(harness.admin_token),
        )
        with grpc.secure_channel(harness.target, creds) as channel:
            try:
                inference_pb2_grpc.InferenceStub(channel).Generate(request(), timeout=10)
            except grpc.RpcError as err:
                return err.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    assert generate_with(new_ca) == grpc.StatusCode.OK
    assert generate_with(old_ca) == grpc.StatusCode.UNAVAILABLE
    assert harness.server.credentials is not None and harness.server.credentials.reloads == 1


def test_mutual_tls_identity(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    client_ca, client_ca_key = make_ca("clients")
    (tmp_path / "clients.pem").write_bytes(client_ca)
    cert, key = issue_cert(client_ca, client_ca_key, "crm-backend", client=True)
    with make_server(
        tmp_path,
        analyzer,
        ScriptedEngine(REPLY),
        tls_client_ca_file=tmp_path / "clients.pem",
        client_cert_roles={"crm-backend": ["inference"]},
    ) as harness:
        creds = harness.channel_credentials(certificate_chain=cert, private_key=key)
        with grpc.secure_channel(harness.target, creds) as channel:
            response = inference_pb2_grpc.InferenceStub(channel).Generate(request())
            assert call_code(channel, "/custos.v1.Audit/Verify", False) == grpc.StatusCode.PERMISSION_DENIED
        record = next(r for r in harness.audit_rows("generate") if r["id"] == response.request_id)
        actor = record["payload"]["details"]["actor"]
        assert record["actor"] == "crm-backend" and actor["role"] == "inference"
        assert actor["fingerprint"] and len(actor["fingerprint"]) == 64
        # Without a client certificate the handshake fails.
        with grpc.secure_channel(harness.target, harness.channel_credentials()) as bare:
            assert call_code(bare, "/custos.v1.Audit/Verify", False) == grpc.StatusCode.UNAVAILABLE


def test_plaintext_only_when_configured_with_a_warning(
    tmp_path: Path, analyzer: AnalyzerEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="custos.server")
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY), plaintext=True) as harness:
        assert harness.inference.Generate(request()).text == REPLY
        assert not harness.server.settings.tls_dir.exists()
        with pytest.raises(grpc.RpcError) as info:
            inference_pb2_grpc.InferenceStub(harness.anonymous_channel()).Generate(request())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert any("PLAINTEXT" in r.getMessage() for r in caplog.records)


def test_rate_limit_rejects_at_once_with_a_retry_hint(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    engine = ScriptedEngine(REPLY)
    with make_server(tmp_path, analyzer, engine, rate_limit_per_s=0.01, rate_limit_burst=2) as harness:
        harness.inference.Generate(request())
        harness.inference.Generate(request())
        with pytest.raises(grpc.RpcError) as info:
            harness.inference.Generate(request())
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(info.value.trailing_metadata())
        assert 1000 < int(trailers["retry-after-ms"]) <= 100_000
        assert len(engine.calls) == 2
        # Another principal has its own bucket.
        other = inference_pb2_grpc.InferenceStub(harness.channel_for("inference"))
        assert other.Generate(request()).text == REPLY
        denied = harness.audit_rows("denied")
        assert [(d["status"], d["payload"]["details"]["reason"]) for d in denied] == [
            ("RESOURCE_EXHAUSTED", "rate")
        ]


def test_concurrency_limit_per_principal(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    engine = ScriptedEngine("x" * 40, chunk=1, step_delay=0.05)
    with make_server(tmp_path, analyzer, engine, max_in_flight_per_principal=1) as harness:
        stream = harness.inference.GenerateStream(request())
        first = next(stream)  # the stream holds its slot until it ends
        assert first.WhichOneof("event") == "start"
        with pytest.raises(grpc.RpcError) as info:
            harness.inference.Generate(request())
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry-after-ms" in dict(info.value.trailing_metadata())
        assert list(stream)[-1].WhichOneof("event") == "end"
        assert harness.inference.Generate(request()).request_id  # the slot is free again


def test_idempotent_retry_returns_the_first_answer(scripted: tuple[ServerHarness, ScriptedEngine]) -> None:
    harness, engine = scripted
    req = request(idempotency_key="retry-7", reidentify=True)
    first = harness.inference.Generate(req)
    again = harness.inference.Generate(req)
    assert again == first and "John Smith" in first.text
    assert len(engine.calls) == 1
    assert len(harness.audit_rows("generate")) == 2  # one request and one completion record
    stored = harness.rows("SELECT * FROM idempotency_keys")
    assert len(stored) == 1 and stored[0]["request_id"] == first.request_id
    assert b"John Smith" not in stored[0]["response"] and b"parcel" not in stored[0]["response"]
    assert "retry-7" not in json.dumps(stored, default=str)

    with pytest.raises(grpc.RpcError) as info:
        harness.inference.Generate(request("Another question", idempotency_key="retry-7"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("idempotency_key")
    with pytest.raises(grpc.RpcError) as info:
        list(harness.inference.GenerateStream(req))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [r["status"] for r in harness.audit_rows("invalid")] == ["INVALID_ARGUMENT", "INVALID_ARGUMENT"]
    # The key belongs to its principal: another caller's same key is a new call.
    other = inference_pb2_grpc.InferenceStub(harness.channel_for("inference"))
    assert other.Generate(req).request_id != first.request_id
    assert len(engine.calls) == 2


def test_concurrent_duplicates_wait_for_the_first(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    engine = ScriptedEngine(REPLY, chunk=2, step_delay=0.02)
    with make_server(tmp_path, analyzer, engine) as harness:
        req = request(idempotency_key="dup")
        barrier = threading.Barrier(4)

        def call(_: int) -> str:
            barrier.wait()
            return str(harness.inference.Generate(req).request_id)

        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(call, range(4)))
        assert len(set(ids)) == 1
        assert len(engine.calls) == 1
        assert len(harness.audit_rows("generate")) == 2


def test_readme_client_example_runs(
    tmp_path: Path,
    analyzer: AnalyzerEngine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    snippet = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert snippet is not None
    code = snippet.group(1)
    assert (
        "127.0.0.1:50051" in code and "custos-data/tls/ca.pem" in code and "custos-data/admin.token" in code
    )
    settings = load_settings(data_dir=tmp_path / "custos-data", listen="127.0.0.1:0", metrics_listen="")
    engine = ScriptedEngine(REPLY)
    with ServerHarness(CustosServer(settings, Components(analyzer=analyzer, engine=engine))) as harness:
        monkeypatch.chdir(tmp_path)
        exec(compile(code.replace("127.0.0.1:50051", harness.target), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "Hello Maria Garcia, your parcel" in printed
    assert len(engine.calls) == 2


def test_certs_and_tokens_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    data = str(tmp_path / "d")
    first = runner.invoke(cli_app, ["certs", "init", "--data-dir", data])
    assert first.exit_code == 0, first.output
    ca = (tmp_path / "d" / "tls" / "ca.pem").read_bytes()
    again = runner.invoke(cli_app, ["certs", "init", "--data-dir", data])
    assert again.exit_code == 1 and "--force" in again.output
    assert (tmp_path / "d" / "tls" / "ca.pem").read_bytes() == ca
    forced = runner.invoke(cli_app, ["certs", "init", "--data-dir", data, "--force"])
    assert forced.exit_code == 0 and (tmp_path / "d" / "tls" / "ca.pem").read_bytes() != ca

    created = runner.invoke(
        cli_app, ["tokens", "create", "--principal", "crm", "--role", "inference", "--data-dir", data]
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    token_id = token.split(".")[0]
    listed = runner.invoke(cli_app, ["tokens", "list", "--data-dir", data])
    assert (
        token_id in listed.output and "active" in listed.output and token.split(".")[1] not in listed.output
    )
    assert runner.invoke(cli_app, ["tokens", "revoke", token_id, "--data-dir", data]).exit_code == 0
    assert "revoked" in runner.invoke(cli_app, ["tokens", "list", "--data-dir", data]).output
    as_json = json.loads(
        runner.invoke(cli_app, ["tokens", "list", "--data-dir", data, "--format", "json"]).stdout
    )
    mine = next(t for t in as_json if t["id"] == token_id)
    assert mine["principal"] == "crm" and mine["roles"] == ["inference"] and mine["state"] == "revoked"
    assert all(token.split(".")[1] not in json.dumps(t) for t in as_json)
    bad = runner.invoke(
        cli_app, ["tokens", "create", "--principal", "x", "--role", "root", "--data-dir", data]
    )
    assert bad.exit_code == 2 and "unknown role" in bad.output
    audit = runner.invoke(cli_app, ["audit", "query", "--data-dir", data, "--event-type", "token_change"])
    assert audit.output.count("token_change") == 2


def test_first_start_prints_how_to_connect(scripted: tuple[ServerHarness, ScriptedEngine]) -> None:
    from custos.cli.main import connection_hint

    harness, _ = scripted
    settings = harness.server.settings
    lines = "\n".join(connection_hint(settings, 50051, harness.server.security))
    assert str(settings.tls_dir / "ca.pem") in lines and str(settings.admin_token_file) in lines
    assert harness.admin_token not in lines  # the secret stays in its 0600 file
    restarted = "\n".join(connection_hint(settings, 50051, None))
    assert str(settings.admin_token_file) not in restarted
