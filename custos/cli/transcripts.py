"""``custos transcripts``: stored transcripts past their retention period are destroyed; audited.

The operating-system user is the audit actor.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from custos.cli.common import ConfigOpt, DataDirOpt, err, open_database, os_actor, out, settings_or_exit

transcripts_app = typer.Typer(help="Stored transcripts: retention.", no_args_is_help=True)


@transcripts_app.command("purge")
def transcripts_purge(
    older_than_days: Annotated[
        int | None, typer.Option(min=1, help="Default: the transcript_retention_days setting.")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Destroy transcripts past the retention period; audited (transcript_purge)."""
    from custos.audit.store import AuditStore
    from custos.privacy.erasure import purge_transcripts

    settings = settings_or_exit(config, data_dir=data_dir)
    days = older_than_days or settings.transcript_retention_days
    if not days:
        err.print("[red]error:[/red] set transcript_retention_days or pass --older-than-days")
        raise typer.Exit(2)
    engine = open_database(settings)
    deleted = purge_transcripts(
        engine,
        AuditStore(engine),
        older_than=datetime.now(UTC) - timedelta(days=days),
        actor=os_actor(),
        rpc="cli:transcripts purge",
    )
    out.print(f"{deleted} transcripts older than {days} days destroyed")
