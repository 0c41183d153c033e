"""Tracing's own rules: off without an endpoint, only listed string attributes, only trace-context headers."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from custos.flows.context import CallIds, RequestContext
from custos.flows.types import Caller
from custos.server.settings import SettingsError, load_settings
from custos.telemetry.otlp import build_tracing
from custos.telemetry.tracing import carrier_of

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_without_an_endpoint_there_is_no_tracing() -> None:
    assert build_tracing(None, service_name="custos", exporter=InMemorySpanExporter()) is None


def test_only_trace_context_headers_are_read() -> None:
    pairs = [
        ("traceparent", TRACEPARENT),
        ("authorization", "Bearer x.y"),
        ("baggage", "user=jane"),
        ("x-b-bin", b"1"),
    ]
    assert carrier_of(pairs) == {"traceparent": TRACEPARENT}


def test_unlisted_string_attributes_never_reach_a_span() -> None:
    exporter = InMemorySpanExporter()
    tracing = build_tracing("http://127.0.0.1:4317", service_name="custos", exporter=exporter)
    assert tracing is not None
    call = tracing.start("custos.v1.Inference/Generate", carrier={}, attributes={"rpc.method": "Generate"})
    ctx = RequestContext(
        Caller(principal="p", peer="ipv4:127.0.0.1:1", role="inference"),
        "Generate",
        ids=CallIds(observer=call),
    )
    ctx.annotate({"gen_ai.prompt": "Hi, I am Jane Doe", "gen_ai.usage.input_tokens": 7})
    ctx.timings.add("privacy", 0.002)
    call.end("OK")
    tracing.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    attributes = dict(spans["custos.v1.Inference/Generate"].attributes or {})
    assert "gen_ai.prompt" not in attributes and attributes["gen_ai.usage.input_tokens"] == 7
    stage = spans["privacy"]
    assert (
        stage.parent is not None
        and stage.parent.span_id == spans["custos.v1.Inference/Generate"].context.span_id
    )
    assert (stage.end_time or 0) - (stage.start_time or 0) == pytest.approx(2_000_000, abs=1000)


@pytest.mark.parametrize(
    "endpoint", ["collector:4317", "grpc://collector:4317", "http://", "http://c:4317/v1/traces"]
)
def test_a_malformed_endpoint_is_refused_naming_the_setting(endpoint: str) -> None:
    with pytest.raises(SettingsError, match="otel_endpoint"):
        load_settings(otel_endpoint=endpoint)
