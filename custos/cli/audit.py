"""``custos audit``: query, show, verify, export, archive, record-restore and harden the audit trail.

They run locally on ``--data-dir`` / ``--config`` (audited with the operating-system user as actor) or, for
query, show, verify and export, remotely with ``--server`` (plus ``--ca-file`` for TLS and ``--token``, sent
as ``authorization: Bearer TOKEN``); the server then audits the read under the token's principal.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from custos.cli.common import ConfigOpt, DataDirOpt, err, out
from custos.cli.trail import (
    CaOpt,
    ServerOpt,
    TokenOpt,
    _backend,
    _check_format,
    _fail,
    _filters,
    _Local,
    _local,
    _parse_time,
    _Remote,
)
from custos.server.settings import SettingsError, load_settings

audit_app = typer.Typer(
    help="Read, verify and export the audit trail (compliance officers).", no_args_is_help=True
)

TABLE_COLUMNS = ("seq", "start_time", "event_type", "phase", "rpc", "status", "actor", "model", "request_id")
FormatOpt = Annotated[str, typer.Option("--format", help="table, json or csv.")]


# Filter options shared by query and export (typer needs them spelled out per command).
SinceOpt = Annotated[str | None, typer.Option(help="Records starting at or after this ISO-8601 time.")]
UntilOpt = Annotated[str | None, typer.Option(help="Records starting before this ISO-8601 time.")]
EventTypeOpt = Annotated[str | None, typer.Option(help="Only this event type, e.g. generate, audit_read.")]
ActorOpt = Annotated[str | None, typer.Option(help="Only this caller (principal).")]
StatusOpt = Annotated[str | None, typer.Option(help="Only this status, e.g. OK, INVALID_ARGUMENT.")]
ModelOpt = Annotated[str | None, typer.Option(help="Only this model name.")]
EntityOpt = Annotated[str | None, typer.Option(help="Only records whose PII findings include this type.")]
ConvOpt = Annotated[str | None, typer.Option(help="Only this conversation reference (blind index).")]
SubjectOpt = Annotated[str | None, typer.Option(help="Only this subject reference (blind index).")]
RequestOpt = Annotated[str | None, typer.Option(help="Only the records of this request id.")]
PhaseOpt = Annotated[str | None, typer.Option(help="request, completion or event.")]
PurposeOpt = Annotated[str | None, typer.Option(help="Only this declared purpose.")]


# ---- output -------------------------------------------------------------------------------------------


def _row(record: Any) -> dict[str, Any]:
    """A record (StoredRecord or protobuf AuditRecord) as a flat dict for printing."""
    from custos.audit.canonical import format_timestamp
    from custos.audit.chain import TYPED_FIELDS

    if hasattr(record, "payload_json") and hasattr(record, "ListFields"):
        body = json.loads(record.payload_json)
        row = {
            "seq": record.seq,
            "id": record.id,
            "start_time": body.get("start_time"),
            "end_time": body.get("end_time"),
            **{k: record_value for k, record_value in body.items() if k not in ("details",)},
            "prev_hash": record.prev_hash,
            "row_hash": record.row_hash,
            "details": body.get("details"),
        }
        return row
    row = {}
    for name in ("seq", "id", *TYPED_FIELDS, "purpose", "retention_class", "prev_hash", "row_hash"):
        value = getattr(record, name, None)
        row[name] = format_timestamp(value) if isinstance(value, datetime) else value
    row["details"] = dict(record.details)
    return row


def _print_records(rows: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        for row in rows:
            print(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str))
        return
    if fmt == "csv":
        columns = [c for c in rows[0] if c != "details"] if rows else list(TABLE_COLUMNS)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
        sys.stdout.write(buffer.getvalue())
        return
    table = Table(*TABLE_COLUMNS)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in TABLE_COLUMNS))
    # Piped output (files, scripts, tests) gets full rows instead of a table squeezed to 80 columns.
    (out if out.is_terminal else Console(width=240)).print(table)


@contextmanager
def _progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr fed with the number of rows done."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=not err.is_terminal,
    ) as progress:
        task = progress.add_task(description, total=total)

        def update(done: int) -> None:
            progress.update(task, completed=done)

        yield update


# ---- commands -----------------------------------------------------------------------------------------


@audit_app.command("query")
def audit_query(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_file: CaOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Records per page.")] = 20,
    page_token: Annotated[str | None, typer.Option(help="Continue from a previous page.")] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    event_type: EventTypeOpt = None,
    actor: ActorOpt = None,
    status: StatusOpt = None,
    model: ModelOpt = None,
    entity_type: EntityOpt = None,
    conversation_ref: ConvOpt = None,
    subject_ref: SubjectOpt = None,
    request_id: RequestOpt = None,
    phase: PhaseOpt = None,
    purpose: PurposeOpt = None,
    output: FormatOpt = "table",
) -> None:
    """Show audit records matching the filters, newest first (the next page's token goes to stderr)."""
    _check_format(output)
    filters = _filters(
        since, until, event_type, actor, status, model, entity_type, conversation_ref, subject_ref,
        request_id, phase, purpose,
    )  # fmt: skip
    backend = _backend(server, token, ca_file, data_dir, config)
    if isinstance(backend, _Remote):
        request = backend.request(filters)
        request.page_size = limit
        request.page_token = page_token or ""
        with backend.calling():
            response = backend.stub.Query(request, metadata=backend.metadata)
        rows, next_token = [_row(r) for r in response.records], response.next_page_token or None
    else:
        from custos.audit.errors import InvalidQuery

        try:
            records, next_token = backend.store.query(filters, page_size=limit, page_token=page_token)
        except InvalidQuery as exc:
            raise _fail(f"--{exc.field.replace('_', '-')}: {exc}") from None
        backend.record("cli.query", {"filters": filters.to_json(), "returned": len(records)})
        rows = [_row(r) for r in records]
    _print_records(rows, output)
    if next_token:
        err.print(f"next page: --page-token {next_token}")


@audit_app.command("show")
def audit_show(
    record_id: Annotated[str, typer.Argument(help="The record id.")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_file: CaOpt = None,
    output: FormatOpt = "table",
) -> None:
    """Show one record with its explanation details."""
    _check_format(output)
    backend = _backend(server, token, ca_file, data_dir, config)
    if isinstance(backend, _Remote):
        from custos.v1 import audit_pb2

        with backend.calling():
            row = _row(backend.stub.Get(audit_pb2.AuditGetRequest(id=record_id), metadata=backend.metadata))
    else:
        from custos.audit.errors import RecordNotFound

        try:
            record = backend.store.get(record_id)
        except RecordNotFound:
            raise _fail("no audit record with that id", 1) from None
        backend.record("cli.show", {"record_id": record_id})
        row = _row(record)
    if output != "table":
        _print_records([row], output)
        return
    table = Table("field", "value", show_header=False)
    for name, value in row.items():
        text = json.dumps(value, indent=2, sort_keys=True) if isinstance(value, dict) else str(value)
        table.add_row(name, "" if value is None else text)
    (out if out.is_terminal else Console(width=240)).print(table)


@audit_app.command("verify")
def audit_verify(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_file: CaOpt = None,
    export: Annotated[
        Path | None, typer.Option("--export", help="Check an export file offline instead of the live log.")
    ] = None,
    public_key: Annotated[
        str | None,
        typer.Option(
            help="Expected public key of the checkpoints: 64 hex characters, or a file holding them or a PEM "
            "key (default: audit_public_key_file, else the data directory's signing key)."
        ),
    ] = None,
    checkpoints_file: Annotated[
        Path | None,
        typer.Option(
            "--checkpoints",
            help="Checkpoint file to verify the live log against, e.g. the copy shipped off the host "
            "(default: audit_checkpoint_file).",
        ),
    ] = None,
    incremental: Annotated[
        bool,
        typer.Option(
            "--incremental",
            help="Only the records after the last signed checkpoint a verification passed (local only).",
        ),
    ] = False,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Re-hash every record, check it against the signed checkpoints; exit 1 naming the first bad one.

    A non-empty log that no signed checkpoint covers fails too.
    """
    _check_format(output, ("table", "json"))
    if export is not None:
        if checkpoints_file is not None:
            raise _fail("--checkpoints is for the live log; an export carries its own checkpoints")
        _verify_export(export, public_key, output)
        return
    if server is not None and (public_key is not None or checkpoints_file is not None):
        raise _fail("--public-key and --checkpoints verify locally; the server uses its own settings")
    backend = _backend(server, token, ca_file, data_dir, config)
    if incremental and isinstance(backend, _Remote):
        raise _fail("--incremental works on the local data directory, not with --server")
    if isinstance(backend, _Remote):
        from custos.v1 import audit_pb2

        with backend.calling():
            response = backend.stub.Verify(audit_pb2.AuditVerifyRequest(), metadata=backend.metadata)
        result = {
            "ok": response.ok,
            "count": response.count,
            "head_seq": response.head_seq,
            "head_hash": response.head_hash,
            "checkpoints": response.checkpoints,
            "incomplete": response.incomplete,
            "first_bad_seq": response.first_bad_seq if response.HasField("first_bad_seq") else None,
            "reason": response.reason,
        }
    else:
        from custos.audit.checkpoints import CheckpointLog
        from custos.audit.incremental import verify_live_from_state

        key = _verifying_key(backend, public_key)
        log = CheckpointLog(checkpoints_file or backend.settings.resolved_audit_checkpoint_file)
        if checkpoints_file is not None and not checkpoints_file.is_file():
            raise _fail(f"--checkpoints {checkpoints_file} is not a file")
        total = None if incremental else backend.store.count()
        with _progress("verifying", total) as update:
            live = verify_live_from_state(
                backend.store,
                log,
                key,
                signer=_state_signer(backend),
                incremental=incremental,
                progress=update,
            )
        report, checkpoints = live.report, live.checkpoints
        backend.record(
            "cli.verify",
            {
                "ok": report.ok,
                "count": report.count,
                "first_bad_seq": report.first_bad_seq,
                "checkpoints": checkpoints,
                "mode": live.mode,
                "resumed_from": live.resumed_from,
            },
        )
        if live.note:
            err.print(f"full verification: {live.note}")
        result = {
            "mode": live.mode,
            "resumed_from": live.resumed_from,
            "ok": report.ok,
            "count": report.count,
            "head_seq": report.head_seq,
            "head_hash": report.head_hash,
            "checkpoints": checkpoints,
            "incomplete": report.incomplete,
            "first_bad_seq": report.first_bad_seq,
            "reason": report.reason,
        }
    _print_verify(result, output)


def _print_verify(result: dict[str, Any], output: str) -> None:
    if output == "json" or not result["ok"]:
        out.print_json(json.dumps(result)) if out.is_terminal else print(json.dumps(result))
    if result["ok"]:
        if output == "table":
            after = result.get("resumed_from")
            scope = "" if after is None else f" after checkpoint seq {after} (incremental)"
            out.print(
                f"audit chain intact{scope}: {result['count']} records, head seq {result['head_seq']} "
                f"{result['head_hash']}, {result['checkpoints']} signed checkpoint(s), "
                f"{result['incomplete']} incomplete request(s)",
                soft_wrap=True,
            )
        return
    if result["first_bad_seq"] is None:
        err.print(f"[red]audit chain not verified: {result['reason']}[/red]")
    else:
        err.print(
            f"[red]audit chain broken at record seq {result['first_bad_seq']}: {result['reason']}[/red]"
        )
    raise typer.Exit(1)


def _state_signer(backend: _Local) -> Any:
    """The signing key that signs the verified state, ``None`` where this host does not hold it."""
    from custos.audit.checkpoints import CheckpointError, CheckpointSigner

    try:
        return CheckpointSigner.load(backend.settings.resolved_audit_signing_key_file)
    except CheckpointError:
        return None


def _verifying_key(backend: _Local, public_key: str | None) -> Any:
    """The key checkpoints must verify with: --public-key, else audit_public_key_file, else the signer's."""
    from custos.audit.checkpoints import CheckpointError, CheckpointSigner, load_public_key

    try:
        if public_key is not None:
            return load_public_key(public_key)
        if backend.settings.audit_public_key_file is not None:
            return load_public_key(backend.settings.audit_public_key_file)
        return CheckpointSigner.load(backend.settings.resolved_audit_signing_key_file).public_key
    except CheckpointError as exc:
        raise _fail(f"{exc}; pass --public-key", 1) from None


def _verify_export(path: Path, public_key: str | None, output: str) -> None:
    from custos.audit.checkpoints import CheckpointError, load_public_key, public_key_hex
    from custos.audit.export import verify_export

    try:
        expected = public_key_hex(load_public_key(public_key)) if public_key is not None else None
    except CheckpointError as exc:
        raise _fail(f"--public-key: {exc}") from None
    try:
        handle = path.open("rb")
    except OSError:
        raise _fail(f"cannot read {path}") from None
    with handle, _progress("verifying export", None) as update:
        report = verify_export(handle, expected_public_key=expected, progress=update)
    result = {
        "ok": report.ok,
        "rows": report.rows,
        "records": report.records,
        "checkpoints": report.checkpoints,
        "public_key": report.public_key,
        "head_seq": report.head.seq if report.head else None,
        "first_bad_seq": report.first_bad_seq,
        "reason": report.reason,
    }
    if output == "json" or not report.ok:
        print(json.dumps(result))
    if report.ok:
        if output == "table":
            out.print(
                f"export intact: {report.rows} rows ({report.records} records), "
                f"{report.checkpoints} signed checkpoint(s), key {report.public_key}",
                soft_wrap=True,
            )
            if public_key is None:
                err.print("note: pass --public-key to check the signing key against the operator's")
        return
    where = f"seq {report.first_bad_seq}" if report.first_bad_seq is not None else "file"
    err.print(f"[red]export broken at {where}: {report.reason}[/red]")
    raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_file: CaOpt = None,
    output_file: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default stdout).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl (verifiable offline) or csv.")] = "jsonl",
    since: SinceOpt = None,
    until: UntilOpt = None,
    event_type: EventTypeOpt = None,
    actor: ActorOpt = None,
    status: StatusOpt = None,
    model: ModelOpt = None,
    entity_type: EntityOpt = None,
    conversation_ref: ConvOpt = None,
    subject_ref: SubjectOpt = None,
    request_id: RequestOpt = None,
    phase: PhaseOpt = None,
    purpose: PurposeOpt = None,
) -> None:
    """Export matching records: JSON lines with hashes, checkpoints and public key, or CSV."""
    _check_format(fmt, ("jsonl", "csv"))
    filters = _filters(
        since, until, event_type, actor, status, model, entity_type, conversation_ref, subject_ref,
        request_id, phase, purpose,
    )  # fmt: skip
    backend = _backend(server, token, ca_file, data_dir, config)
    sink = output_file.open("wb") if output_file is not None else sys.stdout.buffer
    try:
        if isinstance(backend, _Remote):
            from custos.v1 import audit_pb2

            request = audit_pb2.AuditExportRequest(filter=backend.request(filters), format=fmt)
            with backend.calling(), _progress("exporting", None) as update:
                written = 0
                for chunk in backend.stub.Export(request, metadata=backend.metadata):
                    sink.write(chunk.data)
                    written += chunk.data.count(b"\n")
                    update(written)
        else:
            from custos.audit.errors import InvalidQuery

            try:
                total = backend.store.count()
            except InvalidQuery as exc:
                raise _fail(str(exc)) from None
            backend.record("cli.export", {"filters": filters.to_json(), "format": fmt})
            try:
                lines = backend.trail.export(fmt, filters.given())
                with _progress("exporting", total if fmt == "jsonl" else None) as update:
                    written = 0
                    for line in lines:
                        sink.write(line)
                        written += 1
                        if written % 1000 == 0:
                            update(written)
                    update(written)
            except InvalidQuery as exc:
                raise _fail(f"--{exc.field.replace('_', '-')}: {exc}") from None
    finally:
        if output_file is not None:
            sink.close()
        else:
            sink.flush()
    if output_file is not None:
        err.print(f"wrote {output_file}")


@audit_app.command("archive")
def audit_archive(
    before: Annotated[str, typer.Option(help="Archive records that started before this ISO-8601 time.")],
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the archive file.")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Move records past retention into a verifiable file with a closing checkpoint (maintenance role)."""
    from custos.audit.maintenance import archive

    cutoff = _parse_time(before, "before")
    assert cutoff is not None
    backend = _local(data_dir, config)
    with _progress("archiving", None) as update:
        result = archive(
            backend.store,
            backend.trail.log,
            backend.trail.signer,
            before=cutoff,
            directory=directory,
            progress=update,
        )
    if result.path is None:
        out.print("nothing to archive")
        return
    backend.record("cli.archive", {"through_seq": result.through_seq, "removed": result.removed})
    out.print(
        f"archived records through seq {result.through_seq} ({result.removed} removed) to {result.path}"
    )


@audit_app.command("record-restore")
def audit_record_restore(
    note: Annotated[str, typer.Option(help="Why (e.g. a ticket number); no personal data.")],
    new_signing_key: Annotated[
        bool,
        typer.Option(
            "--new-signing-key",
            help="The signing key is lost (or was never made, for a log written by commands before the first "
            "start): make a new one and vouch for the current head with it. Refused while the key exists "
            "or the checkpoint file holds checkpoints (move it aside first).",
        ),
    ] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """After a deliberate restore from backup, sign a restore checkpoint of the restored head."""
    from custos.audit.checkpoints import CheckpointLog, CheckpointSigner
    from custos.audit.maintenance import record_restore

    backend = _local(data_dir, config)
    if not new_signing_key:
        record = record_restore(backend.store, backend.trail.log, backend.trail.signer, note=note)
        out.print(f"restore recorded at seq {record.seq}; verification continues from the restored head")
        return
    settings = backend.settings
    key_path, log = (
        settings.resolved_audit_signing_key_file,
        CheckpointLog(settings.resolved_audit_checkpoint_file),
    )
    if log.read():
        raise _fail(
            f"{log.path} holds checkpoints signed by the old key: move it aside (keep it as evidence) first"
        )
    try:
        signer = CheckpointSigner.create(key_path)
    except FileExistsError:
        raise _fail(f"the audit signing key {key_path} exists; run without --new-signing-key") from None
    record = record_restore(backend.store, log, signer, note=note)
    out.print(
        f"new audit signing key {key_path}, public key {signer.public_key_hex} "
        f"(pin it: audit_public_key_file); restore recorded at seq {record.seq}",
        soft_wrap=True,
    )


@audit_app.command("harden")
def audit_harden(
    app_role: Annotated[str, typer.Option(help="PostgreSQL role the server connects as.")],
    maintenance_role: Annotated[
        str | None, typer.Option(help="Role allowed to remove archived rows.")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """PostgreSQL, as the database owner: migrate, then make audit rows append-only for the app role."""
    from custos.audit.db import make_engine, migrate
    from custos.audit.hardening import harden_postgres

    try:
        settings = load_settings(config, data_dir=data_dir)
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    engine = make_engine(settings.resolved_database_url)
    try:
        if engine.dialect.name == "postgresql":
            migrate(engine)  # the triggers need the tables; the server's role cannot create them
        harden_postgres(engine, app_role=app_role, maintenance_role=maintenance_role)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    finally:
        engine.dispose()
    out.print(f"audit_records is append-only for {app_role}")
