"""Small things users trip over: the version flag and a clear message for a missing optional dependency."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from typer.testing import CliRunner

from custos.cli.main import app
from custos.version import custos_version

runner = CliRunner()


def test_version_flag() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"custos {custos_version()}"
    assert custos_version()[0].isdigit()


def test_bench_privacy_without_its_evaluator_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "presidio_evaluator" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    result = runner.invoke(app, ["bench", "privacy", "--count", "10"])
    assert result.exit_code == 2
    assert "custos[bench]" in result.output
