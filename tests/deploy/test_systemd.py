"""deploy/systemd/custos.service: `systemd-analyze verify` accepts it, and it carries the hardening."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "custos.service"
DROP_IN = ROOT / "deploy" / "systemd" / "custos.service.d" / "network.conf.example"
INSTALLED_CUSTOS = "/opt/custos/venv/bin/custos"
VENV_CUSTOS = Path(sys.executable).parent / "custos"


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze is part of the machine image"
    unit = tmp_path / "custos.service"
    unit.write_text(unit_text)
    return subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)


def local_copy() -> str:
    """The unit with ExecStart on this checkout's custos (the installed path does not exist here)."""
    text = UNIT.read_text()
    assert text.count(INSTALLED_CUSTOS) == 1
    return text.replace(INSTALLED_CUSTOS, str(VENV_CUSTOS))


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    result = verify(local_copy(), tmp_path)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    # The unmodified unit fails only because the installed binary is missing here.
    result = verify(UNIT.read_text(), tmp_path)
    if not Path(INSTALLED_CUSTOS).exists():
        problems = [line for line in result.stderr.splitlines() if line.strip()]
        assert problems and all(INSTALLED_CUSTOS in line for line in problems), result.stderr


def test_systemd_analyze_verify_rejects_a_broken_unit(tmp_path: Path) -> None:
    broken = local_copy().replace("RestrictAddressFamilies=", "RestrictAdressFamilies=")
    result = verify(broken, tmp_path)
    assert "RestrictAdressFamilies" in result.stderr


def test_hardening_directives() -> None:
    unit = directives(UNIT.read_text())
    expected = {
        "User": "custos",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "StateDirectory": "custos",
        "IPAddressDeny": "any",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    assert unit["IPAddressAllow"] == ["localhost"]
    assert unit["Environment"].count("CUSTOS_DATA_DIR=/var/lib/custos") == 1
    assert "DynamicUser" not in unit
    # The drop-in example only widens the allowed ranges.
    drop_in = directives(DROP_IN.read_text())
    assert set(drop_in) == {"IPAddressAllow"}
    for value in drop_in["IPAddressAllow"]:
        assert re.fullmatch(r"[0-9.]+/\d+", value), value


def test_exposure_score(tmp_path: Path) -> None:
    """systemd's own exposure rating of the unit (0 safest, 10 unprotected) stays low."""
    exe = shutil.which("systemd-analyze")
    assert exe
    unit = tmp_path / "custos.service"
    unit.write_text(local_copy())
    result = subprocess.run(
        [exe, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for custos\.service: ([0-9.]+)", result.stdout + result.stderr)
    if match is None:
        pytest.fail(f"no exposure level in: {result.stdout[-500:]} {result.stderr[-500:]}")
    assert float(match.group(1)) <= 2.5, match.group(0)
