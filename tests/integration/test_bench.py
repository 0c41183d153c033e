"""The serving benchmark in its short form (tiny model, two levels, a few tokens), so it cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from custos.cli.main import app as cli_app
from custos.testing.tiny_engine import save_tiny_model_dir


def test_bench_serve_short_form(tmp_path: Path) -> None:
    source = save_tiny_model_dir(tmp_path / "tiny-hf")
    result = CliRunner().invoke(
        cli_app,
        [
            "bench",
            "serve",
            "--source",
            str(source),
            "--precision",
            "fp32",
            "--data-dir",
            str(tmp_path / "data"),
            "--levels",
            "1,2",
            "--max-new-tokens",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {
        (m["path"].strip(), int(m["streams"])): m
        for m in re.finditer(
            r"^(?P<path>custos|raw generate)\s+(?P<streams>\d+)\s+(?P<tps>[\d.]+)\s+(?P<ttft>[\d.]+)"
            r"\s+\S+\s+\S+\s+\S+\s+(?P<errors>\d+)",
            result.output,
            re.MULTILINE,
        )
    }
    assert set(rows) == {("custos", 1), ("custos", 2), ("raw generate", 1), ("raw generate", 2)}, (
        result.output
    )
    for row in rows.values():
        assert float(row["tps"]) > 0 and float(row["ttft"]) > 0
        assert row["errors"] == "0"
    for goal in (
        "single stream vs raw generate",
        "8 streams vs single stream",
        "privacy + audit",
        "peak RSS",
    ):
        assert goal in result.output
    assert re.search(r"privacy \+ audit share of end-to-end time\s+<= 10 %\s+[\d.]+ %", result.output)
    # No GGUF source (a tiny Hugging Face directory) and maybe no llama-cpp-python: named, with the reason.
    assert re.search(r"^llama\.cpp: not measured \(.+\)$", result.output, re.MULTILINE), result.output
    assert re.search(
        r"^single stream vs llama\.cpp \(stretch\)\s+>= 1\.0x\s+-\s+not measured$", result.output, re.M
    )
    # Forced by default: every answer on every path has exactly --max-new-tokens tokens.
    assert "8 new tokens (forced: end-of-sequence held off on every path)" in result.output
    assert re.search(r"^load average \(1 min\) [\d.]+ at start, [\d.]+ at end$", result.output, re.MULTILINE)
    # Nothing of the benchmark lands in the operator's data directory but the model cache.
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["models"]


def test_bench_serve_refuses_bad_levels(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app, ["bench", "serve", "--levels", "1,x", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--levels" in result.output


def test_bench_http_short_form(tmp_path: Path) -> None:
    source = save_tiny_model_dir(tmp_path / "tiny-hf")
    result = CliRunner().invoke(
        cli_app,
        [
            "bench",
            "http",
            "--source",
            str(source),
            "--precision",
            "fp32",
            "--data-dir",
            str(tmp_path / "data"),
            "--streams",
            "2",
            "--rounds",
            "2",
            "--max-new-tokens",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {
        m["path"]: m
        for m in re.finditer(
            r"^(?P<path>grpc|http)\s+(?P<tps>[\d.]+)\s+(?P<ttft>\d+)\s+\d+\s+\S+\s+(?P<errors>\d+)$",
            result.output,
            re.MULTILINE,
        )
    }
    assert set(rows) == {"grpc", "http"}, result.output
    for row in rows.values():
        assert float(row["tps"]) > 0 and row["errors"] == "0"
    assert re.search(
        r"^HTTP path overhead: [+-][\d.]+ % of end-to-end time \(goal <= 5 %", result.output, re.M
    )


def test_bench_console_short_form() -> None:
    result = CliRunner().invoke(cli_app, ["bench", "console", "--records", "1000", "--runs", "2"])
    assert result.exit_code == 0, result.output
    cells = [[c.strip() for c in line.split("\u2502")[1:-1]] for line in result.output.splitlines()]
    pages = {row[0]: row for row in cells if len(row) == 6 and row[4].isdigit()}
    assert {"search: by request id", "record page", "chain status", "reports"} <= set(pages), result.output
    assert {row[4] for row in pages.values()} == {"200"}
    assert all(float(row[1]) > 0 for row in pages.values())
    assert "log: 1,000 records on SQLite; 2 runs per page" in result.output


def test_bench_serve_upstream_short_form(tmp_path: Path) -> None:
    from custos.testing.upstream import FakeUpstream

    with FakeUpstream() as fake:
        result = CliRunner().invoke(
            cli_app,
            [
                "bench",
                "serve",
                "--upstream",
                fake.base_url,
                "--upstream-model",
                fake.model,
                "--data-dir",
                str(tmp_path / "data"),
                "--levels",
                "1,2",
                "--max-new-tokens",
                "8",
            ],
        )
        received = list(fake.received)
    assert result.exit_code == 0, result.output
    rows = {
        (m["path"], int(m["streams"])): m
        for m in re.finditer(
            r"^(?P<path>custos|direct)\s+(?P<streams>\d+)\s+(?P<tps>[\d.]+)\s+\S*\s*\d+\s+\d+\s+\S+\s+(?P<errors>\d+)$",
            result.output,
            re.MULTILINE,
        )
    }
    assert set(rows) == {("custos", 1), ("custos", 2), ("direct", 1), ("direct", 2)}, result.output
    assert all(float(r["tps"]) > 0 and r["errors"] == "0" for r in rows.values()), result.output
    assert re.search(r"^TTFT overhead at 1 stream \(p50\): -?\d+ ms$", result.output, re.MULTILINE)
    # Both paths reached the upstream: Custos with anonymized prompts, the direct path with the raw ones.
    assert any("<PERSON_1>" in body["prompt"] for body in received)
    assert any("Maria Lopez" in body["prompt"] for body in received)


def test_bench_serve_upstream_refuses_a_bad_url(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli_app, ["bench", "serve", "--upstream", "ftp://x", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "--upstream" in result.output
