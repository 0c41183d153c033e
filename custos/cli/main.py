"""The ``custos`` command line: serve, model preparation and the audit trail, on --data-dir / --config."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from custos.cli.audit import audit_app, bench_app, report_app
from custos.cli.common import ConfigOpt, DataDirOpt, err, out, settings_or_exit
from custos.cli.eval import eval_app
from custos.cli.health import health
from custos.cli.keys import bench_keys, keys_app, subjects_app, transcripts_app
from custos.cli.report import report_satisfaction
from custos.cli.security import certs_app, tokens_app
from custos.server.settings import Settings

app = typer.Typer(
    help="Custos: private, audited LLM inference for customer-relationship work.",
    no_args_is_help=True,
    add_completion=False,
)
model_app = typer.Typer(help="Prepare and inspect the local model cache.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(report_app, name="report")
app.add_typer(bench_app, name="bench")
app.add_typer(model_app, name="model")
app.add_typer(certs_app, name="certs")
app.add_typer(tokens_app, name="tokens")
app.add_typer(keys_app, name="keys")
app.add_typer(subjects_app, name="subjects")
app.add_typer(transcripts_app, name="transcripts")
bench_app.command("keys")(bench_keys)
app.command("health")(health)
app.add_typer(eval_app, name="eval")
# ``report satisfaction`` is registered on report_app by its module.
assert report_satisfaction is not None

_settings = settings_or_exit


@contextmanager
def _progress() -> Iterator[Any]:
    """A rich progress display fed by the model-preparation callback (step text, fraction or None)."""
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err
    ) as progress:
        task = progress.add_task("preparing model", total=None)

        def report(step: str, fraction: float | None) -> None:
            progress.update(
                task, description=step, total=1.0 if fraction is not None else None, completed=fraction or 0.0
            )

        yield report


@app.command()
def serve(
    listen: Annotated[
        str | None, typer.Option(help="gRPC address HOST:PORT (default 127.0.0.1:50051).")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    metrics_listen: Annotated[str | None, typer.Option(help="Prometheus address HOST:PORT.")] = None,
) -> None:
    """Run the server until SIGTERM or Ctrl-C, then drain in-flight requests and exit 0."""
    from custos.engine.startup import start_reading
    from custos.server.logs import configure_logging

    settings = _settings(config, listen=listen, data_dir=data_dir, metrics_listen=metrics_listen)
    configure_logging(settings.log_level)
    # The model cache is read on a thread while the server's modules are imported (see engine.startup).
    reading = start_reading(settings)
    from custos.server.app import CustosServer, build_components

    with _progress() as report:
        components = build_components(settings, progress=report, reading=reading)
    asyncio.run(_serve(CustosServer(settings, components)))


async def _serve(server: Any) -> None:
    await server.start()
    settings = server.settings
    host = settings.listen.rpartition(":")[0]
    out.print(
        f"Custos is serving on {host}:{server.port} (model {server.components.engine.info.name}, "
        f"{server.components.engine.info.precision}); metrics on port {server.metrics_port}."
    )
    for line in connection_hint(settings, server.port, server.security):
        out.print(line)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    out.print("draining ...")
    await server.stop(grace=settings.drain_timeout_s)


@model_app.command("prepare")
def model_prepare(
    source: Annotated[
        str | None, typer.Option(help="'bundled', a GGUF file or a Hugging Face directory.")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="bf16, fp32, int8, int8-dynamic or auto (fastest admitted).")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Convert the model once into the cache (with a manifest) so later starts take seconds.

    The precision must pass the quality gate against fp32 (stored in the manifest); otherwise no cache is
    written and the command exits 1. ``auto`` measures every mode's decode speed and quality, prints them
    and keeps the fastest admitted one.
    """
    from custos.engine.cache import load_manifest
    from custos.engine.quality import QualityGateError
    from custos.engine.selection import describe_selection
    from custos.engine.startup import prepare_from_settings
    from custos.server.app import ensure_private_dir

    settings = _settings(config, data_dir=data_dir, model_source=source, precision=precision)
    try:
        with _progress() as report:
            path = prepare_from_settings(
                settings, report, cache_root=ensure_private_dir(settings.resolved_model_cache_dir)
            )
    except QualityGateError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    manifest = load_manifest(path)
    if manifest.selection is not None:
        out.print(f"precision auto (decode measured within {manifest.selection['time_limit_s']:g} s):")
        for line in describe_selection(manifest.selection):
            out.print(f"  {line}", highlight=False, soft_wrap=True)
    out.print(f"model cache ready: {path} (precision {manifest.precision})")


