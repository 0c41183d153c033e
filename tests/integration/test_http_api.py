"""The OpenAI-compatible HTTP API against a real server on port 0 (TLS with the development CA).

The official ``openai`` package is the client for chat completions (base URL on loopback, under the network
guard); ``httpx`` is the client for the error cases, where status, headers and the error body are checked.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
from presidio_analyzer import AnalyzerEngine

from custos.security.tls import TLSPaths, init_dev_certs, issue_cert, make_ca
from custos.testing.builders import generate_request
from custos.testing.server import ScriptedEngine, ScriptedServer, ServerHarness, make_server

NAME = "John Smith"
EMAIL = "john.smith@example.com"
CARD = "4111 1111 1111 1111"
PII = (NAME, EMAIL, CARD)
QUESTION = f"Hi, I am {NAME}. My email is {EMAIL}. Please refund the charge on card {CARD}."
REPLY = "Hello <PERSON_1>, we wrote to <EMAIL_ADDRESS_1> about <CREDIT_CARD_1>."
RESTORED = f"Hello {NAME}, we wrote to {EMAIL} about {CARD}."
MODEL = "scripted"  # the ScriptedEngine's model name, the one /v1/models lists


def sdk(harness: ServerHarness, token: str | None = None) -> openai.OpenAI:
    """The official client, pointed at the server's loopback URL, trusting the development CA."""
    return openai.OpenAI(
        base_url=f"{harness.http_url}/v1",
        api_key=token or harness.admin_token,
        http_client=httpx2.Client(verify=harness.http_tls()),
        max_retries=0,
    )


def plain(harness: ServerHarness, token: str | None = None, **options: Any) -> httpx.Client:
    """A plain HTTP client; with ``token=""`` it sends no credentials."""
    headers = {} if token == "" else {"authorization": f"Bearer {token or harness.admin_token}"}
    options.setdefault("verify", harness.http_tls())
    return httpx.Client(base_url=harness.http_url, headers=headers, **options)


