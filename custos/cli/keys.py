"""``custos keys``: the master key life cycle (init, rotate, promote, rewrap) and the key inventory.

They work locally on ``--data-dir`` / ``--config``; rotation and rewrapping are audited with the
operating-system user as actor.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from custos.cli.common import (
    ConfigOpt,
    DataDirOpt,
    err,
    exit_on_privacy_errors,
    open_database,
    os_actor,
    out,
    settings_or_exit,
)
from custos.privacy.errors import KeyFileError
from custos.server.settings import Settings

keys_app = typer.Typer(help="Master keys: create, rotate, rewrap, list.", no_args_is_help=True)

ForceOpt = Annotated[
    bool, typer.Option("--force", help="Overwrite an existing key file (destroys its keys).")
]


def _audit_event(settings: Settings, engine: Any, event_type: str, rpc: str, details: dict[str, Any]) -> str:
    from custos.audit.events import AuditEvent
    from custos.audit.store import AuditStore

    event = AuditEvent.single(event_type, actor=os_actor(), rpc=rpc, details=details)
    return AuditStore(engine).append(event).id


@keys_app.command("init")
def keys_init(data_dir: DataDirOpt = None, config: ConfigOpt = None, force: ForceOpt = False) -> None:
    """Create the master key (file provider: the key file, mode 0600; PKCS#11: keys on the token)."""
    from custos.privacy.keys import FileKeyProvider
    from custos.server.keys import open_raw_provider

    settings = settings_or_exit(config, data_dir=data_dir)
    with exit_on_privacy_errors():
        if settings.key_provider == "pkcs11":
            provider = open_raw_provider(settings)
            provider.initialize()
            out.print(f"PKCS#11 token {settings.pkcs11_token_label}: master key versions {provider.versions}")
            return
        if settings.key_provider == "env":
            err.print(f"a new key document for {settings.key_env_var} (store it in your secret manager):")
            print(FileKeyProvider.generate().to_json().decode("ascii"), end="")
            return
        path = settings.resolved_key_file
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if force and path.exists():
            FileKeyProvider.generate(path).save()
        else:
            try:
                FileKeyProvider.create(path)
            except KeyFileError as exc:
                raise KeyFileError(f"{exc} (or pass --force)") from None
    out.print(f"master key file created: {path} (mode 0600); back it up now (docs/keys.md)")


@keys_app.command("rotate")
def keys_rotate(
    stage: Annotated[
        bool, typer.Option("--stage", help="Add the version without making it primary (promote later).")
    ] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Add a master key version and make it primary; then run ``custos keys rewrap``."""
    from custos.server.keys import open_raw_provider

    settings = settings_or_exit(config, data_dir=data_dir)
    with exit_on_privacy_errors():
        provider = open_raw_provider(settings, create=False)
        if provider.kind == "env":
            raise KeyFileError(
                f"key_provider = 'env': add a version to the document in {settings.key_env_var} yourself"
            )
        if provider.kind == "pkcs11":
            if stage:
                raise KeyFileError("--stage is supported by the file provider only")
            version = provider.add_version()
            primary = version
        else:
            rotated = provider.with_new_version(promote=not stage)
            rotated.save()
            version, primary = max(rotated.versions), rotated.current_version
        record = _audit_event(
            settings,
            open_database(settings),
            "key_rotate",
            "cli:keys rotate",
            {"provider": provider.kind, "added_version": version, "primary": primary, "staged": stage},
        )
    out.print(f"master key version {version} added; primary is {primary} (audit record {record})")


@keys_app.command("promote")
def keys_promote(
    version: Annotated[int, typer.Argument(help="Master key version to make primary.")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Make a staged version primary (after every replica has been given the key file that holds it)."""
    from custos.server.keys import open_raw_provider

    settings = settings_or_exit(config, data_dir=data_dir)
    with exit_on_privacy_errors():
        provider = open_raw_provider(settings, create=False)
        if provider.kind != "file":
            raise KeyFileError("promote works with the file provider only")
        provider.with_primary(version).save()
        _audit_event(
            settings,
            open_database(settings),
            "key_rotate",
            "cli:keys promote",
            {"provider": "file", "primary": version},
        )
    out.print(f"master key version {version} is primary")


@keys_app.command("rewrap")
def keys_rewrap(
    batch_size: Annotated[int, typer.Option(min=1, help="Subject keys per transaction.")] = 200,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Rewrap every subject key to the primary master version; safe to interrupt and run again.

    Idempotency replies still sealed by a master key alone (written by the previous release) are resealed
    for their subject first, so nothing is left that only a master key version opens.
    """
    from custos.privacy.replies import reseal_legacy_replies
    from custos.privacy.subject_keys import SubjectKeyStore
    from custos.server.keys import open_master_keys

    settings = settings_or_exit(config, data_dir=data_dir)
    with exit_on_privacy_errors():
        keys = open_master_keys(settings, create=False)
        engine = open_database(settings)
        store = SubjectKeyStore(engine, keys)
        before = store.usage()
        replies = reseal_legacy_replies(engine, keys, store, batch_size=batch_size)
        pending = store.pending_rewrap()
        with Progress(
            TextColumn("rewrapping subject keys"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
        ) as progress:
            task = progress.add_task("rewrap", total=pending)
            moved = store.rewrap(batch_size=batch_size, progress=lambda n: progress.advance(task, n))
        record = _audit_event(
            settings,
            engine,
            "key_rewrap",
            "cli:keys rewrap",
            {
                "primary": keys.current_version,
                "moved": moved,
                "before": {str(v): n for v, n in sorted(before.items())},
                "replies_resealed": replies.resealed,
                "replies_dropped": replies.dropped,
            },
        )
    if replies.resealed or replies.dropped:
        out.print(
            f"{replies.resealed} idempotency replies resealed for their subjects, {replies.dropped} deleted "
            "(subject unknown or erased)"
        )
    out.print(
        f"{moved} subject keys rewrapped to master key version {keys.current_version} (audit record {record})"
    )


@keys_app.command("list")
def keys_list(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    output: Annotated[
        Literal["table", "json"], typer.Option("--format", help="table or json (one object per key).")
    ] = "table",
) -> None:
    """Every key Custos uses: provider, age and use (never key material)."""
    from custos.server.keys import key_inventory, open_master_keys

    settings = settings_or_exit(config, data_dir=data_dir)
    with exit_on_privacy_errors():
        keys = open_master_keys(settings, create=False)
        rows = key_inventory(settings, keys, open_database(settings))
    now = datetime.now(UTC)
    if output == "json":
        listing = [
            {
                "key": row.name,
                "provider": row.provider,
                "created": row.created.isoformat() if row.created is not None else None,
                "use": row.use,
            }
            for row in rows
        ]
        print(json.dumps(listing, indent=2))
        return
    table = Table("key", "provider", "age", "use")
    for row in rows:
        age = f"{(now - row.created).days} d" if row.created is not None else "-"
        table.add_row(row.name, row.provider, age, row.use)
    (out if out.is_terminal else Console(width=200)).print(table)
