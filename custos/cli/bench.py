"""``custos bench``: the serve, privacy, audit, console and keys benchmarks, each beside a same-run baseline.

The measuring code is in ``custos.bench``; these commands load settings, run it and print its table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from custos.cli.common import ConfigOpt, DataDirOpt, err, model_progress, out, settings_or_exit
from custos.server.settings import Settings

bench_app = typer.Typer(
    help="Benchmarks that print a table beside a same-run baseline.", no_args_is_help=True
)

# The short names the bench serve and bench privacy bodies use.
_settings = settings_or_exit
_progress = model_progress


@bench_app.command("audit")
def bench_audit(
    appends: Annotated[int, typer.Option(min=8, help="Appends per case.")] = 2000,
    verify_rows: Annotated[int, typer.Option(min=100, help="Rows for the verify case.")] = 50_000,
    repeat: Annotated[
        int,
        typer.Option(min=1, help="Runs of each case, interleaved with its baseline; medians are printed."),
    ] = 3,
    postgres_url: Annotated[
        str | None,
        typer.Option(
            envvar="CUSTOS_TEST_POSTGRES_URL", help="PostgreSQL URL (a schema is created and dropped)."
        ),
    ] = "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    no_postgres: Annotated[bool, typer.Option("--no-postgres", help="SQLite only.")] = False,
    records: Annotated[
        int | None,
        typer.Option(
            min=1000,
            help="Also build a realistic PostgreSQL log of this many records (COPY), verify and query it.",
        ),
    ] = None,
    query_runs: Annotated[int, typer.Option(min=2, help="Runs per query case (p50/p99 over them).")] = 20,
    explain_to: Annotated[
        Path | None, typer.Option(help="Write each query case's EXPLAIN ANALYZE plan to this file.")
    ] = None,
) -> None:
    """Appends, verification and (with --records) queries, each beside its same-run baseline or bound."""
    from custos.bench.audit import GOAL_QUERY_P50_MS, GOAL_QUERY_P99_MS, run_audit_bench

    rows, notes, queries, plans = run_audit_bench(
        appends=appends,
        verify_rows=verify_rows,
        repeats=repeat,
        postgres_url=None if no_postgres else postgres_url,
        records=records,
        query_runs=query_runs,
        say=lambda msg: err.print(f"[dim]{msg}[/dim]"),
    )
    table = Table("case", "value", "baseline", "baseline value", "ratio", "goal", "met")
    for row in rows:
        table.add_row(
            row.case,
            f"{row.value:,.0f} {row.unit}",
            row.baseline_name,
            f"{row.baseline:,.0f}",
            f"{row.ratio:.2f}x",
            "" if row.goal is None else f">= {row.goal:,.0f}",
            "" if row.goal is None else ("yes" if row.value >= row.goal else "no"),
        )
    (out if out.is_terminal else Console(width=160)).print(table)
    if queries:
        goal = f"p50 <= {GOAL_QUERY_P50_MS:,.0f} ms, p99 <= {GOAL_QUERY_P99_MS:,.0f} ms"
        query_table = Table("query (newest first, 50 per page)", "page", "p50 ms", "p99 ms", "rows", "met")
        for query in queries:
            met = query.p50_ms <= GOAL_QUERY_P50_MS and query.p99_ms <= GOAL_QUERY_P99_MS
            query_table.add_row(
                query.case,
                query.page,
                f"{query.p50_ms:.1f}",
                f"{query.p99_ms:.1f}",
                str(query.returned),
                "yes" if met else "no",
            )
        (out if out.is_terminal else Console(width=160)).print(query_table)
        notes.append(f"queries: goal {goal}, {queries[0].runs} runs per case")
    if explain_to is not None and plans:
        explain_to.write_text("".join(f"-- {case}\n{plan}\n\n" for case, plan in plans.items()))
        notes.append(f"plans written to {explain_to}")
    for note in notes:
        err.print(note, soft_wrap=True)


@bench_app.command("auth-flood")
def bench_auth_flood(
    calls: Annotated[int, typer.Option(min=1, help="Unauthenticated calls to send.")] = 1000,
) -> None:
    """Audit records written for unauthenticated calls (in-process server on loopback, scripted engine)."""
    from custos.bench.auth_flood import format_flood_report, run_flood

    print(format_flood_report(run_flood(calls)))


@bench_app.command("console")
def bench_console(
    records: Annotated[
        int, typer.Option(min=1000, help="Records of the realistic log the pages read.")
    ] = 50_000,
    runs: Annotated[int, typer.Option(min=2, help="Requests per page case (p50/p99 over them).")] = 20,
    postgres_url: Annotated[
        str | None,
        typer.Option(
            envvar="CUSTOS_TEST_POSTGRES_URL", help="PostgreSQL URL (a schema is created and dropped)."
        ),
    ] = None,
) -> None:
    """Page latency of the compliance console on a realistic log (SQLite unless --postgres-url)."""
    from custos.bench.console import GOAL_PAGE_P50_MS, run_console_bench

    rows, notes = run_console_bench(
        records=records, runs=runs, postgres_url=postgres_url, say=lambda m: err.print(f"[dim]{m}[/dim]")
    )
    table = Table("console page", "p50 ms", "p99 ms", "first ms", "HTTP", f"p50 <= {GOAL_PAGE_P50_MS:.0f} ms")
    for row in rows:
        table.add_row(
            row.page,
            f"{row.p50_ms:.1f}",
            f"{row.p99_ms:.1f}",
            f"{row.cold_ms:.1f}",
            str(row.status),
            "yes" if row.met else "no",
        )
    (out if out.is_terminal else Console(width=160)).print(table)
    for note in notes:
        err.print(note, soft_wrap=True)


@bench_app.command("keys")
def bench_keys(
    transcript_bytes: Annotated[int, typer.Option(min=16, help="Size of the sealed transcript.")] = 4096,
    repeat: Annotated[int, typer.Option(min=10, help="Runs per step (the median is printed).")] = 2000,
) -> None:
    """Encryption and key-wrapping cost per transcript, in µs, step by step (file provider, SQLite)."""
    from custos.bench.keys import render, run

    print(
        render(
            run(transcript_bytes=transcript_bytes, repeat=repeat),
            transcript_bytes=transcript_bytes,
            repeat=repeat,
        )
    )


@bench_app.command("http")
def bench_http(
    streams: Annotated[int, typer.Option(min=1, help="Concurrent streams on each path.")] = 8,
    rounds: Annotated[int, typer.Option(min=1, help="Runs of each path, alternating which goes first.")] = 3,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="New tokens per answer.")] = 64,
    source: Annotated[
        str | None, typer.Option(help="'bundled', a GGUF file or a Hugging Face directory.")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="bf16, fp32, int8, int8-dynamic, int4 or auto.")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Start ``custos serve`` with the HTTP API, drive it over gRPC and over HTTP, print HTTP's overhead."""
    import tempfile

    import httpx

    from custos.bench.http import format_http_report, run_http_bench
    from custos.bench.process import served
    from custos.server.model import prepare_from_settings

    base = _settings(config, data_dir=data_dir, model_source=source, precision=precision)
    load_at_start = os.getloadavg()[0]
    with _progress() as report:
        prepare_from_settings(base, report, rebuild_invalid=False)
    with (
        tempfile.TemporaryDirectory(prefix="custos-bench-") as scratch,
        served(base, Path(scratch), max_queue=streams, http=True) as server,
    ):
        assert server.http_url is not None
        models = httpx.get(
            f"{server.http_url}/v1/models", headers={"authorization": f"Bearer {server.token}"}, timeout=30
        )
        models.raise_for_status()
        result = run_http_bench(
            server.target,
            server.http_url,
            model=models.json()["data"][0]["id"],
            token=server.token,
            streams=streams,
            rounds=rounds,
            max_new_tokens=max_new_tokens,
            say=lambda msg: err.print(f"[dim]{msg}[/dim]"),
        )
    result.load_average = (load_at_start, os.getloadavg()[0])
    typer.echo(format_http_report(result))


