"""Test support: ``custos serve`` as a real subprocess, configured by a TOML file, with a tiny local model.

Used by the drain and load tests; nothing here runs in production.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

SERVE = ("-c", "from custos.cli.main import main; main()", "serve")
START_TIMEOUT_S = 120.0


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    """Write ``settings`` as a flat TOML file (strings, numbers and booleans only)."""
    lines = []
    for key, value in settings.items():
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, int | float):
            rendered = repr(value)
        else:
            rendered = json.dumps(str(value))
        lines.append(f"{key} = {rendered}")
    path.write_text("\n".join(lines) + "\n")
    return path


class ServeProcess:
    """One ``custos serve --config FILE`` process; stderr (JSON logs) goes to a file next to the config."""

    def __init__(self, config: Path, *, name: str = "serve") -> None:
        self.config = config
        self.log_path = config.parent / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    def start(self) -> ServeProcess:
        """Start the server and wait until it logs the port it serves on."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, *SERVE, "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.port is None:
            if self.process.poll() is not None:
                raise RuntimeError(f"custos serve exited with {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"custos serve did not start in time: {self.log_tail()}")
            for entry in self.log_entries():
                if entry.get("msg") == "serving" and entry.get("pid") == self.process.pid:
                    self.port = int(entry["port"])
            time.sleep(0.1)
        return self

    def channel(self, *, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
        """A plaintext channel carrying the bootstrap admin token (roles admin, inference, compliance)."""
        from custos.cli.client import BearerInterceptor
        from custos.server.settings import load_settings

        token = load_settings(self.config).admin_token_file.read_text().strip()
        return grpc.intercept_channel(
            grpc.insecure_channel(self.target, options=options or []), BearerInterceptor(token)
        )

    @property
    def target(self) -> str:
        """The gRPC address."""
        return f"127.0.0.1:{self.port}"

    def log_entries(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (other lines, e.g. progress output, are skipped)."""
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return entries

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the log, for failure messages."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no drain, no flush."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
