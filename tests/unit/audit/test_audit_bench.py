"""The audit benchmark in its short form: every case runs and is printed beside its baseline and goal.

The PostgreSQL form also builds the 50,000-record realistic log CI measures queries on; it checks the
output's structure, never timings.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from custos.bench.audit import GOAL_PG_APPENDS, WRITERS, run_audit_bench
from custos.bench.audit_log import LogSample, query_cases
from custos.cli.main import app as cli_app

CI_RECORDS = 50_000


@pytest.mark.postgres
def test_short_benchmark_reports_each_case_with_its_baseline(pg_admin: sa.Engine) -> None:
    rows, notes, queries, plans = run_audit_bench(
        appends=64,
        verify_rows=2000,
        repeats=1,
        postgres_url=pg_admin.url.render_as_string(hide_password=False),
        records=CI_RECORDS,
        query_runs=2,
    )
    by_case = {row.case: row for row in rows}
    for backend in ("sqlite", "postgresql"):
        for writers in WRITERS:
            assert f"{backend} appends/s, {writers} writer(s)" in by_case
        bound = by_case[f"{backend} appends/s, 64 writers vs bound"]
        assert bound.baseline_name == "min(64/commit, 1/CPU)"
    assert by_case["postgresql appends/s, 8 writer(s)"].goal == GOAL_PG_APPENDS
    verify = [row for row in rows if row.case.startswith("verify rows/s")]
    assert {row.baseline_name for row in verify} == {"bare SHA-256"} and len(verify) == 4
    assert sum(1 for row in rows if row.case.startswith("incremental verify of newest 1 %")) == 2
    assert all(row.value > 0 and row.baseline > 0 for row in rows)
    assert any(note.startswith(f"log: {CI_RECORDS:,} records built in") for note in notes)
    assert any("durable commit" in note and "CPU per append" in note for note in notes)

    cases = [case for case, _ in query_cases(LogSample())]
    assert [(q.case, q.page) for q in queries] == [
        *((case, page) for case in cases for page in ("first", "deep")),
        ("Get by id", "-"),
    ]
    assert all(q.p99_ms >= q.p50_ms > 0 for q in queries)
    first_pages = {q.case: q.returned for q in queries if q.page == "first"}
    assert first_pages["(no filter)"] == 50 and first_pages["event_type"] == 50
    assert set(plans) == set(cases) and all("Limit" in plan for plan in plans.values())


def test_cli_prints_the_table() -> None:
    result = CliRunner().invoke(
        cli_app,
        ["bench", "audit", "--appends", "64", "--verify-rows", "1000", "--repeat", "1", "--no-postgres"],
    )
    assert result.exit_code == 0, result.output
    for text in (
        "sqlite appends/s, 64 writer(s)",
        "1 append/txn, 8 writers",
        "bare SHA-256",
        "min(64/commit",
    ):
        assert text in result.stdout