@bench_app.command("serve")
def bench_serve(
    levels: Annotated[str, typer.Option(help="Concurrent streams to measure, comma-separated.")] = "1,4,8,32",
    requests: Annotated[int, typer.Option(min=1, help="Requests each stream sends in turn.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="New tokens per answer.")] = 64,
    bandwidth_gbps: Annotated[float, typer.Option(help="Memory bandwidth for the roofline, GB/s.")] = 30.0,
    source: Annotated[
        str | None, typer.Option(help="'bundled', a GGUF file or a Hugging Face directory.")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="bf16, fp32, int8, int8-dynamic, int4 or auto.")
    ] = None,
    raw_precision: Annotated[
        str | None,
        typer.Option(help="Precision of the raw generate baseline (default: the server's); needs its cache."),
    ] = None,
    forced: Annotated[
        bool,
        typer.Option(
            "--forced/--not-forced",
            help="Every path generates exactly --max-new-tokens (end-of-sequence held off), so decoding is "
            "compared like for like.",
        ),
    ] = True,
    prompt_cache_off_row: Annotated[
        bool,
        typer.Option(
            "--prompt-cache-off-row",
            help="Also start the same server with prompt_cache_mb = 0 and measure one stream (a TTFT row).",
        ),
    ] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    upstream: Annotated[
        str | None,
        typer.Option(help="Base URL of an OpenAI-compatible server (vLLM): Custos over it vs it direct."),
    ] = None,
    upstream_model: Annotated[str, typer.Option(help="The model id the upstream serves.")] = "gemma-3-270m",
    custos_cpus: Annotated[
        str | None, typer.Option(help="With --upstream: cores to pin Custos to, comma-separated.")
    ] = None,
) -> None:
    """Start ``custos serve`` on loopback, drive it over gRPC, then compare with raw ``generate``.

    With ``--upstream``: Custos over that server (``engine_backend = "openai"``) against the server direct.
    """
    import tempfile

    from custos.bench.process import served, weight_bytes
    from custos.bench.serve import (
        BenchReport,
        LevelResult,
        bench_prompts,
        format_report,
        measure_llamacpp,
        run_raw_levels,
        run_server_levels,
        scraped_engine_itl,
    )
    from custos.engine.local import TransformersEngine
    from custos.server.model import prepare_from_settings

    try:
        counts = tuple(int(n) for n in levels.split(","))
    except ValueError:
        err.print("[red]error:[/red] --levels: expected comma-separated integers such as 1,4,8,32")
        raise typer.Exit(2) from None
    if not counts or min(counts) < 1:
        err.print("[red]error:[/red] --levels: every level must be at least 1")
        raise typer.Exit(2)
    base = _settings(config, data_dir=data_dir, model_source=source, precision=precision)
    if upstream is not None:
        _bench_upstream(base, upstream, upstream_model, counts, requests, max_new_tokens, custos_cpus)
        return
    load_at_start = os.getloadavg()[0]
    with _progress() as report:
        cache_dir = prepare_from_settings(base, report, rebuild_invalid=False)
    # The server's audit trail of benchmark requests goes to a scratch directory, not the operator's.
    with (
        tempfile.TemporaryDirectory(prefix="custos-bench-") as scratch,
        served(base, Path(scratch), max_queue=max(counts)) as server,
    ):
        measured = run_server_levels(
            server.target,
            levels=counts,
            requests_per_stream=requests,
            max_new_tokens=max_new_tokens,
            stages=server.stages,
            token=server.token,
            forced=forced,
            engine_itl=scraped_engine_itl(server.metrics_url) if server.metrics_url else None,
        )
        peak_rss = server.peak_rss()
    no_cache: list[LevelResult] = []
    if prompt_cache_off_row:
        uncached = base.model_copy(update={"prompt_cache_mb": 0})
        with (
            tempfile.TemporaryDirectory(prefix="custos-bench-") as scratch,
            served(uncached, Path(scratch), max_queue=1) as server,
        ):
            no_cache = run_server_levels(
                server.target,
                levels=(1,),
                requests_per_stream=requests,
                max_new_tokens=max_new_tokens,
                stages=server.stages,
                token=server.token,
                forced=forced,
                engine_itl=scraped_engine_itl(server.metrics_url) if server.metrics_url else None,
            )
        for row in no_cache:
            row.path = "custos nocache"
    if raw_precision is not None and raw_precision != base.precision:
        raw_settings = _settings(config, data_dir=data_dir, model_source=source, precision=raw_precision)
        cache_dir = prepare_from_settings(raw_settings, None, rebuild_invalid=False)
    engine = TransformersEngine.from_cache(
        cache_dir, device=base.device, verify=False, num_threads=base.torch_threads
    )
    server_weights = weight_bytes(engine.model) if raw_precision in (None, base.precision) else None
    raw = run_raw_levels(
        engine.model,
        engine.tokenizer,
        engine.prompt_format,
        levels=counts,
        requests_per_stream=requests,
        max_new_tokens=max_new_tokens,
        forced=forced,
    )
    with tempfile.TemporaryDirectory(prefix="custos-bench-gguf-") as gguf_scratch:
        llamacpp, llamacpp_note = measure_llamacpp(
            base.model_source,
            Path(gguf_scratch),
            bench_prompts(engine.tokenizer, engine.prompt_format),
            threads=torch_threads(),
            levels=counts,
            requests_per_stream=requests,
            max_new_tokens=max_new_tokens,
            stop_ids=set(engine.eos_token_ids),
            forced=forced,
        )
    result = BenchReport(
        server=measured,
        raw=raw,
        llamacpp=llamacpp,
        llamacpp_note=llamacpp_note,
        max_new_tokens=max_new_tokens,
        precision=base.precision
        if raw_precision in (None, base.precision)
        else f"{base.precision} (raw generate: {raw_precision})",
        threads=torch_threads(),
        peak_rss_bytes=peak_rss,
        weight_bytes=server_weights if server_weights is not None else _cache_weight_bytes(base),
        bandwidth_gbps=bandwidth_gbps,
        load_average=(load_at_start, os.getloadavg()[0]),
        forced=forced,
        no_prompt_cache=no_cache,
    )
    typer.echo(format_report(result))  # plain text: a rich console would wrap the table


def _bench_upstream(
    base: Settings,
    upstream: str,
    model: str,
    counts: tuple[int, ...],
    requests: int,
    max_new_tokens: int,
    custos_cpus: str | None,
) -> None:
    """``bench serve --upstream``: Custos over the upstream, then the upstream direct, same prompts."""
    import tempfile

    from custos.bench.process import served
    from custos.bench.serve import run_server_levels
    from custos.bench.upstream import format_upstream_report, run_direct_levels
    from custos.engine.upstream import check_base_url

    try:
        upstream = check_base_url(upstream, "--upstream")
        cpus = {int(c) for c in custos_cpus.split(",")} if custos_cpus else None
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc if 'upstream' in str(exc) else '--custos-cpus: expected 0,1,...'}")
        raise typer.Exit(2) from None
    load_at_start = os.getloadavg()[0]
    extra: dict[str, object] = {
        "engine_backend": "openai",
        "upstream_base_url": upstream,
        "upstream_model": model,
        "upstream_max_in_flight": max(counts),
    }
    with (
        tempfile.TemporaryDirectory(prefix="custos-bench-") as scratch,
        served(base, Path(scratch), max_queue=max(counts), extra=extra, cpus=cpus) as server,
    ):
        custos = run_server_levels(
            server.target,
            levels=counts,
            requests_per_stream=requests,
            max_new_tokens=max_new_tokens,
            stages=server.stages,
            token=server.token,
        )
    direct = run_direct_levels(
        upstream, model, levels=counts, requests_per_stream=requests, max_new_tokens=max_new_tokens
    )
    note = f"load average {load_at_start:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    if cpus:
        note += f"; Custos pinned to cores {sorted(cpus)}"
    typer.echo(
        format_upstream_report(
            custos, direct, upstream=upstream, model=model, max_new_tokens=max_new_tokens, note=note
        )
    )


