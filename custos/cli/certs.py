"""``custos certs``: the development CA and server certificate, on --data-dir / --config."""

from __future__ import annotations

from typing import Annotated

import typer

from custos.cli.common import ConfigOpt, DataDirOpt, err, out, settings_or_exit

certs_app = typer.Typer(help="Make the development CA and server certificate.", no_args_is_help=True)

_settings = settings_or_exit


@certs_app.command("init")
def certs_init(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    listen: Annotated[str | None, typer.Option(help="Address the server certificate is for.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace existing certificates.")] = False,
) -> None:
    """Create a development CA and a server certificate (0600) in DATA_DIR/tls."""
    from custos.security.tls import TLSFilesExist, TLSPaths, init_dev_certs, server_names

    settings = _settings(config, data_dir=data_dir, listen=listen)
    paths = TLSPaths.in_dir(settings.tls_dir)
    try:
        init_dev_certs(paths, settings.listen, force=force)
    except TLSFilesExist as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    out.print(f"CA certificate: {paths.ca_cert}")
    out.print(f"server certificate: {paths.server_cert} for {', '.join(server_names(settings.listen))}")
    out.print("A running server picks the new certificate up on its next connection.")
