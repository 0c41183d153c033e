"""``custos tokens``: create, list and revoke bearer tokens on --data-dir / --config.

Token changes are audited with the operating-system user as actor.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from custos.cli.common import ConfigOpt, DataDirOpt, err, open_database, os_actor, out, settings_or_exit
from custos.server.settings import Settings

tokens_app = typer.Typer(help="Create, list and revoke bearer tokens.", no_args_is_help=True)

_settings = settings_or_exit


def _token_store(settings: Settings) -> Any:
    from custos.audit.store import AuditStore
    from custos.security.tokens import TokenStore

    engine = open_database(settings)
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
        token, info = store.create(principal, role, actor=os_actor(), expires_in=expires)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    err.print(f"token {info.id} for {info.principal} ({', '.join(info.roles)}); it is shown only once:")
    print(token)


@tokens_app.command("list")
def tokens_list(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    output: Annotated[
        Literal["table", "json"], typer.Option("--format", help="table or json (one object per token).")
    ] = "table",
) -> None:
    """List tokens (never their secrets)."""
    settings = _settings(config, data_dir=data_dir)
    now = datetime.now(UTC)
    tokens = _token_store(settings).list()
    if output == "json":
        listing = [
            {
                "id": info.id,
                "principal": info.principal,
                "roles": list(info.roles),
                "created": info.created_at.isoformat(),
                "expires": info.expires_at.isoformat() if info.expires_at else None,
                "revoked": info.revoked_at.isoformat() if info.revoked_at else None,
                "state": info.state(now),
            }
            for info in tokens
        ]
        print(json.dumps(listing, indent=2))
        return
    table = Table("id", "principal", "roles", "created (UTC)", "expires (UTC)", "state")
    for info in tokens:
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
        _token_store(settings).revoke(token_id, actor=os_actor())
    except KeyError:
        err.print(f"[red]error:[/red] no token with id {token_id}")
        raise typer.Exit(1) from None
    out.print(f"token {token_id} revoked")
