"""``custos report``: GDPR Art. 30 records of processing, and customer satisfaction by task and model.

``report processing`` reads the local data directory; ``report satisfaction`` reads it too, or a running
server with ``--server``. Both reports are audited.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from custos.cli.common import ConfigOpt, DataDirOpt, out
from custos.cli.trail import (
    CaOpt,
    ServerOpt,
    TokenOpt,
    _backend,
    _check_format,
    _fail,
    _Local,
    _parse_time,
)
from custos.server.settings import SettingsError, load_settings

report_app = typer.Typer(
    help="Reports for compliance (GDPR Art. 30 records of processing).", no_args_is_help=True
)


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


def _remote_rows(
    backend: Any, since: datetime | None, until: datetime | None, period: str
) -> list[dict[str, Any]]:
    from google.protobuf.timestamp_pb2 import Timestamp

    from custos.v1 import feedback_pb2, feedback_pb2_grpc

    request = feedback_pb2.SatisfactionRequest(period=period)
    for name, value in (("since", since), ("until", until)):
        if value is not None:
            stamp = Timestamp()
            stamp.FromDatetime(value.astimezone(UTC))
            getattr(request, name).CopyFrom(stamp)
    stub = feedback_pb2_grpc.FeedbackStub(backend.channel)
    with backend.calling():
        response = stub.Satisfaction(request, metadata=backend.metadata, timeout=60)
    return [
        {
            "task": r.task,
            "model": r.model,
            "period": r.period,
            "count": r.count,
            "mean_rating": r.mean_rating,
            "satisfied": r.satisfied,
        }
        for r in response.rows
    ]


@report_app.command("satisfaction")
def report_satisfaction(
    since: Annotated[str | None, typer.Option(help="From this ISO-8601 time (inclusive).")] = None,
    until: Annotated[str | None, typer.Option(help="Until this ISO-8601 time (exclusive).")] = None,
    period: Annotated[str, typer.Option(help="day, week or month.")] = "day",
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_file: CaOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Ratings (1-5) by task, model and period: count, mean and share satisfied (4 or 5)."""
    from custos.tasks.feedback import PERIODS, FeedbackStore

    if period not in PERIODS:
        raise _fail(f"--period must be one of {', '.join(PERIODS)}")
    if output not in ("table", "json"):
        raise _fail("--format must be table or json")
    start, end = _parse_time(since, "since"), _parse_time(until, "until")
    backend = _backend(server, token, ca_file, data_dir, config)
    if isinstance(backend, _Local):
        backend.record("cli.report", {"report": "satisfaction", "period": period})
        store = FeedbackStore(backend.store.engine)
        rows = [asdict(r) for r in store.satisfaction(since=start, until=end, period=period)]
    else:
        rows = _remote_rows(backend, start, end, period)
    if output == "json":
        print(json.dumps(rows, indent=2))
        return
    table = Table("period", "task", "model", "ratings", "mean", "satisfied", title="Customer satisfaction")
    for row in rows:
        table.add_row(
            row["period"],
            row["task"],
            row["model"],
            str(row["count"]),
            f"{row['mean_rating']:.2f}",
            f"{row['satisfied']:.0%}",
        )
    (out if out.is_terminal else Console(width=160)).print(table)
