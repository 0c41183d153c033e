"""OpenTelemetry traces of a real server (tiny model): a span per call, a child per stage, no text in them.

Spans go to the SDK's in-memory exporter (or, in one test, over OTLP to a collector on loopback). Every
attribute of every span is checked for the request's personal data, its text and the raw conversation id.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from presidio_analyzer import AnalyzerEngine

from custos.engine.base import Engine
from custos.server.logs import JsonFormatter
from custos.testing.builders import generate_request
from custos.testing.server import ServerHarness, make_server

NAME = "John Smith"
EMAIL = "john.smith@example.com"
CONVERSATION = "conv-trace-7f3a"
QUESTION = f"Hi, I am {NAME}, write to {EMAIL}. Where is my parcel?"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
COLLECTOR = "http://127.0.0.1:4317"  # never dialled: the in-memory exporter replaces OTLP
GENERATE = "custos.v1.Inference/Generate"
STREAM = "custos.v1.Inference/GenerateStream"
CHAT = "POST /v1/chat/completions"
STAGES = {"privacy", "audit", "queue", "prefill", "decode", "transcript"}


def traced(
    tmp_path: Path, analyzer: AnalyzerEngine, engine: Engine, **overrides: Any
) -> tuple[ServerHarness, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    harness = make_server(
        tmp_path, analyzer, engine, span_exporter=exporter, otel_endpoint=COLLECTOR, **overrides
    )
    return harness, exporter


def finished(harness: ServerHarness, exporter: InMemorySpanExporter, *names: str) -> list[ReadableSpan]:
    """The spans exported once the calls' spans ``names`` have ended (a reply can overtake its span's end)."""
    assert harness.server.tracing is not None
    deadline = time.monotonic() + 10
    while True:
        harness.server.tracing.provider.force_flush()
        spans = list(exporter.get_finished_spans())
        missing = [n for n in names if n not in {s.name for s in spans}]
        if not missing:
            return spans
        assert time.monotonic() < deadline, f"spans never ended: {missing}"
        time.sleep(0.02)


def attribute_text(spans: list[ReadableSpan]) -> str:
    """Every span name, attribute key and value, and event of ``spans`` as one lower-case text."""
    parts: list[str] = []
    for span in spans:
        parts.append(span.name)
        parts.extend(f"{k}={v}" for k, v in (span.attributes or {}).items())
        parts.extend(f"{e.name} {dict(e.attributes or {})}" for e in span.events)
        if span.status.description:
            parts.append(span.status.description)
    return "\n".join(parts).lower()


def assert_no_text(spans: list[ReadableSpan], *texts: str) -> None:
    seen = attribute_text(spans)
    for text in (NAME, EMAIL, "smith", CONVERSATION, *texts):
        assert text.lower() not in seen, text


def long_enough(text: str) -> list[str]:
    """The model's answer to look for in spans, if it is long enough not to match an attribute by chance."""
    return [text] if len(text.strip()) >= 8 else []


def completion(harness: ServerHarness, request_id: str) -> dict[str, Any]:
    (record,) = [
        r for r in harness.audit_rows("generate") if r["request_id"] == request_id and r["id"] != request_id
    ]
    return record


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The server's ``custos.rpc`` and ``custos.http`` log lines, formatted as in production."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger("custos.rpc"), logging.getLogger("custos.http")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield out
    for logger in loggers:
        logger.removeHandler(handler)


def test_a_generate_trace_has_every_stage_with_its_duration(
    tmp_path: Path, analyzer: AnalyzerEngine, tiny_engine: Engine, json_lines: io.StringIO
) -> None:
    harness, exporter = traced(tmp_path, analyzer, tiny_engine)
    with harness:
        reply = harness.inference.Generate(
            generate_request(QUESTION, conversation_id=CONVERSATION, max_new_tokens=6),
            metadata=(("traceparent", TRACEPARENT),),
        )
        spans = finished(harness, exporter, GENERATE)
        record = completion(harness, reply.request_id)

    (root,) = [s for s in spans if s.name == GENERATE]
    assert root.kind is trace.SpanKind.SERVER
    # The caller's traceparent is continued: same trace, our span a child of the caller's.
    assert trace.format_trace_id(root.context.trace_id) == TRACE_ID
    assert root.parent is not None and trace.format_span_id(root.parent.span_id) == PARENT_ID
    stages = [s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id]
    assert {s.name for s in stages} == STAGES
    # The stage spans are the audit record's latency_ms, stage for stage.
    latency_ms = record["payload"]["details"]["latency_ms"]
    assert set(latency_ms) == STAGES
    ms = {
        name: sorted((s for s in stages if s.name == name), key=lambda s: s.start_time or 0)
        for name in STAGES
    }
    # The completion record cannot time its own write: the trace has it as the last audit span.
    *recorded_audit, completion_write = ms["audit"]
    assert completion_write.end_time == max(s.end_time or 0 for s in stages)
    ms["audit"] = recorded_audit
    for name, spans_of_stage in ms.items():
        total_ms = sum((s.end_time or 0) - (s.start_time or 0) for s in spans_of_stage) / 1e6
        assert total_ms == pytest.approx(latency_ms[name], abs=0.01), name
    for span in stages:
        assert (
            (root.start_time or 0) <= (span.start_time or 0) <= (span.end_time or 0) <= (root.end_time or 0)
        )
    assert latency_ms["decode"] > 0 and latency_ms["privacy"] > 0

    attributes = dict(root.attributes or {})
    usage = record["payload"]["details"]["usage"]
    assert attributes["gen_ai.request.model"] == tiny_engine.info.name
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] > 0
    assert attributes["gen_ai.conversation.id"] == record["conversation_ref"] != CONVERSATION
    assert attributes["custos.request_id"] == reply.request_id
    assert attributes["rpc.grpc.status_code"] == 0 and attributes["custos.status"] == "OK"
    assert_no_text(spans, QUESTION, *long_enough(reply.text))

    # The log line of the call carries its trace id.
    lines = [line for line in json_lines.getvalue().splitlines() if reply.request_id in line]
    assert lines and all(f'"trace_id": "{TRACE_ID}"' in line for line in lines)


