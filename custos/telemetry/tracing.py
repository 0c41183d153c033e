"""OpenTelemetry traces: a server span per gRPC and HTTP call, a child span per pipeline stage, OTLP export.

Off unless ``otel_endpoint`` is set: then ``custos.telemetry.otlp.build_tracing`` returns ``None``, the edges
start no span and flows get no observer, so nothing runs per call. When on, each call's span continues the
caller's W3C ``traceparent`` (gRPC metadata or HTTP header) and the flow reports its stages (the same
timings as the audit record's ``latency_ms``) and its ``gen_ai.*`` attributes through :class:`CallTrace`.

Spans carry ids, counts, codes and durations only. Attribute values are checked here: a string attribute
must be one of the names a span may carry (:data:`STRING_ATTRIBUTES`), so message text cannot slip in by a
new call site; the conversation is named by its blind index (``gen_ai.conversation.id``), never its raw id.
The tracer provider is this server's own, never the process-global one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from custos.flows.context import AttributeValue
from custos.version import custos_version

#: String attributes a span may carry; every one holds an id, a name, a code or an enum value.
STRING_ATTRIBUTES = frozenset(
    {
        "rpc.system",
        "rpc.service",
        "rpc.method",
        "http.request.method",
        "http.route",
        "custos.request_id",
        "custos.status",
        "custos.stage",
        "gen_ai.operation.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.conversation.id",
        "gen_ai.response.finish_reasons",
        "error.type",
    }
)
#: Statuses that mark a server span as failed (the server's fault, as OpenTelemetry's gRPC conventions say).
SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
_PROPAGATOR = TraceContextTextMapPropagator()


log = logging.getLogger("custos.tracing")


def _checked(attributes: Mapping[str, AttributeValue]) -> dict[str, AttributeValue]:
    """``attributes`` without string values under names not in :data:`STRING_ATTRIBUTES` (logged by name).

    A refused attribute is a programming error; it is dropped rather than raised so that tracing never
    fails a call (the tests assert over every span that none was dropped).
    """
    kept: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        strings = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, str) for v in strings) and key not in STRING_ATTRIBUTES:
            log.warning("span attribute dropped", extra={"fields": {"attribute": key}})
            continue
        kept[key] = value
    return kept


class CallTrace:
    """The span of one call; the flow's :class:`~custos.flows.context.CallObserver` while it runs."""

    def __init__(self, tracer: trace.Tracer, span: trace.Span) -> None:
        self._tracer = tracer
        self.span = span
        self._context = trace.set_span_in_context(span)
        # Flows time stages on perf_counter; spans want wall-clock nanoseconds.
        self._offset_ns = time.time_ns() - time.perf_counter_ns()
        self.trace_id = trace.format_trace_id(span.get_span_context().trace_id)

    def stage(self, name: str, start: float, end: float) -> None:
        """A child span for one pipeline stage, from ``start`` to ``end`` (``time.perf_counter`` seconds)."""
        child = self._tracer.start_span(
            name,
            context=self._context,
            kind=SpanKind.INTERNAL,
            start_time=self._offset_ns + int(start * 1e9),
            attributes={"custos.stage": name},
        )
        child.end(end_time=self._offset_ns + int(end * 1e9))

    def annotate(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Set attributes on the call's span (ids, counts, names; see :data:`STRING_ATTRIBUTES`)."""
        self.span.set_attributes(_checked(attributes))

    def end(self, status: str, **attributes: AttributeValue) -> None:
        """End the span with the call's status name (``OK``, ``INVALID_ARGUMENT``, ...)."""
        self.span.set_attributes(_checked({"custos.status": status, **attributes}))
        if status in SERVER_ERRORS:
            self.span.set_attributes({"error.type": status})
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()


class Tracing:
    """Starts the server span of each call on this server's own tracer provider."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("custos", custos_version())

    def start(
        self,
        name: str,
        *,
        carrier: Mapping[str, str],
        attributes: Mapping[str, AttributeValue],
    ) -> CallTrace:
        """Start the server span ``name``, continuing a valid ``traceparent`` in ``carrier``."""
        parent: Context = _PROPAGATOR.extract(carrier)
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=_checked(attributes)
        )
        return CallTrace(self._tracer, span)

    def shutdown(self) -> None:
        """Export what is pending and stop the exporter."""
        self.provider.shutdown()


def carrier_of(pairs: Sequence[tuple[str, str | bytes]]) -> dict[str, str]:
    """The trace-context headers among metadata pairs (other keys, and binary values, are not read)."""
    wanted = _PROPAGATOR.fields
    return {key: value for key, value in pairs if key in wanted and isinstance(value, str)}
