"""Where ``custos audit`` and ``custos report`` read the audit trail: a data directory or a running server.

Locally (``--data-dir`` / ``--config``) every read is appended to the trail as an ``audit_read`` with the
operating-system user as actor; remotely (``--server``, plus ``--ca-file`` for TLS and ``--token``, sent as
``authorization: Bearer TOKEN``) the server audits the read under the token's principal. The query filters
are named as in the API.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from custos.cli.common import err, os_actor
from custos.server.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from custos.audit.store import AuditFilter
    from custos.audit.trail import AuditTrail

OUTPUT_FORMATS = ("table", "json", "csv")

ServerOpt = Annotated[
    str | None, typer.Option("--server", help="Query a running server at HOST:PORT instead of --data-dir.")
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="CUSTOS_TOKEN", help="Bearer token for --server (or CUSTOS_TOKEN)."),
]
CaOpt = Annotated[Path | None, typer.Option("--ca-file", help="CA certificate (PEM) for TLS to --server.")]


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


class _Local:
    """The trail in a data directory; every read is appended as an ``audit_read`` by the OS user."""

    def __init__(self, settings: Settings) -> None:
        from custos.audit.db import make_engine, migrate
        from custos.audit.store import AuditStore

        if settings.database_url is None and not (settings.data_dir / "custos.db").exists():
            raise _fail(
                f"no audit database in {settings.data_dir} "
                "(start the server once, or pass --data-dir / --config)"
            )
        engine = make_engine(settings.resolved_database_url)
        migrate(engine)
        self.store = AuditStore(engine, group_commit=False)
        self.settings = settings
        self.actor = os_actor()

    @cached_property
    def trail(self) -> AuditTrail:
        """The signing key and checkpoints, opened only by the commands that need them (never made here)."""
        from custos.audit.checkpoints import CheckpointError
        from custos.server.bootstrap import open_audit_trail

        try:
            return open_audit_trail(self.settings, self.store)
        except CheckpointError as exc:
            raise _fail(str(exc), 1) from None

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


def _local(data_dir: Path | None, config: Path | None) -> _Local:
    backend = _backend(None, None, None, data_dir, config)
    assert isinstance(backend, _Local)
    return backend


def _check_format(fmt: str, allowed: Iterable[str] = OUTPUT_FORMATS) -> None:
    allowed = tuple(allowed)
    if fmt not in allowed:
        raise _fail(f"--format must be one of: {', '.join(allowed)}")