def connection_hint(settings: Settings, port: int, security: Any) -> list[str]:
    """How to connect; printed in full only on the start that created the certificates or token."""
    host = settings.listen.rpartition(":")[0]
    if settings.plaintext:
        return [f"Try: grpcurl -plaintext {host}:{port} list"]
    if security is None or not (security.created_certs or security.admin_token_file):
        return [f"TLS on; CA {settings.tls_dir / 'ca.pem'} (development) or your own."]
    lines = ["Created for this data directory (mode 0600):"]
    if security.ca_file is not None:
        lines.append(f"  CA certificate   {security.ca_file}")
    if security.admin_token_file is not None:
        lines.append(f"  admin token      {security.admin_token_file}")
    ca = security.ca_file or settings.tls_dir / "ca.pem"
    lines.append(
        f'Try: grpcurl -cacert {ca} -H "authorization: Bearer $(cat {settings.admin_token_file})" '
        f"localhost:{port} list custos.v1.Inference"
    )
    return lines


@bench_app.command("serve")
def bench_serve(
    levels: Annotated[str, typer.Option(help="Concurrent streams to measure, comma-separated.")] = "1,4,8,32",
    requests: Annotated[int, typer.Option(min=1, help="Requests each stream sends in turn.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="New tokens per answer.")] = 64,
    bandwidth_gbps: Annotated[float, typer.Option(help="Memory bandwidth for the roofline, GB/s.")] = 30.0,
    source: Annotated[
        str | None, typer.Option(help="'bundled', a GGUF file or a Hugging Face directory.")
    ] = None,
    precision: Annotated[str | None, typer.Option(help="bf16, fp32, int8, int8-dynamic or auto.")] = None,
    raw_precision: Annotated[
        str | None,
        typer.Option(help="Precision of the raw generate baseline (default: the server's); needs its cache."),
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Start ``custos serve`` on loopback, drive it over gRPC, then compare with raw ``generate``."""
    import tempfile

    from custos.bench.process import served, weight_bytes
    from custos.bench.serve import (
        BenchReport,
        bench_prompts,
        format_report,
        measure_llamacpp,
        run_raw_levels,
        run_server_levels,
    )
    from custos.engine.local import TransformersEngine
    from custos.engine.startup import prepare_from_settings

    try:
        counts = tuple(int(n) for n in levels.split(","))
    except ValueError:
        err.print("[red]error:[/red] --levels: expected comma-separated integers such as 1,4,8,32")
        raise typer.Exit(2) from None
    if not counts or min(counts) < 1:
        err.print("[red]error:[/red] --levels: every level must be at least 1")
        raise typer.Exit(2)
    base = _settings(config, data_dir=data_dir, model_source=source, precision=precision)
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
        )
        peak_rss = server.peak_rss()
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
    )
    typer.echo(format_report(result))  # plain text: a rich console would wrap the table


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


@app.command("anonymize")
def anonymize(
    text: Annotated[str | None, typer.Argument(help="Text to anonymize (or use --file).")] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help='JSONL: {"text"} or {"conversation_id", "messages"} per line.'),
    ] = None,
    conversation_id: Annotated[str, typer.Option(help="Conversation of TEXT (scopes placeholders).")] = "cli",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Print, as JSONL, exactly the text the model would be given and the findings; audited, no model."""
    from custos.cli.privacy import AnonymizeInput, InputError, LocalAnonymizer, parse_jsonl

    if (text is None) == (file is None):
        err.print("[red]error:[/red] give TEXT or --file, not both")
        raise typer.Exit(2)
    settings = _settings(config, data_dir=data_dir)
    try:
        if file is not None:
            items = list(parse_jsonl(file.read_text(encoding="utf-8").splitlines()))
        else:
            assert text is not None
            items = [AnonymizeInput(conversation_id, [{"role": "user", "content": text}])]
    except (InputError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    anonymizer = LocalAnonymizer(settings)
    for item in items:
        print(json.dumps(anonymizer.anonymize(item), ensure_ascii=False))


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
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the raw results here.")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Custos vs plain Presidio (same spaCy pipeline): P/R/F2, leak rates, latency, goals, red-team set."""
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
    )
    print(benchmark.render(results))
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2, sort_keys=True))


def main() -> None:
    """Console-script entry point."""
    app()
