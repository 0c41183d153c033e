"""Custos in front of an OpenAI-compatible upstream, over a real socket: privacy, audit, faults, health.

The upstream is the fake of ``custos.testing.upstream``; it keeps every request body it received, so the
tests read exactly what left Custos.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from presidio_analyzer import AnalyzerEngine

from custos.engine.upstream import UpstreamEngine
from custos.testing.builders import generate_request
from custos.testing.server import ServerHarness, make_server
from custos.testing.upstream import FakeUpstream
from custos.v1 import inference_pb2

NAME = "John Smith"
EMAIL = "john.smith@example.com"
PHONE = "212-555-0187"
CARD = "4111 1111 1111 1111"
PII = (NAME, EMAIL, PHONE, CARD)
QUESTION = f"Hi, I am {NAME}. My email is {EMAIL}, phone {PHONE}. Refund the charge on card {CARD}."
INFERENCE = "custos.v1.Inference"
AUDIT = "custos.v1.Audit"


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


def serve(
    tmp_path: Path, analyzer: AnalyzerEngine, base_url: str, model: str, **engine_options: object
) -> ServerHarness:
    options: dict[str, object] = {"timeout_s": 1.0, "readiness_interval_s": 0.2, **engine_options}
    engine = UpstreamEngine(base_url, model, **options)  # type: ignore[arg-type]
    return make_server(
        tmp_path,
        analyzer,
        engine,
        engine_backend="openai",
        upstream_base_url=base_url,
        upstream_model=model,
        max_new_tokens_limit=64,
    )


@pytest.fixture
def harness(tmp_path: Path, analyzer: AnalyzerEngine, fake: FakeUpstream) -> Iterator[ServerHarness]:
    with serve(tmp_path, analyzer, fake.base_url, fake.model) as h:
        yield h


def raw_pii_in(value: object) -> list[str]:
    text = json.dumps(value).lower()
    return [p for p in PII if p.lower() in text]


def completion(harness: ServerHarness, event_type: str = "generate") -> dict[str, object]:
    rows = [r for r in harness.audit_rows(event_type) if r["phase"] == "completion"]
    payload: dict[str, object] = rows[-1]["payload"]
    return payload


def health(harness: ServerHarness, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(harness.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status  # type: ignore[no-any-return]


def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_generate_over_the_upstream_sends_only_anonymized_text(
    harness: ServerHarness, fake: FakeUpstream
) -> None:
    reply = harness.inference.Generate(generate_request(QUESTION, max_new_tokens=32))

    assert reply.text == fake.reply  # the placeholder stays: the caller did not ask to reidentify
    (body,) = fake.received
    assert raw_pii_in(body) == []
    assert "<PERSON_1>" in body["prompt"] and "<EMAIL_ADDRESS_1>" in body["prompt"]
    request_record = [r for r in harness.audit_rows("generate") if r["phase"] == "request"][-1]
    model_info = request_record["payload"]["details"]["model_info"]
    assert model_info["weights_hashed_locally"] is False
    assert model_info["upstream"]["base_url"] == fake.base_url
    assert model_info["upstream"]["served_model"] == fake.model
    assert model_info["upstream"]["model_card"]["owned_by"] == "fake-upstream"
    assert model_info["upstream"]["model_card"]["max_model_len"] == 2048
    done = completion(harness)
    assert done["status"] == "OK"
    assert done["details"]["confidence"]["mean_logprob"] == pytest.approx(-0.25)  # type: ignore[index]


def test_the_answer_is_restored_for_a_caller_that_may_reidentify(
    harness: ServerHarness, fake: FakeUpstream
) -> None:
    reply = harness.inference.Generate(generate_request(QUESTION, max_new_tokens=32, reidentify=True))
    assert reply.text == fake.reply.replace("<PERSON_1>", NAME)
    assert raw_pii_in(fake.received) == []


def test_generate_stream_relays_the_upstream_stream(harness: ServerHarness, fake: FakeUpstream) -> None:
    events = list(harness.inference.GenerateStream(generate_request(QUESTION, max_new_tokens=32)))
    deltas = [e.delta for e in events if e.WhichOneof("event") == "delta"]
    assert "".join(deltas) == fake.reply  # one delta here: the guard holds back the short sentence
    assert events[-1].end.usage.completion_tokens == len(fake.reply.split())
    assert raw_pii_in(fake.received) == []


def test_classify_scores_labels_on_the_upstream(harness: ServerHarness, fake: FakeUpstream) -> None:
    message = f"I am {NAME} ({EMAIL}) and I was charged twice"
    reply = harness.inference.Classify(
        inference_pb2.ClassifyRequest(conversation_id="c1", message=message, labels=["refund", "login"])
    )
    assert {p.label for p in reply.distribution} == {"refund", "login"}
    (body,) = fake.received
    assert body["echo"] is True and len(body["prompt"]) == 2
    assert raw_pii_in(body) == []
    assert completion(harness, "classify")["status"] == "OK"


def test_classify_without_prompt_logprobs_is_unimplemented_naming_the_setting(
    harness: ServerHarness, fake: FakeUpstream
) -> None:
    fake.fault = "no_echo"
    with pytest.raises(grpc.RpcError) as caught:
        harness.inference.Classify(
            inference_pb2.ClassifyRequest(
                conversation_id="c1", message="where is my parcel", labels=["a", "b"]
            )
        )
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "engine_backend" in caught.value.details()
    assert completion(harness, "classify")["status"] == "UNIMPLEMENTED"


@pytest.mark.parametrize(
    ("fault", "code", "reason"),
    [
        ("http_503", grpc.StatusCode.UNAVAILABLE, "upstream_http_503"),
        ("malformed", grpc.StatusCode.UNAVAILABLE, "upstream_malformed_stream"),
        ("cut", grpc.StatusCode.UNAVAILABLE, "upstream_stream_cut"),
        ("slow", grpc.StatusCode.DEADLINE_EXCEEDED, "upstream_timeout"),
    ],
)
@pytest.mark.parametrize("rpc", ["Generate", "GenerateStream"])
def test_upstream_faults_end_in_a_clean_status_with_a_retry_hint_and_an_audit_record(
    harness: ServerHarness, fake: FakeUpstream, fault: str, code: grpc.StatusCode, reason: str, rpc: str
) -> None:
    fake.fault = fault
    fake.slow_s = 3.0
    request = generate_request(QUESTION, max_new_tokens=32, reidentify=True)
    received: list[str] = []
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        if rpc == "Generate":
            harness.inference.Generate(request, timeout=10)
        else:
            for event in harness.inference.GenerateStream(request, timeout=10):
                if event.WhichOneof("event") == "delta":
                    received.append(event.delta)
    assert time.monotonic() - started < 5
    error = caught.value
    assert error.code() is code
    assert "retry after" in error.details()
    trailers = dict(error.trailing_metadata() or ())
    assert int(trailers["retry-after-ms"]) > 0
    # What reached the caller before the fault is guarded text: no raw value, not even the one held back.
    assert NAME not in "".join(received) and raw_pii_in(error.details()) == []
    done = completion(harness)
    assert done["status"] == code.name
    assert done["details"]["engine_error"] == reason  # type: ignore[index]
    assert raw_pii_in(done) == []


def test_an_unreachable_upstream_is_unavailable_and_audited(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with serve(tmp_path, analyzer, f"http://127.0.0.1:{port}/v1", "m") as harness:
        with pytest.raises(grpc.RpcError) as caught:
            harness.inference.Generate(generate_request(QUESTION), timeout=10)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert completion(harness)["details"]["engine_error"] == "upstream_unreachable"  # type: ignore[index]
        # Health: the Inference service follows the upstream; the Audit service does not.
        assert health(harness, INFERENCE) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health(harness, AUDIT) == health_pb2.HealthCheckResponse.SERVING


def test_the_callers_deadline_closes_the_upstream_stream_at_once(
    harness: ServerHarness, fake: FakeUpstream
) -> None:
    fake.fault = "hang"
    with pytest.raises(grpc.RpcError) as caught:
        for _ in harness.inference.GenerateStream(generate_request(QUESTION, max_new_tokens=32), timeout=1.5):
            pass
    deadline_hit = time.monotonic()
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for(lambda: bool(fake.stream_closed_at), timeout=3), "the upstream stream stayed open"
    assert fake.stream_closed_at[0] - deadline_hit < 0.5
    assert wait_for(lambda: completion(harness)["status"] == "DEADLINE_EXCEEDED")


def test_inference_health_follows_the_upstreams_readiness(harness: ServerHarness, fake: FakeUpstream) -> None:
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert health(harness, INFERENCE) == serving
    fake.fault = "not_listed"
    assert wait_for(lambda: health(harness, INFERENCE) == not_serving)
    assert health(harness, AUDIT) == serving and health(harness, "") == serving
    fake.fault = None
    assert wait_for(lambda: health(harness, INFERENCE) == serving)