def _cache_weight_bytes(settings: Settings) -> int:
    """Weight bytes of the server's model, read from its cache (for a baseline in another precision)."""
    from custos.bench.serve import weight_bytes
    from custos.engine.cache import resolve_cache
    from custos.engine.local import TransformersEngine

    cache_dir = resolve_cache(
        source=settings.model_source,
        cache_root=settings.resolved_model_cache_dir,
        precision=settings.precision,
    )
    return weight_bytes(TransformersEngine.from_cache(cache_dir, device=settings.device, verify=False).model)


def torch_threads() -> int:
    """Torch's intra-op thread count in this process (the raw baseline's)."""
    import torch

    return int(torch.get_num_threads())


@bench_app.command("privacy")
def bench_privacy(
    count: Annotated[int, typer.Option(min=10, help="Generated messages.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the generated dataset.")] = 7,
    long_count: Annotated[int, typer.Option(min=1, help="~500-character messages for latency.")] = 100,
    redteam_set: Annotated[
        Literal["tuning", "heldout"],
        typer.Option("--set", help="Half of the red-team set to score (report on heldout)."),
    ] = "heldout",
    redteam_count: Annotated[
        int | None,
        typer.Option(min=0, help="Red-team messages (a balanced prefix; default the whole half, 0: none)."),
    ] = None,
    long_rounds: Annotated[
        int,
        typer.Option(min=0, help="Rounds of the 32,000-character cost and stall measurements (0: none)."),
    ] = 2,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the raw results here.")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Custos vs plain Presidio (same spaCy pipeline): P/R/F2, leak rates, latency, goals, red-team set."""
    import importlib.util

    if importlib.util.find_spec("presidio_evaluator") is None:
        err.print(
            "[red]error:[/red] custos bench privacy generates its data set with presidio-evaluator, which a "
            "plain install does not include: pip install 'custos\\[bench]'"
        )
        raise typer.Exit(2)
    from custos.bench import privacy as benchmark
    from custos.privacy.analyzer import build_analyzer
    from custos.server.app import build_pseudonymizer

    settings = _settings(config, data_dir=data_dir)
    analyzer = build_analyzer(
        spacy_model=settings.spacy_model,
        entities=settings.pii_entities,
        phone_regions=settings.pii_phone_regions,
        deny_lists=settings.pii_deny_lists,
        crm_references=settings.pii_crm_references,
    )
    results = benchmark.run(
        build_pseudonymizer(settings, analyzer),
        benchmark.build_plain_presidio(settings.spacy_model),
        count=count,
        seed=seed,
        long_count=long_count,
        redteam_half=redteam_set,
        redteam_count=redteam_count,
        long_rounds=long_rounds,
    )
    print(benchmark.render(results))
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2, sort_keys=True))
