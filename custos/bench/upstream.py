"""``custos bench serve --upstream URL``: Custos over an OpenAI-compatible server beside that server direct.

Both paths get the same customer questions (``serve.PROMPTS``) in the same prompt format at the same
concurrency levels, in one run: Custos (over gRPC, privacy and audit on, ``engine_backend = "openai"``)
streams from the upstream; the direct path streams ``/v1/completions`` from the upstream itself with the
prompt Custos would send (Custos sends it anonymized, so a few tokens differ). Pin the upstream and Custos
to separate cores (``python -m custos.bench.vllm --cpus 1``; the Custos server of this benchmark is pinned
to the cores the upstream does not use when ``--custos-cpus`` is given).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence

import httpx

from custos.bench.serve import PROMPTS, LevelResult, _percentile, run_streams
from custos.engine.prompt import PLAIN_CUSTOMER_SERVICE_FORMAT
from custos.engine.types import ChatTurn

GOALS = (
    ("Custos over upstream vs upstream direct (total tok/s, 1 and 8 streams)", ">= 0.9x"),
    ("time-to-first-token overhead at 1 stream", "<= 30 ms"),
)


def _prompt(index: int) -> str:
    return PLAIN_CUSTOMER_SERVICE_FORMAT.render((ChatTurn("user", PROMPTS[index % len(PROMPTS)]),))


def drive_upstream(
    base_url: str, model: str, streams: int, *, requests_per_stream: int, max_new_tokens: int
) -> LevelResult:
    """``streams`` client threads streaming ``/v1/completions`` from the upstream, greedy, as Custos asks."""
    result = LevelResult(path="direct", streams=streams)
    lock = threading.Lock()
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    client = httpx.Client(base_url=base_url.rstrip("/"), limits=limits, timeout=600.0, trust_env=False)

    def run(stream_index: int) -> None:
        for round_index in range(requests_per_stream):
            body = {
                "model": model,
                "prompt": _prompt(stream_index + round_index * streams),
                "max_tokens": max_new_tokens,
                "temperature": 0.0,
                "stream": True,
                "stream_options": {"include_usage": True},
                "logprobs": 1,
                "stop": list(PLAIN_CUSTOMER_SERVICE_FORMAT.stop),
            }
            sent = time.perf_counter()
            first: float | None = None
            last = sent
            tokens = 0
            try:
                with client.stream("POST", "/completions", json=body) as response:
                    response.raise_for_status()
                    for line in response.iter_lines():
                        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                            continue
                        event = json.loads(line[5:])
                        if any(c.get("text") for c in event.get("choices", [])):
                            last = time.perf_counter()
                            first = first if first is not None else last
                        usage = event.get("usage") or {}
                        tokens = usage.get("completion_tokens", tokens)
            except (httpx.HTTPError, ValueError):
                with lock:
                    result.errors += 1
                continue
            with lock:
                result.add_request(tokens, sent, first, last)

    result.seconds = run_streams(run, streams)
    client.close()
    return result


def run_direct_levels(
    base_url: str,
    model: str,
    *,
    levels: Sequence[int],
    requests_per_stream: int,
    max_new_tokens: int,
    warmup: bool = True,
) -> list[LevelResult]:
    """The upstream direct at each level (after a short warm-up)."""
    if warmup:
        drive_upstream(base_url, model, min(4, max(levels)), requests_per_stream=1, max_new_tokens=8)
    return [
        drive_upstream(
            base_url, model, n, requests_per_stream=requests_per_stream, max_new_tokens=max_new_tokens
        )
        for n in levels
    ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def format_upstream_report(
    custos: Sequence[LevelResult],
    direct: Sequence[LevelResult],
    *,
    upstream: str,
    model: str,
    max_new_tokens: int,
    note: str = "",
) -> str:
    """The side-by-side table, the ratios and the goals."""
    lines = [
        f"Custos over {upstream} (model {model}) vs the upstream direct; {max_new_tokens} new tokens, greedy",
        *([note] if note else []),
        "",
        f"{'path':<8} {'streams':>7} {'tok/s':>8} {'ratio':>6} {'TTFT p50':>9} {'TTFT p99':>9} "
        f"{'ITL p50':>8} {'errors':>6}",
    ]
    by_level = {r.streams: r for r in direct}
    for mine in custos:
        theirs = by_level.get(mine.streams)
        for row in (theirs, mine):
            if row is None:
                continue
            ratio = ""
            if row is mine and theirs is not None and theirs.tokens_per_second > 0:
                ratio = f"{mine.tokens_per_second / theirs.tokens_per_second:.2f}x"
            lines.append(
                f"{row.path:<8} {row.streams:>7} {row.tokens_per_second:>8.1f} {ratio:>6} "
                f"{_ms(_percentile(row.ttft, 50)):>9} {_ms(_percentile(row.ttft, 99)):>9} "
                f"{_ms(_percentile(row.itl, 50)):>8} {row.errors:>6}"
            )
    single_custos = next((r for r in custos if r.streams == 1), None)
    single_direct = by_level.get(1)
    if single_custos and single_direct:
        mine_ttft, their_ttft = _percentile(single_custos.ttft, 50), _percentile(single_direct.ttft, 50)
        if mine_ttft is not None and their_ttft is not None:
            lines.append(f"TTFT overhead at 1 stream (p50): {(mine_ttft - their_ttft) * 1000:.0f} ms")
    lines.append("")
    lines.append("goals: " + "; ".join(f"{name} {target}" for name, target in GOALS))
    return "\n".join(lines)
