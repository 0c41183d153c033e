"""Custos in front of a real vLLM serving the bundled model, through a recording, fault-injecting proxy.

One vLLM per test session, started and stopped here (from ``.venv-vllm``: ``make install-vllm``); the
tests skip, saying so, when that environment is absent. ``CUSTOS_TEST_VLLM_URL`` (a base URL ending in
``/v1``, serving ``gemma-3-270m``) uses a vLLM already running instead.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from presidio_analyzer import AnalyzerEngine

from custos.bench.vllm import SERVED_MODEL, VllmError, start_vllm, vllm_python
from custos.engine.upstream import UpstreamEngine
from custos.testing.builders import generate_request
from custos.testing.server import ServerHarness, make_server
from custos.testing.upstream import FaultProxy
from custos.v1 import inference_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]

VENV = Path(__file__).resolve().parents[2] / ".venv-vllm"
NAME = "John Smith"
EMAIL = "john.smith@example.com"
PHONE = "212-555-0187"
PII = (NAME, EMAIL, PHONE)
QUESTION = f"Hi, this is {NAME} ({EMAIL}, {PHONE}). Where is my order?"


@pytest.fixture(scope="session")
def vllm_url(bundled_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("CUSTOS_TEST_VLLM_URL")
    if configured:
        yield configured
        return
    try:
        vllm_python(VENV)
    except VllmError as exc:
        pytest.skip(str(exc))
    log_file = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = start_vllm(bundled_cache, venv=VENV, log_file=log_file)
    try:
        waited = server.wait_ready()
        print(f"vLLM answered /v1/models {waited:.0f} s after start")
        yield server.base_url
    finally:
        server.stop()


@pytest.fixture
def proxy(vllm_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(vllm_url) as p:
        yield p


@pytest.fixture
def harness(tmp_path: Path, analyzer: AnalyzerEngine, proxy: FaultProxy) -> Iterator[ServerHarness]:
    engine = UpstreamEngine(proxy.base_url, SERVED_MODEL, timeout_s=60.0, readiness_interval_s=0.5)
    with make_server(
        tmp_path,
        analyzer,
        engine,
        engine_backend="openai",
        upstream_base_url=proxy.base_url,
        upstream_model=SERVED_MODEL,
        max_new_tokens_limit=64,
    ) as h:
        yield h


def raw_pii_in(value: object) -> list[str]:
    text = json.dumps(value).lower()
    return [p for p in PII if p.lower() in text]


def completion(harness: ServerHarness, event_type: str = "generate") -> dict[str, object]:
    payload: dict[str, object] = [r for r in harness.audit_rows(event_type) if r["phase"] == "completion"][
        -1
    ]["payload"]
    return payload


def test_generate_over_vllm_answers_from_the_anonymized_prompt(
    harness: ServerHarness, proxy: FaultProxy
) -> None:
    reply = harness.inference.Generate(generate_request(QUESTION, max_new_tokens=24))
    events = list(harness.inference.GenerateStream(generate_request(QUESTION, max_new_tokens=24)))

    assert reply.text.strip()
    streamed = "".join(e.delta for e in events if e.WhichOneof("event") == "delta")
    # Not compared with the unary answer: vLLM's greedy path may differ once the prompt's prefix is cached.
    assert streamed.strip()
    assert len(proxy.received) == 2 and raw_pii_in(proxy.received) == []
    assert "<PERSON_1>" in proxy.received[0]["prompt"]
    request = [r for r in harness.audit_rows("generate") if r["phase"] == "request"][-1]
    info = request["payload"]["details"]["model_info"]
    assert info["weights_hashed_locally"] is False
    card = info["upstream"]["model_card"]
    assert card["owned_by"] == "vllm" and card["id"] == SERVED_MODEL and card["max_model_len"] > 0
    done = completion(harness)
    assert done["status"] == "OK"
    confidence = done["details"]["confidence"]  # type: ignore[index]
    assert confidence["mean_logprob"] < 0 and confidence["min_logprob"] <= confidence["mean_logprob"]


def test_classify_over_vllm_uses_prompt_logprobs(harness: ServerHarness, proxy: FaultProxy) -> None:
    reply = harness.inference.Classify(
        # Ad hoc labels: vLLM computes prompt log-probs over every prompt token of every label's prompt,
        # so a short prompt and two labels keep this within seconds on a CPU.
        inference_pb2.ClassifyRequest(
            conversation_id="c1",
            message=f"I am {NAME}, my parcel never arrived",
            labels=["delivery", "refund"],
        )
    )
    assert reply.label and abs(sum(p.probability for p in reply.distribution) - 1.0) < 1e-6
    assert all(p.logprob < 0 for p in reply.distribution)
    (body,) = proxy.received
    assert body["echo"] is True and raw_pii_in(body) == []


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("http_503", grpc.StatusCode.UNAVAILABLE),
        ("cut", grpc.StatusCode.UNAVAILABLE),
        ("malformed", grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_faults_in_front_of_vllm_end_cleanly_and_are_audited(
    harness: ServerHarness, proxy: FaultProxy, fault: str, code: grpc.StatusCode
) -> None:
    proxy.fault = fault
    with pytest.raises(grpc.RpcError) as caught:
        list(harness.inference.GenerateStream(generate_request(QUESTION, max_new_tokens=24), timeout=30))
    assert caught.value.code() is code
    assert "retry-after-ms" in dict(caught.value.trailing_metadata() or ())
    assert completion(harness)["status"] == code.name


def test_a_deadline_closes_the_stream_to_vllm(harness: ServerHarness, proxy: FaultProxy) -> None:
    proxy.fault = "hang"
    with pytest.raises(grpc.RpcError) as caught:
        list(harness.inference.GenerateStream(generate_request(QUESTION, max_new_tokens=24), timeout=3))
    expired = time.monotonic()
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 5
    while not proxy.stream_closed_at and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.stream_closed_at and proxy.stream_closed_at[0] - expired < 1.0


def test_inference_health_follows_vllms_model_list(harness: ServerHarness, proxy: FaultProxy) -> None:
    stub = health_pb2_grpc.HealthStub(harness.channel)

    def status(service: str) -> int:
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status  # type: ignore[no-any-return]

    assert status("custos.v1.Inference") == health_pb2.HealthCheckResponse.SERVING
    proxy.fault = "not_listed"
    deadline = time.monotonic() + 10
    while status("custos.v1.Inference") != health_pb2.HealthCheckResponse.NOT_SERVING:
        assert time.monotonic() < deadline, "Inference stayed SERVING"
        time.sleep(0.1)
    assert status("custos.v1.Audit") == health_pb2.HealthCheckResponse.SERVING
