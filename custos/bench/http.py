"""``custos bench http``: the HTTP edge's overhead beside gRPC, on one server, in one run.

Both paths drive the same ``custos serve`` process (same model, same flow, privacy and audit on) with the same
prompts at the same concurrency: gRPC ``GenerateStream`` and streamed ``POST /v1/chat/completions``. Rounds
alternate which path goes first, so a drift of the shared host's load hits both alike; the overhead is HTTP's
end-to-end time per generated token over gRPC's, minus one.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from custos.bench.serve import PROMPTS, LevelResult, _percentile, drive_server, run_streams

GOAL_OVERHEAD = 0.05  # HTTP path overhead <= 5 % of end-to-end time at 8 streams (issue 19)


def drive_http(
    base_url: str,
    streams: int,
    *,
    requests_per_stream: int,
    max_new_tokens: int,
    model: str,
    token: str | None = None,
) -> LevelResult:
    """``streams`` client threads, each streaming ``requests_per_stream`` chat completions in turn."""
    result = LevelResult(path="custos http", streams=streams)
    lock = threading.Lock()
    headers = {"authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    client = httpx.Client(base_url=base_url, headers=headers, limits=limits, timeout=600.0)

    def one(stream_index: int) -> None:
        for round_index in range(requests_per_stream):
            index = stream_index + round_index * streams
            body = {
                "model": model,
                "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
                "max_tokens": max_new_tokens,
                "temperature": 0.0,
                "stream": True,
                "stream_options": {"include_usage": True},
                "conversation_id": f"bench-{index}",
            }
            sent = time.perf_counter()
            first: float | None = None
            last = sent
            tokens = 0
            try:
                with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        raise httpx.HTTPStatusError("refused", request=response.request, response=response)
                    for line in response.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            raise httpx.HTTPError("stream error")
                        if chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
                        elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                            last = time.perf_counter()
                            first = first if first is not None else last
            except httpx.HTTPError:
                with lock:
                    result.errors += 1
                continue
            with lock:
                result.add_request(tokens, sent, first, last)

    result.seconds = run_streams(one, streams)
    client.close()
    return result


@dataclass
class HttpBenchReport:
    """Both paths' rounds, and what they add up to."""

    streams: int
    max_new_tokens: int
    grpc: list[LevelResult] = field(default_factory=list)
    http: list[LevelResult] = field(default_factory=list)
    load_average: tuple[float, float] | None = None

    @staticmethod
    def _per_token(results: list[LevelResult]) -> float:
        tokens = sum(r.tokens for r in results)
        return sum(r.seconds for r in results) / tokens if tokens else float("nan")

    @property
    def overhead(self) -> float:
        """HTTP's end-to-end seconds per token over gRPC's, minus one (0.03: 3 % slower)."""
        return self._per_token(self.http) / self._per_token(self.grpc) - 1.0

    @property
    def round_ratios(self) -> list[float]:
        """HTTP / gRPC wall time of each round pair (per token)."""
        return [
            (h.seconds / h.tokens) / (g.seconds / g.tokens)
            for g, h in zip(self.grpc, self.http, strict=True)
            if g.tokens and h.tokens
        ]


def run_http_bench(
    grpc_target: str,
    http_url: str,
    *,
    model: str,
    token: str | None,
    streams: int = 8,
    rounds: int = 3,
    max_new_tokens: int = 64,
    say: Callable[[str], None] = lambda _: None,
) -> HttpBenchReport:
    """Warm both paths up, then ``rounds`` pairs of runs at ``streams`` streams, alternating the order."""
    report = HttpBenchReport(streams=streams, max_new_tokens=max_new_tokens)

    def grpc_run(n: int, tokens: int) -> LevelResult:
        return drive_server(grpc_target, n, requests_per_stream=1, max_new_tokens=tokens, token=token)

    def http_run(n: int, tokens: int) -> LevelResult:
        return drive_http(http_url, n, requests_per_stream=1, max_new_tokens=tokens, model=model, token=token)

    say("warming up both paths")
    grpc_run(min(4, streams), 8)
    http_run(min(4, streams), 8)
    for index in range(rounds):
        order = [("grpc", grpc_run), ("http", http_run)]
        if index % 2:
            order.reverse()
        for name, run in order:
            say(f"round {index + 1}/{rounds}: {name}")
            (report.grpc if name == "grpc" else report.http).append(run(streams, max_new_tokens))
    return report


def _summary(name: str, results: list[LevelResult]) -> str:
    tokens = sum(r.tokens for r in results)
    seconds = sum(r.seconds for r in results)
    ttft = [t for r in results for t in r.ttft]
    itl = [t for r in results for t in r.itl]
    errors = sum(r.errors for r in results)

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    return (
        f"{name:<6} {tokens / seconds if seconds else 0:>8.1f} {ms(_percentile(ttft, 50)):>9} "
        f"{ms(_percentile(ttft, 99)):>9} {ms(_percentile(itl, 50)):>8} {errors:>6}"
    )


def format_http_report(report: HttpBenchReport) -> str:
    """The table: tokens/s, TTFT and inter-token latency per path, the overhead and the goal."""
    lines = [
        f"HTTP vs gRPC, {report.streams} concurrent streams, {report.max_new_tokens} new tokens, "
        f"{len(report.grpc)} rounds each (alternating order)",
        f"{'path':<6} {'tok/s':>8} {'ttft p50':>9} {'ttft p99':>9} {'itl p50':>8} {'errors':>6}  (ms)",
        _summary("grpc", report.grpc),
        _summary("http", report.http),
    ]
    ratios = report.round_ratios
    overhead = report.overhead
    lines.append(
        "per-round HTTP/gRPC time per token: "
        + ", ".join(f"{r:.3f}" for r in ratios)
        + (f" (median {statistics.median(ratios):.3f})" if ratios else "")
    )
    met = "met" if overhead <= GOAL_OVERHEAD else "not met"
    lines.append(
        f"HTTP path overhead: {overhead * 100:+.1f} % of end-to-end time "
        f"(goal <= {GOAL_OVERHEAD * 100:.0f} %: {met})"
    )
    if report.load_average is not None:
        lines.append(
            "load average (1 min) at start / end: "
            f"{report.load_average[0]:.2f} / {report.load_average[1]:.2f}"
        )
    return "\n".join(lines)