def chat(content: str = QUESTION, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def raw_pii(value: object) -> list[str]:
    text = str(value).lower()
    return [p for p in PII if p.lower() in text]


def records(harness: ServerHarness, request_id: str) -> list[dict[str, Any]]:
    """The generate records (request, completion) of one request id, in chain order."""
    return [r for r in harness.audit_rows("generate") if request_id in (r["id"], r["request_id"])]


def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail("condition not met in time")


@pytest.fixture
def scripted(scripted_server: ScriptedServer) -> tuple[ServerHarness, ScriptedEngine]:
    return scripted_server(REPLY, chunk=2, http_listen="127.0.0.1:0", max_request_bytes=2048)


# ---- the openai SDK ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("reidentify", "expected"), [(True, RESTORED), (False, REPLY)])
def test_sdk_unary_masks_before_the_model_and_restores_only_when_asked(
    scripted: tuple[ServerHarness, ScriptedEngine],
    network_guard: list[str],
    reidentify: bool,
    expected: str,
) -> None:
    harness, engine = scripted
    client = sdk(harness)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
        max_tokens=50,
        extra_body={"reidentify": reidentify, "purpose": "support"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == MODEL
    # The model only ever saw placeholders.
    assert [raw_pii(t.content) for t in engine.calls[-1]] == [[], []]
    assert "<PERSON_1>" in engine.calls[-1][1].content
    # The response id and x-request-id are the audit record's request id.
    assert raw.headers["x-request-id"] == completion.id
    request_record, completion_record = records(harness, completion.id)
    assert request_record["id"] == completion.id and request_record["rpc"] == "Generate"
    assert completion_record["status"] == "OK"
    usage = completion_record["payload"]["details"]["usage"]
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert completion.usage.total_tokens == usage["prompt_tokens"] + usage["completion_tokens"]
    assert raw_pii(json.dumps(request_record["payload"])) == []


@pytest.mark.parametrize(("reidentify", "expected"), [(True, RESTORED), (False, REPLY)])
def test_sdk_stream_in_openai_chunks(
    scripted: tuple[ServerHarness, ScriptedEngine],
    network_guard: list[str],
    reidentify: bool,
    expected: str,
) -> None:
    harness, engine = scripted
    stream = sdk(harness).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"reidentify": reidentify},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert {c.id for c in chunks} == {chunks[0].id}
    request_record, completion_record = records(harness, chunks[0].id)
    assert request_record["rpc"] == "GenerateStream" and completion_record["status"] == "OK"
    assert (
        chunks[-1].usage.completion_tokens
        == completion_record["payload"]["details"]["usage"]["completion_tokens"]
    )
    assert all(raw_pii(t.content) == [] for call in engine.calls for t in call)


def test_raw_stream_is_server_sent_events_ending_with_done(
    scripted: tuple[ServerHarness, ScriptedEngine],
) -> None:
    harness, _ = scripted
    with plain(harness) as client, client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    bodies = [json.loads(line[6:]) for line in lines[:-1]]
    assert {b["object"] for b in bodies} == {"chat.completion.chunk"}
    assert bodies[-1]["choices"][0]["finish_reason"] == "stop"
    assert r.headers["x-request-id"] == bodies[0]["id"]
    # Without include_usage, no usage chunk (as OpenAI).
    assert all("usage" not in b for b in bodies)


def test_the_audit_records_are_the_grpc_ones(scripted: tuple[ServerHarness, ScriptedEngine]) -> None:
    harness, _ = scripted
    grpc_id = harness.inference.Generate(
        generate_request(QUESTION, conversation_id="same-conv", max_new_tokens=50, reidentify=True)
    ).request_id
    http_id = (
        sdk(harness)
        .chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=50,
            extra_body={"reidentify": True, "conversation_id": "same-conv"},
        )
        .id
    )

    volatile = {"id", "seq", "prev_hash", "row_hash", "start_time", "end_time", "request_id", "transcript_id"}

    def comparable(record: dict[str, Any]) -> dict[str, Any]:
        payload = dict(record["payload"])
        details = dict(payload.pop("details"))
        details.pop("latency_ms", None)
        details.pop("request_id", None)
        details.pop("transcript", None)
        if "vault" in details:  # the second call of a conversation finds its vault one version on
            details["vault"] = {k: v for k, v in details["vault"].items() if k != "version"}
        details["actor"] = {k: v for k, v in details["actor"].items() if k != "peer"}
        answer = {k: v for k, v in payload.items() if k not in volatile}
        return {**answer, "details": details}

    for grpc_record, http_record in zip(records(harness, grpc_id), records(harness, http_id), strict=True):
        assert comparable(http_record) == comparable(grpc_record)
        assert http_record["conversation_ref"] == grpc_record["conversation_ref"]
        assert http_record["payload"]["details"]["actor"]["peer"].startswith("ipv4:127.0.0.1:")


def test_without_conversation_id_each_request_is_its_own_conversation(
    scripted: tuple[ServerHarness, ScriptedEngine],
) -> None:
    harness, _ = scripted
    client = sdk(harness)
    ids = [
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}]).id
        for _ in range(2)
    ]
    named = [
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": QUESTION}],
            extra_body={"conversation_id": "c-7"},
        ).id
        for _ in range(2)
    ]
    refs = [records(harness, i)[0]["conversation_ref"] for i in ids]
    assert refs[0] != refs[1]
    assert (
        records(harness, named[0])[0]["conversation_ref"] == records(harness, named[1])[0]["conversation_ref"]
    )


def test_models_lists_the_served_model(
    scripted: tuple[ServerHarness, ScriptedEngine], network_guard: list[str]
) -> None:
    harness, _ = scripted
    client = sdk(harness)
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


# ---- errors, in OpenAI's shape ----------------------------------------------------------------------


def assert_error(
    response: httpx.Response, status: int, code: str, param: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["param"] == param
    assert response.headers["x-request-id"]
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"model": "gpt-4o"}, "model"),
        ({"temperature": "warm"}, "temperature"),  # a type error: 400 naming the field, never 422
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"top_p": 0}, "top_p"),
        ({"stop": ["a"] * 9}, "stop"),
        ({"purpose": "Support Team"}, "purpose"),
        ({"conversation_id": "x" * 300}, "conversation_id"),
        ({"block_entity_types": ["CREDIT_CARD"]}, "block_entity_types"),
        ({"mystery": 1}, "mystery"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].tool_call_id"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "user", "content": "  "}]}, "messages[0].content"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ],
)
def test_invalid_requests_are_400_naming_the_field_and_audited(
    scripted: tuple[ServerHarness, ScriptedEngine], fields: dict[str, Any], param: str
) -> None:
    harness, engine = scripted
    with plain(harness) as client:
        response = client.post("/v1/chat/completions", json=chat(**fields))
    error = assert_error(response, 400, "INVALID_ARGUMENT", param)
    assert error["type"] == "invalid_request_error"
    assert engine.calls == []
    invalid = harness.audit_rows("invalid")
    assert invalid[-1]["payload"]["details"]["field"] == param and invalid[-1]["rpc"] == "Generate"


