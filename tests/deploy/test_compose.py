"""deploy/compose: schema-valid, every reference resolves, the secrets script makes every file it names."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from custos.privacy.keys import FileKeyProvider
from custos.server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"
BIN = Path(sys.executable).parent


def load() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def names(items: Any) -> list[str]:
    """Short or long syntax lists/maps of secrets and networks -> names."""
    if isinstance(items, dict):
        return list(items)
    return [item if isinstance(item, str) else item["source"] for item in items or []]


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    exe = BIN / "check-jsonschema"
    assert exe.exists(), "check-jsonschema (in the test extra) is not installed"
    return subprocess.run(
        [str(exe), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_file_matches_the_compose_spec_schema(tmp_path: Path) -> None:
    result = check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = load()
    broken["services"]["custos"]["read_onyl"] = True
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    assert check_jsonschema(tmp_path / "compose.yaml").returncode != 0


def test_every_reference_resolves() -> None:
    doc = load()
    services = doc["services"]
    for name, service in services.items():
        for secret in names(service.get("secrets")):
            assert secret in doc["secrets"], (name, secret)
        for network in names(service.get("networks")):
            assert network in doc["networks"], (name, network)
        for dependency in names(service.get("depends_on")):
            assert dependency in services, (name, dependency)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith((".", "/")):
                assert source in doc["volumes"], (name, source)
    # The Dockerfile the build names exists.
    build = services["custos"]["build"]
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).is_file()


def test_custos_environment_names_real_settings() -> None:
    env = load()["services"]["custos"]["environment"]
    fields = set(Settings.model_fields)
    entrypoint = ENTRYPOINT.read_text()
    for key in env:
        if key.startswith("CUSTOS_HEALTH_"):
            assert key in entrypoint, key
        elif key.startswith("CUSTOS_"):
            assert key.removeprefix("CUSTOS_").lower() in fields, key
    # Secrets are files under /run/secrets, never values in the environment.
    targets = {f"/run/secrets/{s['target']}" for s in load()["services"]["custos"]["secrets"]}
    assert env["CUSTOS_KEY_FILE"] in targets and env["PGPASSFILE"] in targets
    assert env["CUSTOS_TLS_KEY_FILE"] in targets
    assert (
        "@" in env["CUSTOS_DATABASE_URL"]
        and ":" not in env["CUSTOS_DATABASE_URL"].split("//")[1].split("@")[0]
    )
    postgres = load()["services"]["postgres"]["environment"]
    assert "POSTGRES_PASSWORD" not in postgres and postgres["POSTGRES_PASSWORD_FILE"].startswith(
        "/run/secrets/"
    )


def test_hardening() -> None:
    doc = load()
    custos, postgres = doc["services"]["custos"], doc["services"]["postgres"]
    assert doc["networks"]["backend"]["internal"] is True
    assert postgres["networks"] == ["backend"] and "ports" not in postgres
    edge = doc["networks"]["edge"]
    assert edge["driver_opts"]["com.docker.network.bridge.enable_ip_masquerade"] == "false"
    assert custos["user"] == "10001:10001"
    assert custos["read_only"] is True and postgres["read_only"] is True
    assert custos["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in custos["security_opt"]
    assert custos["ports"][0].startswith("${CUSTOS_PUBLISH:-127.0.0.1:")
    for volume in custos["volumes"]:
        if isinstance(volume, dict) and volume["type"] == "bind":
            assert volume["read_only"] is True, volume


@pytest.fixture
def compose_copy(tmp_path: Path) -> Path:
    target = tmp_path / "compose"
    shutil.copytree(COMPOSE_DIR, target, ignore=shutil.ignore_patterns("secrets", "tls"))
    return target


def test_init_secrets_makes_every_referenced_file(compose_copy: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "OWNER": f"{os.getuid()}:{os.getgid()}",
    }
    result = subprocess.run(
        [str(compose_copy / "init-secrets.sh"), "custos.example"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    doc = load()
    files = [compose_copy / s["file"] for s in doc["secrets"].values()]
    for service in doc["services"].values():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict) and volume["type"] == "bind":
                files.append(compose_copy / volume["source"])
    for path in files:
        assert path.is_file(), path
    for secret in doc["secrets"].values():
        mode = stat.S_IMODE((compose_copy / secret["file"]).stat().st_mode)
        assert mode == 0o400, (secret, oct(mode))
    # The files are what the server and PostgreSQL expect.
    FileKeyProvider.load(compose_copy / "secrets" / "master-key.json")
    password = (compose_copy / "secrets" / "postgres-password").read_text().strip()
    assert len(password) >= 32
    assert (compose_copy / "secrets" / "pgpass").read_text() == f"postgres:5432:custos:custos:{password}\n"
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((compose_copy / "tls" / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "custos.example" in sans.get_values_for_type(x509.DNSName)
    # Existing files are kept on a second run.
    before = (compose_copy / "secrets" / "postgres-password").read_bytes()
    rerun = subprocess.run(
        [str(compose_copy / "init-secrets.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert (compose_copy / "secrets" / "postgres-password").read_bytes() == before
