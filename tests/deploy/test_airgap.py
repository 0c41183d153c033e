"""The air-gapped install of deploy/airgap, end to end: wheelhouse on a connected machine, install with no
index and no network, then `custos serve` in a network namespace with only loopback, answering over TLS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from custos.testing.process import write_config
from custos.testing.tiny_engine import save_tiny_model_dir

ROOT = Path(__file__).resolve().parents[2]
AIRGAP = ROOT / "deploy" / "airgap"
PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare --net"),
]


def offline_env() -> dict[str, str]:
    """No pip configuration (no index, no find-links) and no proxy: only what the wheelhouse holds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and "proxy" not in k.lower()}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHON=PYTHON)
    # Bytecode compilation of torch and transformers is most of an install's time; not what is tested here.
    env["PIP_NO_COMPILE"] = "1"
    return env


def run(args: list[str], *, env: dict[str, str], timeout: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd outside the checkout, so nothing imports this working tree's `custos` by accident.
    result = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
    )
    assert result.returncode == 0, f"{args[0]}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_wheelhouse_install_and_serve_without_network(tmp_path: Path) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    # Connected side: PyPI by name, CPU torch from the local wheel directory the pip configuration names.
    run(
        [str(AIRGAP / "build-wheelhouse.sh"), str(wheelhouse)],
        env={**os.environ, "PYTHON": PYTHON},
        timeout=1200,
        cwd=tmp_path,
    )
    wheels = sorted(p.name for p in wheelhouse.glob("*.whl"))
    assert any(name.startswith("custos-") for name in wheels)
    assert any(name.startswith("torch-") and "+cpu" in name for name in wheels), wheels
    assert not list(wheelhouse.glob("*.tar.gz"))

    # Target side, with no network at all: install from the wheelhouse only.
    venv = tmp_path / "target-venv"
    run(
        ["unshare", "--net", str(AIRGAP / "install-offline.sh"), str(wheelhouse), str(venv)],
        env=offline_env(),
        timeout=900,
        cwd=tmp_path,
    )
    assert (venv / "bin" / "custos").exists()
    # The installed package is the wheel, not this checkout.
    where = run(
        [str(venv / "bin" / "python"), "-c", "import custos; print(custos.__file__)"],
        env=offline_env(),
        timeout=60,
        cwd=tmp_path,
    ).stdout.strip()
    assert where.startswith(str(venv)), where

    # Serve in a namespace with only loopback; TLS with the development CA made on first start.
    config = write_config(
        tmp_path / "custos.toml",
        {
            "data_dir": str(tmp_path / "data"),
            "listen": "127.0.0.1:50051",
            "metrics_listen": "",
            "model_source": str(save_tiny_model_dir(tmp_path / "model")),
            "model_cache_dir": str(tmp_path / "model-cache"),
            "precision": "fp32",
        },
    )
    result = run(
        [str(AIRGAP / "smoke-test.sh"), str(venv), str(config)], env=offline_env(), timeout=600, cwd=tmp_path
    )
    assert "127.0.0.1:50051: SERVING" in result.stdout
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if not records:  # the JSON output may be one document
        start = result.stdout.index("[")
        records = json.loads(result.stdout[start:])
    assert records and all(r["event_type"] == "config_change" for r in records)


def test_smoke_test_fails_when_nothing_answers(tmp_path: Path) -> None:
    """The smoke test is not vacuous: a server that cannot start makes it fail."""
    config = write_config(
        tmp_path / "custos.toml",
        {
            "data_dir": str(tmp_path / "data"),
            "listen": "127.0.0.1:50051",
            "metrics_listen": "",
            "model_source": str(tmp_path / "no-such-model"),
        },
    )
    venv = Path(sys.executable).parent.parent
    result = subprocess.run(
        [str(AIRGAP / "smoke-test.sh"), str(venv), str(config)],
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0
    assert "server did not become healthy" in result.stderr