def test_malformed_json_is_400(scripted: tuple[ServerHarness, ScriptedEngine]) -> None:
    harness, _ = scripted
    with plain(harness) as client:
        for body in (b"{", b"[1, 2]", b'{"temperature": NaN}'):
            response = client.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
            assert_error(response, 400, "INVALID_ARGUMENT", "request")


def test_unsupported_fields_at_their_neutral_value_are_accepted(
    scripted: tuple[ServerHarness, ScriptedEngine],
) -> None:
    harness, _ = scripted
    neutral = {"n": 1, "tools": [], "presence_penalty": 0, "logprobs": False, "user": "u-1", "store": False}
    with plain(harness) as client:
        response = client.post("/v1/chat/completions", json=chat(**neutral))
    assert response.status_code == 200, response.text


def test_credentials(scripted: tuple[ServerHarness, ScriptedEngine]) -> None:
    harness, _ = scripted
    with plain(harness, token="") as client:
        missing = client.post("/v1/chat/completions", json=chat())
    assert_error(missing, 401, "UNAUTHENTICATED")
    assert missing.headers["www-authenticate"] == "Bearer"
    with plain(harness, token="nope.nope") as client:
        assert_error(client.post("/v1/chat/completions", json=chat()), 401, "UNAUTHENTICATED")
        assert_error(client.get("/v1/models"), 401, "UNAUTHENTICATED")
    with pytest.raises(openai.AuthenticationError):
        sdk(harness, token="nope.nope").chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    denied = harness.audit_rows("denied")
    assert {r["status"] for r in denied} == {"UNAUTHENTICATED"}
    assert all(r["payload"]["details"]["method"].startswith("/custos.v1.Inference/") for r in denied)


def test_permissions_are_the_grpc_table(scripted: tuple[ServerHarness, ScriptedEngine]) -> None:
    harness, engine = scripted
    with plain(harness, token=harness.create_token("compliance")) as client:
        assert_error(client.post("/v1/chat/completions", json=chat()), 403, "PERMISSION_DENIED")
        assert_error(client.get("/v1/models"), 403, "PERMISSION_DENIED")
    anonymous_only = harness.create_token("inference-anonymous")
    with plain(harness, token=anonymous_only) as client:
        refused = client.post("/v1/chat/completions", json=chat(reidentify=True))
        error = assert_error(refused, 403, "PERMISSION_DENIED")
        assert error["message"].startswith("reidentify:")
        assert client.post("/v1/chat/completions", json=chat()).status_code == 200
    reasons = [r["payload"]["details"]["reason"] for r in harness.audit_rows("denied")]
    assert reasons == ["rpc", "rpc", "field"]
    assert len(engine.calls) == 1


def test_blocked_entity_types_are_409(scripted: tuple[ServerHarness, ScriptedEngine]) -> None:
    harness, engine = scripted
    with plain(harness) as client:
        response = client.post("/v1/chat/completions", json=chat(privacy_mode="block"))
    assert_error(response, 409, "FAILED_PRECONDITION")
    assert engine.calls == []


def test_a_body_over_the_limit_is_413(scripted: tuple[ServerHarness, ScriptedEngine]) -> None:
    harness, _ = scripted
    with plain(harness) as client:
        response = client.post("/v1/chat/completions", json=chat("x" * 4000))
    assert_error(response, 413, "RESOURCE_EXHAUSTED")
    assert harness.audit_rows("invalid")[-1]["status"] == "RESOURCE_EXHAUSTED"


