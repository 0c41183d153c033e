"""What the `custos` command modules share: consoles, --data-dir/--config options, settings loading."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from custos.server.settings import Settings, SettingsError, load_settings

out = Console()
err = Console(stderr=True)

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default ./custos-data, or CUSTOS_DATA_DIR)."),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file.")]


def settings_or_exit(config: Path | None, **overrides: Any) -> Settings:
    """Load settings; a bad setting prints its message and exits with code 2."""
    try:
        return load_settings(config, **overrides)
    except SettingsError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
