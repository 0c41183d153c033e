"""The ``custos`` command line: serve, model preparation and the audit trail, on --data-dir / --config."""

from __future__ import annotations

import asyncio
import getpass
import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from custos.server.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    help="Custos: private, audited LLM inference for customer-relationship work.",
    no_args_is_help=True,
    add_completion=False,
)
audit_app = typer.Typer(help="Read and verify the audit trail (compliance officers).", no_args_is_help=True)
model_app = typer.Typer(help="Prepare and inspect the local model cache.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(model_app, name="model")
bench_app = typer.Typer(help="Benchmarks with a baseline measured in the same run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

out = Console()
err = Console(stderr=True)

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default ./custos-data, or CUSTOS_DATA_DIR)."),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file.")]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, **overrides)
    except SettingsError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


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
    from custos.server.app import CustosServer, build_components
    from custos.server.logs import configure_logging

    settings = _settings(config, listen=listen, data_dir=data_dir, metrics_listen=metrics_listen)
    configure_logging(settings.log_level)
    with _progress() as report:
        components = build_components(settings, progress=report)
    asyncio.run(_serve(CustosServer(settings, components)))


async def _serve(server: Any) -> None:
    await server.start()
    settings = server.settings
    host = settings.listen.rpartition(":")[0]
    out.print(
        f"Custos is serving on {host}:{server.port} (model {server.components.engine.info.name}, "
        f"{server.components.engine.info.precision}); metrics on port {server.metrics_port}."
    )
    out.print(f"Try: grpcurl -plaintext {host}:{server.port} list")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    out.print("draining ...")
    await server.stop(grace=30.0)


