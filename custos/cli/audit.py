"""Compliance commands: ``custos audit ...``, ``custos report processing`` and ``custos bench audit``.

``audit`` has query, show, verify, export, archive, record-restore and harden.

They run locally on ``--data-dir`` / ``--config`` (audited with the operating-system user as actor) or, for
query, show, verify and export, remotely with ``--server`` (plus ``--ca-file`` for TLS and ``--token``, sent
as ``authorization: Bearer TOKEN``); the server then audits the read under the token's principal.
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from custos.server.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from custos.audit.store import AuditFilter

audit_app = typer.Typer(
    help="Read, verify and export the audit trail (compliance officers).", no_args_is_help=True
)
report_app = typer.Typer(
    help="Reports for compliance (GDPR Art. 30 records of processing).", no_args_is_help=True
)
bench_app = typer.Typer(
    help="Benchmarks that print a table beside a same-run baseline.", no_args_is_help=True
)

out = Console()
err = Console(stderr=True)

OUTPUT_FORMATS = ("table", "json", "csv")
TABLE_COLUMNS = ("seq", "start_time", "event_type", "phase", "rpc", "status", "actor", "model", "request_id")

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default ./custos-data, or CUSTOS_DATA_DIR)."),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file.")]
ServerOpt = Annotated[
    str | None, typer.Option("--server", help="Query a running server at HOST:PORT instead of --data-dir.")
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="CUSTOS_TOKEN", help="Bearer token for --server (or CUSTOS_TOKEN)."),
]
CaOpt = Annotated[Path | None, typer.Option("--ca-file", help="CA certificate (PEM) for TLS to --server.")]
FormatOpt = Annotated[str, typer.Option("--format", help="table, json or csv.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _parse_time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(f"--{name} must be an ISO-8601 time, e.g. 2026-01-31T12:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _filters(
    since: str | None,
    until: str | None,
    event_type: str | None,
    actor: str | None,
    status: str | None,
    model: str | None,
    entity_type: str | None,
    conversation_ref: str | None,
    subject_ref: str | None,
    request_id: str | None,
    phase: str | None,
    purpose: str | None,
) -> AuditFilter:
    from custos.audit.store import AuditFilter

    return AuditFilter(
        since=_parse_time(since, "since"),
        until=_parse_time(until, "until"),
        event_type=event_type,
        actor=actor,
        status=status,
        model=model,
        entity_type=entity_type,
        conversation_ref=conversation_ref,
        subject_ref=subject_ref,
        request_id=request_id,
        phase=phase,
        purpose=purpose,
    )


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


# ---- where the trail is: local data directory or remote server ----------------------------------------


class _Local:
    """The trail in a data directory; every read is appended as an ``audit_read`` by the OS user."""

    def __init__(self, settings: Settings) -> None:
        from custos.audit.db import make_engine, migrate
        from custos.audit.store import AuditStore
        from custos.audit.trail import AuditTrail

        if settings.database_url is None and not (settings.data_dir / "custos.db").exists():
            raise _fail(
                f"no audit database in {settings.data_dir} "
                "(start the server once, or pass --data-dir / --config)"
            )
        engine = make_engine(settings.resolved_database_url)
        migrate(engine)
        self.store = AuditStore(engine, group_commit=False)
        self.trail = AuditTrail.open(
            self.store,
            settings.data_dir,
            every_records=settings.checkpoint_every_records,
            every_seconds=settings.checkpoint_every_seconds,
        )
        self.actor = f"os:{getpass.getuser()}"

    def record(self, rpc: str, details: dict[str, Any]) -> None:
        from custos.audit.events import AuditEvent

        now = datetime.now(UTC)
        self.store.append(
            AuditEvent(
                event_type="audit_read",
                phase="event",
                start_time=now,
                end_time=now,
                actor=self.actor,
                rpc=rpc,
                status="OK",
                details={
                    "kind": rpc.removeprefix("cli."),
                    **details,
                    "actor": {"principal": self.actor, "peer": "local"},
                },
            )
        )


class _Remote:
    """A gRPC client of the Audit service with the bearer token attached to every call."""

    def __init__(self, target: str, *, token: str | None, ca_file: Path | None) -> None:
        import grpc

        from custos.v1 import audit_pb2_grpc

        if ca_file is not None:
            try:
                root = ca_file.read_bytes()
            except OSError:
                raise _fail(f"cannot read --ca-file {ca_file}") from None
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root))
        else:
            self.channel = grpc.insecure_channel(target)
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.stub = audit_pb2_grpc.AuditStub(self.channel)

    def request(self, filters: AuditFilter) -> Any:
        from google.protobuf.timestamp_pb2 import Timestamp

        from custos.v1 import audit_pb2

        fields: dict[str, Any] = {}
        for name, value in filters.given().items():
            if isinstance(value, datetime):
                stamp = Timestamp()
                stamp.FromDatetime(value.astimezone(UTC))
                fields[name] = stamp
            else:
                fields[name] = value
        return audit_pb2.AuditQueryRequest(**fields)

    @contextmanager
    def calling(self) -> Iterator[None]:
        import grpc

        try:
            yield
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            details = exc.details() if hasattr(exc, "details") else ""
            raise _fail(f"server answered {code}: {details}", 1) from None


def _backend(
    server: str | None, token: str | None, ca_file: Path | None, data_dir: Path | None, config: Path | None
) -> _Local | _Remote:
    if server is not None:
        return _Remote(server, token=token, ca_file=ca_file)
    if token is not None or ca_file is not None:
        raise _fail("--token and --ca-file need --server")
    try:
        settings = load_settings(config, data_dir=data_dir)
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    return _Local(settings)


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


def _check_format(fmt: str, allowed: Iterable[str] = OUTPUT_FORMATS) -> None:
    allowed = tuple(allowed)
    if fmt not in allowed:
        raise _fail(f"--format must be one of: {', '.join(allowed)}")


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
        str | None, typer.Option(help="Expected signing key (hex) of the export's checkpoints.")
    ] = None,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Re-hash every record, check it against the signed checkpoints; exit 1 naming the first bad one."""
    _check_format(output, ("table", "json"))
    if export is not None:
        _verify_export(export, public_key, output)
        return
    backend = _backend(server, token, ca_file, data_dir, config)
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
        total = backend.store.count()
        with _progress("verifying", total) as update:
            report, checkpoints = backend.trail.verify(progress=update)
        backend.record(
            "cli.verify",
            {
                "ok": report.ok,
                "count": report.count,
                "first_bad_seq": report.first_bad_seq,
                "checkpoints": checkpoints,
            },
        )
        result = {
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
            out.print(
                f"audit chain intact: {result['count']} records, head seq {result['head_seq']} "
                f"{result['head_hash']}, {result['checkpoints']} signed checkpoint(s), "
                f"{result['incomplete']} incomplete request(s)",
                soft_wrap=True,
            )
        return
    err.print(f"[red]audit chain broken at record seq {result['first_bad_seq']}: {result['reason']}[/red]")
    raise typer.Exit(1)


def _verify_export(path: Path, public_key: str | None, output: str) -> None:
    from custos.audit.export import verify_export

    try:
        handle = path.open("rb")
    except OSError:
        raise _fail(f"cannot read {path}") from None
    with handle, _progress("verifying export", None) as update:
        report = verify_export(handle, expected_public_key=public_key, progress=update)
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


def _local(data_dir: Path | None, config: Path | None) -> _Local:
    backend = _backend(None, None, None, data_dir, config)
    assert isinstance(backend, _Local)
    return backend


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
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """After a deliberate restore from backup, sign a restore checkpoint of the restored head."""
    from custos.audit.maintenance import record_restore

    backend = _local(data_dir, config)
    record = record_restore(backend.store, backend.trail.log, backend.trail.signer, note=note)
    out.print(f"restore recorded at seq {record.seq}; verification continues from the restored head")


@audit_app.command("harden")
def audit_harden(
    app_role: Annotated[str, typer.Option(help="PostgreSQL role the server connects as.")],
    maintenance_role: Annotated[
        str | None, typer.Option(help="Role allowed to remove archived rows.")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """PostgreSQL: make audit rows append-only for the app role (grants plus a trigger)."""
    from custos.audit.db import make_engine
    from custos.audit.hardening import harden_postgres

    try:
        settings = load_settings(config, data_dir=data_dir)
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    engine = make_engine(settings.resolved_database_url)
    try:
        harden_postgres(engine, app_role=app_role, maintenance_role=maintenance_role)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    finally:
        engine.dispose()
    out.print(f"audit_records is append-only for {app_role}")


@report_app.command("processing")
def report_processing(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Records of processing (GDPR Art. 30) from the configuration and the audit log."""
    from custos.audit.report import processing_summary

    _check_format(output, ("table", "json"))
    try:
        settings = load_settings(config, data_dir=data_dir)
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    backend = _Local(settings)
    summary = processing_summary(backend.store)
    backend.record("cli.report", {"report": "processing"})
    backend_name = "PostgreSQL" if settings.resolved_database_url.startswith("postgresql") else "SQLite"
    report = {
        "controller_system": "Custos (on-premise LLM inference with privacy filter and audit trail)",
        "period": {
            "first": summary.first.isoformat() if summary.first else None,
            "last": summary.last.isoformat() if summary.last else None,
            "requests_and_events": summary.records,
        },
        "purposes": summary.purposes or {"(none declared)": 0},
        "categories_of_personal_data": summary.entity_types,
        "recipients": summary.recipients,
        "models": summary.models,
        "retention": {
            "configured_class": settings.retention_class,
            "classes_in_log": summary.retention_classes,
        },
        "security_measures": [
            "PII detected and replaced by placeholders before the model sees the text",
            "transcripts encrypted (AES-256-GCM envelope, per-subject keys; crypto-shredding on erasure)",
            "conversation and subject references stored as HMAC blind indexes, never raw ids",
            "audit records in a SHA-256 hash chain with Ed25519-signed checkpoints outside the database "
            f"(key {backend.trail.signer.key_id})",
            f"audit database: {backend_name}; reads of the audit trail are themselves audited",
            "no outbound network at run time",
        ],
    }
    if output == "json":
        print(json.dumps(report, indent=2, sort_keys=True))
        return
    table = Table("item", "value", title="Records of processing (GDPR Art. 30)", show_lines=True)
    for key, value in report.items():
        if isinstance(value, dict):
            text = "\n".join(f"{k}: {v}" for k, v in value.items()) or "(none)"
        elif isinstance(value, list):
            text = "\n".join(f"- {v}" for v in value)
        else:
            text = str(value)
        table.add_row(key.replace("_", " "), text)
    (out if out.is_terminal else Console(width=160)).print(table)


@bench_app.command("audit")
def bench_audit(
    appends: Annotated[int, typer.Option(min=8, help="Appends per case.")] = 2000,
    verify_rows: Annotated[int, typer.Option(min=100, help="Rows for the verify case.")] = 50_000,
    repeat: Annotated[
        int,
        typer.Option(min=1, help="Runs of each case, interleaved with its baseline; medians are printed."),
    ] = 3,
    postgres_url: Annotated[
        str | None,
        typer.Option(
            envvar="CUSTOS_TEST_POSTGRES_URL", help="PostgreSQL URL (a schema is created and dropped)."
        ),
    ] = "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    no_postgres: Annotated[bool, typer.Option("--no-postgres", help="SQLite only.")] = False,
) -> None:
    """Append and verify throughput, each beside its baseline from the same run, with the goals."""
    from custos.bench.audit import run_audit_bench

    rows, notes = run_audit_bench(
        appends=appends,
        verify_rows=verify_rows,
        repeats=repeat,
        postgres_url=None if no_postgres else postgres_url,
        say=lambda msg: err.print(f"[dim]{msg}[/dim]"),
    )
    table = Table("case", "value", "baseline", "baseline value", "ratio", "goal", "met")
    for row in rows:
        table.add_row(
            row.case,
            f"{row.value:,.0f} {row.unit}",
            row.baseline_name,
            f"{row.baseline:,.0f}",
            f"{row.ratio:.2f}x",
            "" if row.goal is None else f">= {row.goal:,.0f}",
            "" if row.goal is None else ("yes" if row.value >= row.goal else "no"),
        )
    (out if out.is_terminal else Console(width=160)).print(table)
    for note in notes:
        err.print(note)
