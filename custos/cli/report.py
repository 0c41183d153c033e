"""``custos report satisfaction``: customer satisfaction by task, model and period, local or remote."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from custos.cli.audit import (
    CaOpt,
    ServerOpt,
    TokenOpt,
    _backend,
    _fail,
    _Local,
    _parse_time,
    report_app,
)
from custos.cli.common import ConfigOpt, DataDirOpt, out


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
