"""The exporting half of tracing: this server's tracer provider, sampling and OTLP/gRPC exporter.

Apart from :mod:`custos.telemetry.tracing` so that the edges, which start spans, import no gRPC through it
(the HTTP edge speaks no gRPC; the OTLP exporter does).
"""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from custos.telemetry.tracing import Tracing
from custos.version import custos_version


def build_tracing(
    endpoint: str | None,
    *,
    service_name: str,
    sample_ratio: float = 1.0,
    ca_file: Path | None = None,
    exporter: SpanExporter | None = None,
) -> Tracing | None:
    """The tracing of a server, or ``None`` without an endpoint (tracing off).

    ``exporter`` replaces the OTLP exporter (tests pass the SDK's in-memory exporter); it is used only when
    tracing is on.
    """
    if endpoint is None:
        return None
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        credentials = None
        if endpoint.startswith("https://") and ca_file is not None:
            import grpc

            credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
        exporter = OTLPSpanExporter(
            endpoint=endpoint, insecure=endpoint.startswith("http://"), credentials=credentials
        )
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.version": custos_version()}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider)