def test_unimplemented_endpoints_are_501_and_unknown_paths_404(
    scripted: tuple[ServerHarness, ScriptedEngine],
) -> None:
    harness, _ = scripted
    with plain(harness) as client:
        assert_error(client.post("/v1/embeddings", json={"input": "x"}), 501, "UNIMPLEMENTED")
        assert_error(client.get("/v1/models/gpt-4o"), 404, "NOT_FOUND")
        assert_error(client.get("/nowhere"), 404, "NOT_FOUND")


def test_draining_is_503(scripted: tuple[ServerHarness, ScriptedEngine]) -> None:
    harness, engine = scripted
    assert harness.server.watchdog is not None
    harness.server.watchdog.draining = True
    try:
        with plain(harness) as client:
            assert_error(client.post("/v1/chat/completions", json=chat()), 503, "UNAVAILABLE")
            assert client.get("/health").status_code == 503
    finally:
        harness.server.watchdog.draining = False
    with plain(harness) as client:
        assert client.get("/health").json() == {"status": "SERVING"}
    assert engine.calls == []


def test_the_rate_limit_is_429_with_retry_after(scripted_server: ScriptedServer) -> None:
    harness, _ = scripted_server(REPLY, http_listen="127.0.0.1:0", rate_limit_per_s=0.5, rate_limit_burst=1)
    with plain(harness) as client:
        assert client.post("/v1/chat/completions", json=chat()).status_code == 200
        limited = client.post("/v1/chat/completions", json=chat())
    assert_error(limited, 429, "RESOURCE_EXHAUSTED")
    assert 1 <= int(limited.headers["retry-after"]) <= 2
    assert 0 < int(limited.headers["retry-after-ms"]) <= 2000


# ---- cancellation and deadlines --------------------------------------------------------------------

SLOW_REPLY = "Ok. " * 200  # short sentences, so the stream's hold-back window releases text at once


@pytest.fixture
def slow(scripted_server: ScriptedServer) -> tuple[ServerHarness, ScriptedEngine]:
    return scripted_server(SLOW_REPLY, chunk=4, step_delay=0.02, http_listen="127.0.0.1:0")


def _cancelled_completion(harness: ServerHarness, rpc: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        done = [r for r in harness.audit_rows("generate") if r["phase"] == "completion" and r["rpc"] == rpc]
        return done[-1] if done else None

    return wait_for(find)  # type: ignore[no-any-return]


def test_a_disconnected_stream_cancels_generation(slow: tuple[ServerHarness, ScriptedEngine]) -> None:
    harness, _ = slow
    with plain(harness) as client, client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")  # the role chunk
        while not next(lines).startswith("data: "):
            pass  # the first text
    disconnected = time.monotonic()
    completion = _cancelled_completion(harness, "GenerateStream")
    stopped = time.monotonic() - disconnected
    assert completion["status"] == "CANCELLED"
    # 200 steps of 20 ms: it stopped long before the end.
    assert completion["payload"]["details"]["usage"]["completion_tokens"] < 100
    assert stopped < 2.0


def test_a_disconnected_unary_call_cancels_generation(slow: tuple[ServerHarness, ScriptedEngine]) -> None:
    harness, _ = slow
    with plain(harness, timeout=0.5) as client, pytest.raises(httpx.TimeoutException):
        client.post("/v1/chat/completions", json=chat())
    completion = _cancelled_completion(harness, "Generate")
    assert completion["status"] == "CANCELLED"
    assert completion["payload"]["details"]["usage"]["completion_tokens"] < 100


def test_a_passed_deadline_is_504(slow: tuple[ServerHarness, ScriptedEngine]) -> None:
    harness, _ = slow
    with plain(harness) as client:
        response = client.post("/v1/chat/completions", json=chat(), headers={"x-request-timeout": "0.5"})
        assert_error(response, 504, "DEADLINE_EXCEEDED")
        bad = client.post("/v1/chat/completions", json=chat(), headers={"x-request-timeout": "soon"})
        assert_error(bad, 400, "INVALID_ARGUMENT", "x-request-timeout")
    assert _cancelled_completion(harness, "Generate")["status"] == "DEADLINE_EXCEEDED"


def test_a_stream_past_its_deadline_ends_with_an_error_event(
    slow: tuple[ServerHarness, ScriptedEngine],
) -> None:
    harness, _ = slow
    stream = sdk(harness).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"x-request-timeout": "0.5"},
    )
    with pytest.raises(openai.APIError, match="deadline"):
        for _ in stream:
            pass
    assert _cancelled_completion(harness, "GenerateStream")["status"] == "DEADLINE_EXCEEDED"


