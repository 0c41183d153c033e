"""``custos keys``, ``custos subjects`` and ``custos transcripts``: key life cycle and data-subject rights.

They work locally on ``--data-dir`` / ``--config`` and are audited with the operating-system user as actor.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from custos.cli.common import ConfigOpt, DataDirOpt, err, out, settings_or_exit
from custos.privacy.errors import KeyFileError, PrivacyError
from custos.server.settings import Settings

keys_app = typer.Typer(help="Master keys: create, rotate, rewrap, list.", no_args_is_help=True)
subjects_app = typer.Typer(help="Data-subject rights: erasure and access.", no_args_is_help=True)
transcripts_app = typer.Typer(help="Stored transcripts: retention.", no_args_is_help=True)

ForceOpt = Annotated[
    bool, typer.Option("--force", help="Overwrite an existing key file (destroys its keys).")
]


def _actor() -> str:
    return f"os:{getpass.getuser()}"


@contextmanager
def _errors() -> Iterator[None]:
    """Key and privacy errors end the command with their (fix-it) message and exit code 1."""
    try:
        yield
    except (PrivacyError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def _database(settings: Settings) -> Any:
    from custos.audit.db import make_engine, migrate

    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    return engine


def _audit_event(settings: Settings, engine: Any, event_type: str, rpc: str, details: dict[str, Any]) -> str:
    from custos.audit.events import AuditEvent
    from custos.audit.store import AuditStore

    event = AuditEvent.single(event_type, actor=_actor(), rpc=rpc, details=details)
    return AuditStore(engine).append(event).id


@keys_app.command("init")
def keys_init(data_dir: DataDirOpt = None, config: ConfigOpt = None, force: ForceOpt = False) -> None:
    """Create the master key (file provider: the key file, mode 0600; PKCS#11: keys on the token)."""
    from custos.privacy.keys import FileKeyProvider
    from custos.server.keys import open_raw_provider

    settings = settings_or_exit(config, data_dir=data_dir)
    with _errors():
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
    with _errors():
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
            _database(settings),
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
    with _errors():
        provider = open_raw_provider(settings, create=False)
        if provider.kind != "file":
            raise KeyFileError("promote works with the file provider only")
        provider.with_primary(version).save()
        _audit_event(
            settings,
            _database(settings),
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
    """Rewrap every subject key to the primary master version; safe to interrupt and run again."""
    from custos.privacy.subject_keys import SubjectKeyStore
    from custos.server.keys import open_master_keys

    settings = settings_or_exit(config, data_dir=data_dir)
    with _errors():
        keys = open_master_keys(settings, create=False)
        engine = _database(settings)
        store = SubjectKeyStore(engine, keys)
        before = store.usage()
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
            },
        )
    out.print(
        f"{moved} subject keys rewrapped to master key version {keys.current_version} (audit record {record})"
    )


@keys_app.command("list")
def keys_list(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Every key Custos uses: provider, age and use (never key material)."""
    from custos.server.keys import key_inventory, open_master_keys

    settings = settings_or_exit(config, data_dir=data_dir)
    with _errors():
        keys = open_master_keys(settings, create=False)
        rows = key_inventory(settings, keys, _database(settings))
    now = datetime.now(UTC)
    table = Table("key", "provider", "age", "use")
    for row in rows:
        age = f"{(now - row.created).days} d" if row.created is not None else "-"
        table.add_row(row.name, row.provider, age, row.use)
    (out if out.is_terminal else Console(width=200)).print(table)


@subjects_app.command("erase")
def subjects_erase(
    subject_id: Annotated[
        str | None, typer.Argument(help="The customer's subject_id as callers send it.")
    ] = None,
    principal: Annotated[
        str | None, typer.Option(help="With --conversation: the anonymous subject of that conversation.")
    ] = None,
    conversation: Annotated[str | None, typer.Option(help="Conversation id (anonymous subject).")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Erase a subject: destroy its key and vault rows (its transcripts become unreadable); audited."""
    from custos.audit.store import AuditStore
    from custos.server.keys import ErasureLedger, SubjectService, open_master_keys

    if (subject_id is None) == (principal is None or conversation is None):
        err.print("[red]error:[/red] give SUBJECT_ID, or --principal and --conversation")
        raise typer.Exit(2)
    settings = settings_or_exit(config, data_dir=data_dir)
    with _errors():
        keys = open_master_keys(settings, create=False)
        ref = _subject_ref(keys, subject_id, principal, conversation)
        engine = _database(settings)
        service = SubjectService(
            engine,
            keys,
            AuditStore(engine),
            ErasureLedger.beside_checkpoints(settings),
            vault_ttl_seconds=settings.vault_ttl_seconds,
        )
        result = service.erase(ref, actor=_actor(), rpc="cli:subjects erase")
    print(
        json.dumps(
            {
                "subject_ref": result.subject_ref,
                "subject_key_destroyed": result.subject_key_destroyed,
                "vault_rows_deleted": result.vault_rows_deleted,
                "transcripts_unreadable": result.transcripts_unreadable,
                "audit_record": result.record_id,
            },
            sort_keys=True,
        )
    )


def _subject_ref(keys: Any, subject_id: str | None, principal: str | None, conversation: str | None) -> str:
    from custos.server.keys import anonymous_subject_ref, subject_ref_of

    if subject_id is not None:
        return subject_ref_of(keys, subject_id)
    assert principal is not None and conversation is not None
    return anonymous_subject_ref(keys, principal, conversation)


@subjects_app.command("export")
def subjects_export(
    subject_id: Annotated[str, typer.Argument(help="The customer's subject_id as callers send it.")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the JSON document (mode 0600).")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Right of access: decrypted transcripts and audit records of one subject, as one JSON file; audited."""
    from custos.audit.store import AuditStore
    from custos.server.keys import export_subject, open_master_keys, subject_ref_of

    settings = settings_or_exit(config, data_dir=data_dir)
    with _errors():
        keys = open_master_keys(settings, create=False)
        engine = _database(settings)
        document = export_subject(
            engine,
            keys,
            AuditStore(engine),
            subject_ref_of(keys, subject_id),
            actor=_actor(),
            rpc="cli:subjects export",
        )
        fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, ensure_ascii=False, indent=2, sort_keys=True)
    out.print(
        f"{len(document['transcripts'])} transcripts and {len(document['audit_records'])} audit records "
        f"written to {out_file} (audit record {document['export_record']})"
    )


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
    from custos.server.keys import purge_transcripts

    settings = settings_or_exit(config, data_dir=data_dir)
    days = older_than_days or settings.transcript_retention_days
    if not days:
        err.print("[red]error:[/red] set transcript_retention_days or pass --older-than-days")
        raise typer.Exit(2)
    engine = _database(settings)
    deleted = purge_transcripts(
        engine,
        AuditStore(engine),
        older_than=datetime.now(UTC) - timedelta(days=days),
        actor=_actor(),
        rpc="cli:transcripts purge",
    )
    out.print(f"{deleted} transcripts older than {days} days destroyed")


def bench_keys(
    transcript_bytes: Annotated[int, typer.Option(min=16, help="Size of the sealed transcript.")] = 4096,
    repeat: Annotated[int, typer.Option(min=10, help="Runs per step (the median is printed).")] = 2000,
) -> None:
    """Encryption and key-wrapping cost per transcript, in µs, step by step (file provider, SQLite)."""
    from custos.bench.keys import render, run

    print(
        render(
            run(transcript_bytes=transcript_bytes, repeat=repeat),
            transcript_bytes=transcript_bytes,
            repeat=repeat,
        )
    )
