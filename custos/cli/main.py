"""The ``custos`` command line: the root app with ``serve`` and ``model``; every other group has its module.

Commands work on --data-dir / --config. Registration order is the order ``custos --help`` lists them in.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated, Any

import typer

from custos.cli.audit import audit_app
from custos.cli.bench import bench_app
from custos.cli.certs import certs_app
from custos.cli.common import ConfigOpt, DataDirOpt, err, model_progress, out, settings_or_exit
from custos.cli.eval import eval_app
from custos.cli.health import health
from custos.cli.keys import keys_app
from custos.cli.privacy import anonymize
from custos.cli.report import report_app
from custos.cli.subjects import subjects_app
from custos.cli.tokens import tokens_app
from custos.cli.transcripts import transcripts_app
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
app.add_typer(eval_app, name="eval")


def _print_version(value: bool) -> None:
    if value:
        from custos.version import custos_version

        typer.echo(f"custos {custos_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Custos: private, audited LLM inference for customer-relationship work."""


# The short names the serve and model prepare bodies use.
_settings = settings_or_exit
_progress = model_progress


def serve(
    listen: Annotated[
        str | None, typer.Option(help="gRPC address HOST:PORT (default 127.0.0.1:50051).")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    metrics_listen: Annotated[str | None, typer.Option(help="Prometheus address HOST:PORT.")] = None,
    http_listen: Annotated[
        str | None, typer.Option(help="OpenAI-compatible HTTP API address HOST:PORT (default: off).")
    ] = None,
) -> None:
    """Run the server until SIGTERM or Ctrl-C, then drain in-flight requests and exit 0."""
    from custos.server.logs import configure_logging
    from custos.server.model import start_reading

    settings = _settings(
        config, listen=listen, data_dir=data_dir, metrics_listen=metrics_listen, http_listen=http_listen
    )
    configure_logging(settings.log_level)
    # The model cache is read on a thread while the server's modules are imported (see server.model).
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
    if server.http_port is not None:
        scheme = "http" if settings.plaintext else "https"
        http_host = (settings.http_listen or "").rpartition(":")[0]
        out.print(f"OpenAI-compatible API: {scheme}://{http_host}:{server.http_port}/v1")
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
        str | None, typer.Option(help="bf16, fp32, int8, int8-dynamic, int4 or auto (fastest admitted).")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Convert the model once into the cache (with a manifest) so later starts take seconds.

    The precision must pass the quality gate against fp32 (stored in the manifest); otherwise no cache is
    written and the command exits 1. ``auto`` measures every mode's decode speed and quality, prints them
    and keeps the fastest admitted one.
    """
    from custos.engine.manifest import load_manifest
    from custos.engine.quality import QualityGateError
    from custos.engine.selection import describe_selection
    from custos.server.app import ensure_private_dir
    from custos.server.model import prepare_from_settings

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


# The root commands, in the order ``custos --help`` lists them (before the groups).
app.command("health")(health)
app.command()(serve)
app.command("anonymize")(anonymize)


def main() -> None:
    """Console-script entry point."""
    app()
