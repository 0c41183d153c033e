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
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from custos.privacy.keys import FileKeyProvider
from custos.server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
APP_ROLE_SQL = COMPOSE_DIR / "initdb" / "10-custos-app-role.sql"
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
        "PG_OWNER": f"{os.getuid()}:{os.getgid()}",
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
    app_password = (compose_copy / "secrets" / "app-db-password").read_text().strip()
    assert len(app_password) >= 32 and app_password != password
    server_user = make_url(doc["services"]["custos"]["environment"]["CUSTOS_DATABASE_URL"]).username
    assert (compose_copy / "secrets" / "app-pgpass").read_text() == (
        f"postgres:5432:custos:{server_user}:{app_password}\n"
    )
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


def test_the_server_connects_as_a_role_that_is_not_the_superuser() -> None:
    """The owner (POSTGRES_USER, a superuser) migrates and hardens; the server is a plain login role."""
    doc = load()
    custos, postgres = doc["services"]["custos"], doc["services"]["postgres"]
    superuser = postgres["environment"]["POSTGRES_USER"]
    server_user = make_url(custos["environment"]["CUSTOS_DATABASE_URL"]).username
    assert server_user and server_user != superuser
    migrate = doc["services"]["migrate"]
    # The owner's credentials reach only the one-shot migrate service.
    assert "pgpass" not in names(custos["secrets"]) and custos["environment"]["PGPASSFILE"] == (
        "/run/secrets/app-pgpass"
    )
    assert make_url(migrate["environment"]["CUSTOS_DATABASE_URL"]).username == superuser
    assert migrate["command"] == ["audit", "harden", "--app-role", server_user]
    assert custos["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # The postgres image runs the role script at initdb: it makes that role, and nothing more than a login.
    mounts = {v["target"]: v["source"] for v in postgres["volumes"] if isinstance(v, dict)}
    script = mounts["/docker-entrypoint-initdb.d/10-custos-app-role.sql"]
    assert (COMPOSE_DIR / script).resolve() == APP_ROLE_SQL
    sql = APP_ROLE_SQL.read_text()
    assert f"\\set app_role {server_user}\n" in sql
    create = sql[sql.index("CREATE ROLE") : sql.index(";", sql.index("CREATE ROLE"))].split()
    for attribute in ("NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "NOREPLICATION", "NOBYPASSRLS"):
        assert attribute in create, attribute
    assert "app-db-password" in names(postgres["secrets"]) and "/run/secrets/app-db-password" in sql


ROLE_FLAGS = "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin"


def test_the_role_script_makes_a_plain_role_on_a_real_postgresql(tmp_path: Path) -> None:
    """10-custos-app-role.sql run by psql as the postgres image does; then harden binds that role."""
    from custos.audit import AuditStore, make_engine, migrate
    from custos.audit.hardening import harden_postgres
    from custos.testing.audit import TEST_POSTGRES_URL, postgres_schema, schema_url
    from custos.testing.audit import event as audit_event

    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    role = f"custos_test_app_{os.urandom(4).hex()}"
    password_file = tmp_path / "app-db-password"
    password_file.write_text("not-used-with-trust-auth\n")
    libpq_url = make_url(TEST_POSTGRES_URL).set(drivername="postgresql").render_as_string(False)
    with postgres_schema("custos_compose") as schema:
        result = subprocess.run(
            [psql, libpq_url, "-X", "-v", f"app_role={role}", "-v", f"app_password_file={password_file}",
             "-f", str(APP_ROLE_SQL)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        owner = make_engine(schema_url(schema))
        try:
            assert result.returncode == 0, result.stderr
            with owner.begin() as conn:
                flags = conn.execute(
                    sa.text(f"{ROLE_FLAGS} FROM pg_roles WHERE rolname = :role"), {"role": role}
                ).one()
                conn.execute(sa.text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
            assert tuple(flags) == (False, False, False, False, False, True)
            migrate(owner)
            harden_postgres(owner, app_role=role)
            app = make_engine(schema_url(schema).replace("postgres@", f"{role}@", 1))
            try:
                AuditStore(app).append(audit_event())
                with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), app.begin() as conn:
                    conn.execute(sa.text("TRUNCATE audit_records"))
            finally:
                app.dispose()
        finally:
            with owner.begin() as conn:
                if conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first():
                    conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
                    conn.execute(sa.text(f'DROP ROLE "{role}"'))
            owner.dispose()
