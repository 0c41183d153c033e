"""``custos health``: ask a running server's ``grpc.health.v1`` service whether it is serving.

Made for container health checks and scripts: the exit code is the answer (0 SERVING, 1 anything else,
2 a usage error). TLS by default with ``--ca-file`` (and ``--cert-file``/``--key-file`` where the server
requires client certificates); ``--plaintext`` for a plaintext server. Health is open to every caller, so the
token (``--token`` or ``CUSTOS_TOKEN``) is optional and only sent when given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from custos.cli.common import err, out

# Exit codes: the first two are what Docker's HEALTHCHECK and Kubernetes exec probes read.
EXIT_SERVING = 0
EXIT_NOT_SERVING = 1
EXIT_USAGE = 2


def _read(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        err.print(f"[red]error:[/red] cannot read {option} {path}")
        raise typer.Exit(EXIT_USAGE) from None


def health(
    server: Annotated[str, typer.Option("--server", help="Server address HOST:PORT.")] = "127.0.0.1:50051",
    service: Annotated[
        str, typer.Option(help="Service to ask about, e.g. custos.v1.Inference; empty: the whole server.")
    ] = "",
    plaintext: Annotated[bool, typer.Option("--plaintext", help="The server runs without TLS.")] = False,
    ca_file: Annotated[
        Path | None,
        typer.Option("--ca-file", help="CA certificate (PEM) the server's certificate chains to."),
    ] = None,
    cert_file: Annotated[
        Path | None,
        typer.Option("--cert-file", help="Client certificate (PEM) for servers that require mTLS."),
    ] = None,
    key_file: Annotated[Path | None, typer.Option("--key-file", help="Private key of --cert-file.")] = None,
    server_name: Annotated[
        str | None,
        typer.Option("--server-name", help="Name to check the server certificate against (default: host)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="CUSTOS_TOKEN", help="Bearer token (optional; or CUSTOS_TOKEN)."),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the answer.")] = 5.0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing; the exit code answers.")
    ] = False,
) -> None:
    """Exit 0 when the server (or --service) reports SERVING, 1 otherwise."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if plaintext and (ca_file or cert_file or key_file or server_name):
        err.print(
            "[red]error:[/red] --plaintext cannot be combined with --ca-file, --cert-file, --key-file "
            "or --server-name"
        )
        raise typer.Exit(EXIT_USAGE)
    if (cert_file is None) != (key_file is None):
        err.print("[red]error:[/red] --cert-file and --key-file go together")
        raise typer.Exit(EXIT_USAGE)
    options: list[tuple[str, str]] = []
    if plaintext:
        channel = grpc.insecure_channel(server)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(ca_file, "--ca-file") if ca_file else None,
            private_key=_read(key_file, "--key-file") if key_file else None,
            certificate_chain=_read(cert_file, "--cert-file") if cert_file else None,
        )
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        channel = grpc.secure_channel(server, credentials, options=options)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=metadata
            )
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            if not quiet:
                err.print(f"{server}: no answer ({code})")
            raise typer.Exit(EXIT_NOT_SERVING) from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    if not quiet:
        out.print(f"{server}{' ' + service if service else ''}: {status}")
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        raise typer.Exit(EXIT_NOT_SERVING)