# ---- transport security -----------------------------------------------------------------------------


def test_plaintext_clients_are_refused_and_certificates_reload(
    scripted: tuple[ServerHarness, ScriptedEngine],
) -> None:
    harness, _ = scripted
    with pytest.raises(httpx.HTTPError):
        httpx.get(harness.http_url.replace("https://", "http://") + "/v1/models", timeout=5)
    paths = TLSPaths.in_dir(harness.server.settings.tls_dir)
    old_ca = ssl.create_default_context(cadata=paths.ca_cert.read_text())
    init_dev_certs(paths, "127.0.0.1:0", force=True)
    new_ca = ssl.create_default_context(cadata=paths.ca_cert.read_text())
    with plain(harness, verify=new_ca) as client:
        assert client.get("/v1/models").status_code == 200
    with plain(harness, verify=old_ca) as client, pytest.raises(httpx.ConnectError):
        client.get("/v1/models")


def test_mutual_tls_identity_over_http(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    client_ca, client_ca_key = make_ca("clients")
    (tmp_path / "clients.pem").write_bytes(client_ca)
    cert, key = issue_cert(client_ca, client_ca_key, "crm-backend", client=True)
    (tmp_path / "client.pem").write_bytes(cert)
    (tmp_path / "client-key.pem").write_bytes(key)
    with make_server(
        tmp_path,
        analyzer,
        ScriptedEngine(REPLY),
        http_listen="127.0.0.1:0",
        tls_client_ca_file=tmp_path / "clients.pem",
        client_cert_roles={"crm-backend": ["inference"]},
    ) as harness:
        context = harness.http_tls()
        assert isinstance(context, ssl.SSLContext)
        context.load_cert_chain(tmp_path / "client.pem", tmp_path / "client-key.pem")
        with httpx.Client(base_url=harness.http_url, verify=context) as client:
            response = client.post("/v1/chat/completions", json=chat())
        assert response.status_code == 200, response.text
        record = records(harness, response.json()["id"])[0]
        assert record["actor"] == "crm-backend"
        assert len(record["payload"]["details"]["actor"]["fingerprint"]) == 64
        with (
            httpx.Client(base_url=harness.http_url, verify=harness.http_tls()) as bare,
            pytest.raises(httpx.HTTPError),
        ):
            bare.get("/v1/models")


def test_off_by_default(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY)) as harness:
        assert harness.server.http is None and harness.server.http_port is None


def test_concurrent_streams_are_served_side_by_side(scripted: tuple[ServerHarness, ScriptedEngine]) -> None:
    harness, _ = scripted
    client = sdk(harness)
    texts: list[str] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Question {index}"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        with lock:
            texts.append(text)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert texts == [REPLY] * 8


def test_metrics_count_both_edges_with_vllm_style_names(
    scripted: tuple[ServerHarness, ScriptedEngine],
) -> None:
    harness, _ = scripted
    registry = harness.server.metrics.registry
    completion = sdk(harness).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}]
    )
    harness.inference.Generate(generate_request(QUESTION, max_new_tokens=50))
    with plain(harness) as client:
        client.post("/v1/chat/completions", json=chat(n=3))
    assert completion.usage is not None

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("custos_requests_total", rpc="POST /v1/chat/completions", code="OK") == 1
    assert sample("custos_requests_total", rpc="POST /v1/chat/completions", code="INVALID_ARGUMENT") == 1
    assert sample("custos_requests_total", rpc="Generate", code="OK") == 1
    assert sample("custos_request_success_total", model_name=MODEL, finished_reason="stop") == 2
    assert (
        sample("custos_generation_tokens_total", model_name=MODEL) == 2 * completion.usage.completion_tokens
    )
    assert sample("custos_prompt_tokens_total", model_name=MODEL) == 2 * completion.usage.prompt_tokens
    info = next(s for s in registry.collect() if s.name == "custos_model").samples[0]
    assert (
        info.labels["model_name"] == MODEL and info.labels["precision"] == "fp32" and info.labels["version"]
    )