@model_app.command("prepare")
def model_prepare(
    source: Annotated[
        str | None, typer.Option(help="'bundled', a GGUF file or a Hugging Face directory.")
    ] = None,
    precision: Annotated[str | None, typer.Option(help="bf16 or fp32.")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Convert the model once into the cache (with a manifest) so later starts take seconds."""
    from custos.server.app import ensure_private_dir
    from custos.server.engine.cache import prepare_model

    settings = _settings(config, data_dir=data_dir, model_source=source, precision=precision)
    with _progress() as report:
        path = prepare_model(
            prompt_format=settings.prompt_format,
            source=settings.model_source,
            cache_root=ensure_private_dir(settings.resolved_model_cache_dir),
            precision=settings.precision,
            progress=report,
        )
    out.print(f"model cache ready: {path}")


@bench_app.command("serve")
def bench_serve(
    levels: Annotated[str, typer.Option(help="Concurrent streams to measure, comma-separated.")] = "1,4,8,32",
    requests: Annotated[int, typer.Option(min=1, help="Requests each stream sends in turn.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="New tokens per answer.")] = 64,
    bandwidth_gbps: Annotated[float, typer.Option(help="Memory bandwidth for the roofline, GB/s.")] = 30.0,
    source: Annotated[
        str | None, typer.Option(help="'bundled', a GGUF file or a Hugging Face directory.")
    ] = None,
    precision: Annotated[str | None, typer.Option(help="bf16 or fp32.")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Start ``custos serve`` on loopback, drive it over gRPC, then compare with raw ``generate``."""
    import tempfile

    from custos.server.bench import BenchReport, format_report, run_raw_levels, run_server_levels
    from custos.server.bench_process import served, weight_bytes
    from custos.server.engine.cache import prepare_model
    from custos.server.engine.hf import TransformersEngine

    try:
        counts = tuple(int(n) for n in levels.split(","))
    except ValueError:
        err.print("[red]error:[/red] --levels: expected comma-separated integers such as 1,4,8,32")
        raise typer.Exit(2) from None
    if not counts or min(counts) < 1:
        err.print("[red]error:[/red] --levels: every level must be at least 1")
        raise typer.Exit(2)
    base = _settings(config, data_dir=data_dir, model_source=source, precision=precision)
    with _progress() as report:
        cache_dir = prepare_model(
            source=base.model_source,
            cache_root=base.resolved_model_cache_dir,
            precision=base.precision,
            prompt_format=base.prompt_format,
            progress=report,
            rebuild_invalid=False,
        )
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
        )
        peak_rss = server.peak_rss()
    engine = TransformersEngine.from_cache(cache_dir, device=base.device, verify=False)
    raw = run_raw_levels(
        engine.model,
        engine.tokenizer,
        engine.prompt_format,
        levels=counts,
        requests_per_stream=requests,
        max_new_tokens=max_new_tokens,
    )
    result = BenchReport(
        server=measured,
        raw=raw,
        max_new_tokens=max_new_tokens,
        precision=base.precision,
        threads=torch_threads(),
        peak_rss_bytes=peak_rss,
        weight_bytes=weight_bytes(engine.model),
        bandwidth_gbps=bandwidth_gbps,
    )
    typer.echo(format_report(result))  # plain text: a rich console would wrap the table


def torch_threads() -> int:
    """Torch's intra-op thread count in this process (the raw baseline's)."""
    import torch

    return int(torch.get_num_threads())


def _open_audit(settings: Settings) -> Any:
    from custos.audit.db import make_engine, migrate
    from custos.audit.store import AuditStore

    if settings.database_url is None and not (settings.data_dir / "custos.db").exists():
        err.print(
            f"[red]error:[/red] no audit database in {settings.data_dir} (start the server once, "
            "or pass --data-dir / --config)"
        )
        raise typer.Exit(2)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    return AuditStore(engine)


def _record_cli_read(store: Any, rpc: str, details: dict[str, Any]) -> None:
    """Local reads of the trail are audited too, with the operating-system user as actor."""
    from custos.audit.events import AuditEvent

    now = datetime.now(UTC)
    actor = f"os:{getpass.getuser()}"
    store.append(
        AuditEvent(
            event_type="audit_read",
            phase="event",
            request_id=None,
            start_time=now,
            end_time=now,
            actor=actor,
            rpc=rpc,
            status="OK",
            model=None,
            conversation_ref=None,
            subject_ref=None,
            transcript_id=None,
            details={
                "kind": rpc.removeprefix("cli."),
                **details,
                "actor": {"principal": actor, "peer": "local"},
            },
        )
    )


def _parse_time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        err.print(f"[red]error:[/red] --{name} must be an ISO-8601 time, e.g. 2026-01-31T12:00:00Z")
        raise typer.Exit(2) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@audit_app.command("query")
def audit_query(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Number of records.")] = 20,
    event_type: Annotated[str | None, typer.Option(help="Only this event type, e.g. generate.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status, e.g. OK, INVALID_ARGUMENT.")] = None,
    actor: Annotated[str | None, typer.Option(help="Only this caller.")] = None,
    since: Annotated[str | None, typer.Option(help="Records at or after this ISO-8601 time.")] = None,
    until: Annotated[str | None, typer.Option(help="Records before this ISO-8601 time.")] = None,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Show recent audit records, newest first."""
    if output not in ("table", "json"):
        err.print("[red]error:[/red] --format must be table or json")
        raise typer.Exit(2)
    settings = _settings(config, data_dir=data_dir)
    store = _open_audit(settings)
    records, _ = store.query(
        since=_parse_time(since, "since"),
        until=_parse_time(until, "until"),
        event_type=event_type,
        status=status,
        actor=actor,
        page_size=limit,
    )
    _record_cli_read(store, "cli.query", {"returned": len(records)})
    if output == "json":
        for record in records:
            out.print_json(record.payload_json) if sys.stdout.isatty() else print(record.payload_json)
        return
    table = Table("seq", "time (UTC)", "event", "phase", "rpc", "status", "actor", "model", "request id")
    for r in records:
        table.add_row(
            str(r.seq),
            r.end_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            r.event_type,
            r.phase,
            r.rpc,
            r.status,
            r.actor,
            r.model or "",
            r.request_id,
        )
    # Piped output (files, scripts, tests) gets full rows instead of a table squeezed to 80 columns.
    (out if out.is_terminal else Console(width=240)).print(table)


@audit_app.command("verify")
def audit_verify(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Re-hash every record and check the chain; exit 0 when intact, 1 naming the first bad record."""
    settings = _settings(config, data_dir=data_dir)
    store = _open_audit(settings)
    report = store.verify()
    _record_cli_read(
        store, "cli.verify", {"ok": report.ok, "count": report.count, "first_bad_seq": report.first_bad_seq}
    )
    if report.ok:
        out.print(
            f"audit chain intact: {report.count} records, head {report.head_hash}, "
            f"{report.incomplete} incomplete request(s)"
        )
        return
    out.print(json.dumps({"ok": False, "first_bad_seq": report.first_bad_seq, "reason": report.reason}))
    err.print(f"[red]audit chain broken at record seq {report.first_bad_seq}: {report.reason}[/red]")
    raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app()
