"""The metrics an engine reports, as protocols, so the engine never imports the server that collects them.

The server's Prometheus ``Metrics`` satisfies :class:`EngineMetrics` structurally (its gauges and
histograms have these methods); a test can pass any object with the same attributes.
"""

from __future__ import annotations

from typing import Protocol


class GaugeMetric(Protocol):
    """A value that is set (a Prometheus ``Gauge``)."""

    def set(self, value: float, /) -> None:
        """Replace the value."""


class HistogramMetric(Protocol):
    """A distribution of observations (a Prometheus ``Histogram``)."""

    def observe(self, amount: float, /) -> None:
        """Record one observation."""


class EngineMetrics(Protocol):
    """Where a batching engine reports its queue, latency and throughput (see ``Engine.observe``)."""

    @property
    def engine_queue_depth(self) -> GaugeMetric:
        """Requests waiting for a place in the running batch."""

    @property
    def engine_batch_size(self) -> GaugeMetric:
        """Sequences in the running batch."""

    @property
    def engine_queue_wait(self) -> HistogramMetric:
        """Seconds from submission to the start of a request's prefill."""

    @property
    def engine_ttft(self) -> HistogramMetric:
        """Seconds from submission to a request's first generated token."""

    @property
    def engine_inter_token(self) -> HistogramMetric:
        """Seconds between consecutive tokens of one sequence."""

    @property
    def engine_tokens_per_second(self) -> GaugeMetric:
        """Tokens per second over the last decode step (all sequences together)."""
