"""The audit benchmark in its short form: every case runs and is printed beside its baseline and goal."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from custos.bench.audit import GOAL_PG_APPENDS, GOAL_VERIFY_ROWS, run_audit_bench
from custos.cli.main import app as cli_app


@pytest.mark.postgres
def test_short_benchmark_reports_each_case_with_its_baseline(pg_admin: sa.Engine) -> None:
    rows, notes = run_audit_bench(
        appends=16,
        verify_rows=200,
        repeats=2,
        postgres_url=pg_admin.url.render_as_string(hide_password=False),
    )
    assert [note.split(":")[0] for note in notes] == ["sqlite", "postgresql", "PostgreSQL durable commit"]
    by_case = {row.case: row for row in rows}
    assert set(by_case) == {
        "sqlite appends/s, 1 writer(s)",
        "sqlite appends/s, 8 writer(s)",
        "postgresql appends/s, 1 writer(s)",
        "postgresql appends/s, 8 writer(s)",
        "verify rows/s (~1000 B payloads, SQLite)",
    }
    assert all(row.value > 0 and row.baseline > 0 for row in rows)
    assert by_case["postgresql appends/s, 8 writer(s)"].goal == GOAL_PG_APPENDS
    assert by_case["verify rows/s (~1000 B payloads, SQLite)"].baseline_name == "plain SHA-256"
    assert by_case["verify rows/s (~1000 B payloads, SQLite)"].goal == GOAL_VERIFY_ROWS


def test_cli_prints_the_table() -> None:
    result = CliRunner().invoke(
        cli_app,
        ["bench", "audit", "--appends", "8", "--verify-rows", "100", "--repeat", "1", "--no-postgres"],
    )
    assert result.exit_code == 0, result.output
    for text in ("sqlite appends/s, 8 writer(s)", "1 append/txn, 8 writers", "plain SHA-256", ">= 250,000"):
        assert text in result.stdout
