"""``custos certs`` and ``custos tokens``: local operator commands on --data-dir / --config.

Token changes are audited with the operating-system user as actor.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from custos.cli.common import ConfigOpt, DataDirOpt, err, out, settings_or_exit
from custos.server.settings import Settings

certs_app = typer.Typer(help="Make the development CA and server certificate.", no_args_is_help=True)
tokens_app = typer.Typer(help="Create, list and revoke bearer tokens.", no_args_is_help=True)

_settings = settings_or_exit


def _actor() -> str:
    return f"os:{getpass.getuser()}"


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


def _token_store(settings: Settings) -> Any:
    from custos.audit.db import make_engine, migrate
    from custos.audit.store import AuditStore
    from custos.security.tokens import TokenStore

    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    return TokenStore(engine, AuditStore(engine))


@tokens_app.command("create")
def tokens_create(
    principal: Annotated[str, typer.Option(help="Who the token identifies, e.g. crm-backend.")],
    role: Annotated[
        list[str],
        typer.Option(help="Role (repeatable): inference, compliance, compliance-transcripts, admin."),
    ],
    expires_in_days: Annotated[
        float | None, typer.Option(min=0.0, help="Days until the token expires (default: never).")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create a token and print it once; only its SHA-256 is stored."""
    settings = _settings(config, data_dir=data_dir)
    store = _token_store(settings)
    expires = timedelta(days=expires_in_days) if expires_in_days is not None else None
    try:
        token, info = store.create(principal, role, actor=_actor(), expires_in=expires)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    err.print(f"token {info.id} for {info.principal} ({', '.join(info.roles)}); it is shown only once:")
    print(token)


@tokens_app.command("list")
def tokens_list(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """List tokens (never their secrets)."""
    settings = _settings(config, data_dir=data_dir)
    now = datetime.now(UTC)
    table = Table("id", "principal", "roles", "created (UTC)", "expires (UTC)", "state")
    for info in _token_store(settings).list():
        table.add_row(
            info.id,
            info.principal,
            ",".join(info.roles),
            info.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            info.expires_at.strftime("%Y-%m-%d %H:%M:%S") if info.expires_at else "never",
            info.state(now),
        )
    (out if out.is_terminal else Console(width=200)).print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id (the part before the dot).")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke a token; calls with it get UNAUTHENTICATED from then on."""
    settings = _settings(config, data_dir=data_dir)
    try:
        _token_store(settings).revoke(token_id, actor=_actor())
    except KeyError:
        err.print(f"[red]error:[/red] no token with id {token_id}")
        raise typer.Exit(1) from None
    out.print(f"token {token_id} revoked")