def test_streams_and_refusals_are_traced_too(
    tmp_path: Path, analyzer: AnalyzerEngine, tiny_engine: Engine
) -> None:
    harness, exporter = traced(tmp_path, analyzer, tiny_engine, max_new_tokens_limit=16)
    with harness:
        events = list(harness.inference.GenerateStream(generate_request(QUESTION, max_new_tokens=4)))
        text = "".join(e.delta for e in events if e.WhichOneof("event") == "delta")
        with pytest.raises(grpc.RpcError):
            harness.inference.Generate(generate_request(QUESTION, max_new_tokens=999))
        spans = finished(harness, exporter, GENERATE, STREAM)
    (stream,) = [s for s in spans if s.name == STREAM]
    children = {s.name for s in spans if s.parent is not None and s.parent.span_id == stream.context.span_id}
    assert children == STAGES
    assert stream.parent is None  # no traceparent: a new trace
    (refused,) = [s for s in spans if s.name == GENERATE]
    assert (refused.attributes or {})["custos.status"] == "INVALID_ARGUMENT"
    assert_no_text(spans, QUESTION, *long_enough(text))


def test_an_http_chat_completion_is_traced_from_its_traceparent_header(
    tmp_path: Path, analyzer: AnalyzerEngine, tiny_engine: Engine
) -> None:
    harness, exporter = traced(tmp_path, analyzer, tiny_engine, http_listen="127.0.0.1:0")
    with harness:
        with httpx.Client(
            base_url=harness.http_url,
            verify=harness.http_tls(),
            headers={"authorization": f"Bearer {harness.admin_token}", "traceparent": TRACEPARENT},
        ) as client:
            body = {
                "model": tiny_engine.info.name,
                "messages": [{"role": "user", "content": QUESTION}],
                "max_tokens": 4,
                "conversation_id": CONVERSATION,
            }
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            answer = response.json()["choices"][0]["message"]["content"]
        spans = finished(harness, exporter, CHAT)
    (root,) = [s for s in spans if s.name == CHAT]
    assert trace.format_trace_id(root.context.trace_id) == TRACE_ID
    attributes = dict(root.attributes or {})
    assert (
        attributes["http.response.status_code"] == 200 and attributes["http.route"] == "/v1/chat/completions"
    )
    assert attributes["gen_ai.usage.output_tokens"] > 0
    children = {s.name for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id}
    assert children == STAGES
    assert_no_text(spans, QUESTION, *long_enough(answer))


def test_with_tracing_off_nothing_is_traced_or_installed(
    tmp_path: Path, analyzer: AnalyzerEngine, tiny_engine: Engine, json_lines: io.StringIO
) -> None:
    exporter = InMemorySpanExporter()
    with make_server(tmp_path, analyzer, tiny_engine, span_exporter=exporter) as harness:
        assert harness.server.tracing is None
        reply = harness.inference.Generate(
            generate_request(QUESTION, max_new_tokens=4), metadata=(("traceparent", TRACEPARENT),)
        )
        assert reply.request_id
    assert exporter.get_finished_spans() == ()
    # The process-wide provider was never replaced: nothing else can export either.
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    lines = [line for line in json_lines.getvalue().splitlines() if reply.request_id in line]
    assert lines and not any("trace_id" in line for line in lines)


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_are_exported_over_otlp_to_the_collector(
    tmp_path: Path, analyzer: AnalyzerEngine, tiny_engine: Engine
) -> None:
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with make_server(
            tmp_path,
            analyzer,
            tiny_engine,
            otel_endpoint=f"http://127.0.0.1:{port}",
            otel_service_name="custos-test",
        ) as harness:
            harness.inference.Generate(
                generate_request(QUESTION, conversation_id=CONVERSATION, max_new_tokens=4)
            )
        # Stopping the server exported what was pending.
    finally:
        server.stop(0)
    exported = [
        (resource, span)
        for request in collector.requests
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = {span.name for _, span in exported}
    assert GENERATE in names and names >= STAGES
    services = {
        a.value.string_value for r, _ in exported for a in r.resource.attributes if a.key == "service.name"
    }
    assert services == {"custos-test"}
    wire = b"".join(request.SerializeToString() for request in collector.requests).lower()
    for text in (NAME, EMAIL, CONVERSATION, "smith"):
        assert text.lower().encode() not in wire
