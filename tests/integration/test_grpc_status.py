"""Standard gRPC error details and retry signals, read by grpc's own client helpers.

``grpc_status.rpc_status.from_call`` decodes what the server sent: ErrorInfo (domain ``custos``) on every
error, BadRequest naming the field, RetryInfo and ``grpc-retry-pushback-ms`` on capacity limits. A stock
channel configured with the published service config retries a refused call by it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from presidio_analyzer import AnalyzerEngine

from custos.api.status import PUSHBACK_KEY, service_config, service_config_json
from custos.testing.builders import generate_request
from custos.testing.server import ScriptedEngine, ServerHarness, make_server
from custos.v1 import inference_pb2_grpc

REPLY = "Your parcel is on its way."


def details_of(error: grpc.RpcError) -> dict[str, Any]:
    """The decoded standard details of a failed call, by type name, and its trailers."""
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)
    assert status is not None, "no grpc-status-details-bin trailer"
    assert status.code == error.code().value[0] and status.message == error.details()
    found: dict[str, Any] = {"trailers": dict(error.trailing_metadata() or ())}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.DESCRIPTOR.name] = message
    return found


def failed(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def test_invalid_argument_names_the_field_in_a_field_violation(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY), max_new_tokens_limit=16) as harness:
        error = failed(harness.inference.Generate, generate_request("Hello", max_new_tokens=999))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("parameters.max_new_tokens")  # the message as before
        found = details_of(error)
        info = found["ErrorInfo"]
        assert (info.domain, info.reason) == ("custos", "INVALID_FIELD")
        assert info.metadata["field"] == "parameters.max_new_tokens"
        (violation,) = found["BadRequest"].field_violations
        assert violation.field == "parameters.max_new_tokens" and violation.description
        assert "RetryInfo" not in found and PUSHBACK_KEY not in found["trailers"]
        assert found["trailers"]["x-request-id"]


def test_purpose_refusals_have_their_own_reason(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    purposes = {"*": ["support"]}
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY), purposes=purposes) as harness:
        missing = details_of(failed(harness.inference.Generate, generate_request("Hello")))
        other = details_of(failed(harness.inference.Generate, generate_request("Hello", purpose="marketing")))
        assert missing["ErrorInfo"].reason == "PURPOSE_REQUIRED"
        assert other["ErrorInfo"].reason == "PURPOSE_NOT_ALLOWED"
        assert other["BadRequest"].field_violations[0].field == "purpose"
        assert harness.inference.Generate(generate_request("Hello", purpose="support")).text == REPLY


def test_rate_limit_sends_retry_info_and_pushback(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    with make_server(
        tmp_path, analyzer, ScriptedEngine(REPLY), rate_limit_per_s=0.01, rate_limit_burst=1
    ) as harness:
        harness.inference.Generate(generate_request("Hello"))
        error = failed(harness.inference.Generate, generate_request("Hello"))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        found = details_of(error)
        assert found["ErrorInfo"].reason == "RATE_LIMITED" and found["ErrorInfo"].metadata["limit"] == "rate"
        delay_ms = found["RetryInfo"].retry_delay.ToMilliseconds()
        assert 1000 < delay_ms <= 100_000
        assert int(found["trailers"][PUSHBACK_KEY]) == delay_ms
        assert abs(int(found["trailers"]["retry-after-ms"]) - delay_ms) <= 1  # the older trailer stays


def test_a_request_too_large_tells_the_client_not_to_retry(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY), max_request_bytes=1024) as harness:
        error = failed(harness.inference.Generate, generate_request("x" * 2000))
        found = details_of(error)
        assert found["ErrorInfo"].reason == "REQUEST_TOO_LARGE"
        assert found["trailers"][PUSHBACK_KEY] == "-1" and "RetryInfo" not in found


def test_the_published_service_config_retries_capacity_refusals() -> None:
    (method,) = service_config()["methodConfig"]
    assert {"service": "custos.v1.Inference"} in method["name"]
    assert set(method["retryPolicy"]["retryableStatusCodes"]) == {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}


def retrying_stub(harness: ServerHarness, *, retries: bool) -> inference_pb2_grpc.InferenceStub:
    options: list[tuple[str, Any]] = [("grpc.enable_retries", 1 if retries else 0)]
    if retries:
        options.append(("grpc.service_config", service_config_json()))
    return inference_pb2_grpc.InferenceStub(harness.channel_with_token(harness.admin_token, options=options))


def test_a_stock_client_retries_by_the_service_config_after_the_pushback(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    # One call per 0.4 s: a second call at once is refused with a pushback of about 0.4 s, then passes.
    with make_server(
        tmp_path, analyzer, ScriptedEngine(REPLY), rate_limit_per_s=2.5, rate_limit_burst=1
    ) as harness:
        plain = retrying_stub(harness, retries=False)
        plain.Generate(generate_request("Hello"))
        assert failed(plain.Generate, generate_request("Hello")).code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        time.sleep(0.5)  # the bucket refills
        stub = retrying_stub(harness, retries=True)
        assert stub.Generate(generate_request("Hello")).text == REPLY
        reply = stub.Generate(generate_request("Hello"), timeout=20)
        assert reply.text == REPLY
        # The first attempt was refused (audited as denied); the retry waited out the pushback, so it was
        # the only other attempt (retries by backoff alone, 0-0.2 s apart, would be refused again).
        denied = harness.audit_rows("denied")
        assert [d["payload"]["details"]["reason"] for d in denied] == ["rate", "rate"]


def test_health_watch_streams_through_the_main_port(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY)) as harness:
        watch = health_pb2_grpc.HealthStub(harness.channel).Watch(
            health_pb2.HealthCheckRequest(service="custos.v1.Inference"), timeout=10
        )
        first = next(watch)
        watch.cancel()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
