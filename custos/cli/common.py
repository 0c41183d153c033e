"""What the `custos` command modules share: consoles, --data-dir/--config options, settings loading.

Also the pieces the local operator commands repeat: the operating-system user as audit actor, the migrated
database of the data directory, privacy errors as exit code 1, and the model-preparation progress display.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from custos.privacy.errors import PrivacyError
from custos.server.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

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


def os_actor() -> str:
    """The audit actor of a local command: the operating-system user who ran it."""
    return f"os:{getpass.getuser()}"


def open_database(settings: Settings) -> Engine:
    """The data directory's database, migrated (the directory is created, mode 0700, if missing)."""
    from custos.audit.db import make_engine, migrate

    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    return engine


@contextmanager
def exit_on_privacy_errors() -> Iterator[None]:
    """Key and privacy errors end the command with their (fix-it) message and exit code 1."""
    try:
        yield
    except (PrivacyError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@contextmanager
def model_progress() -> Iterator[Callable[[str, float | None], None]]:
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
