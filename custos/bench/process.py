"""A ``custos serve`` child process for the serving benchmark.

Its own interpreter, so the load generator never shares a GIL with the server it measures.
"""

from __future__ import annotations

import json
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

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from custos.bench.serve import StageSeconds, peak_rss_bytes, scraped_stage_seconds, weight_bytes
from custos.server.settings import Settings

__all__ = ["ServedProcess", "served", "weight_bytes"]

START_TIMEOUT_S = 900.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServedProcess:
    """A running server: where to call it, how to read its stage totals and its peak memory."""

    process: subprocess.Popen[bytes]
    target: str
    stages: StageSeconds
    #: The server's bootstrap token (roles admin, inference, compliance) for the benchmark's calls.
    token: str
    #: Base URL of the OpenAI-compatible HTTP API, when it was asked for.
    http_url: str | None = None
    #: The server's Prometheus endpoint.
    metrics_url: str | None = None

    def peak_rss(self) -> int:
        """The server process's peak resident set size so far."""
        return peak_rss_bytes(self.process.pid)


def _toml(values: dict[str, object]) -> str:
    # JSON strings, integers and booleans are valid TOML values.
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def _wait_serving(process: subprocess.Popen[bytes], target: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"custos serve exited with {process.returncode}; see {log}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"custos serve did not become SERVING within {START_TIMEOUT_S:g} s; see {log}")


@contextmanager
def served(
    settings: Settings,
    scratch: Path,
    *,
    max_queue: int,
    http: bool = False,
    extra: dict[str, object] | None = None,
    cpus: set[int] | None = None,
) -> Iterator[ServedProcess]:
    """Run ``custos serve`` with ``settings``' model but data (audit database, keys) under ``scratch``.

    With ``http``, the OpenAI-compatible API listens too (plaintext on loopback, like gRPC here). ``extra``
    adds settings (an upstream engine's); ``cpus`` pins the server to those cores.
    """
    port, metrics_port = _free_port(), _free_port()
    http_port = _free_port() if http else None
    config = scratch / "custos.toml"
    config.write_text(
        _toml(
            {
                "data_dir": str(scratch / "data"),
                "model_source": settings.model_source,
                "model_cache_dir": str(settings.resolved_model_cache_dir),
                "precision": settings.precision,
                "prompt_format": settings.prompt_format,
                "device": settings.device,
                **({"torch_threads": settings.torch_threads} if settings.torch_threads else {}),
                "listen": f"127.0.0.1:{port}",
                "metrics_listen": f"127.0.0.1:{metrics_port}",
                "max_batch_size": settings.max_batch_size,
                "max_queued_requests": max(settings.max_queued_requests, max_queue),
                "prompt_cache_mb": settings.prompt_cache_mb,
                "max_new_tokens_limit": settings.max_new_tokens_limit,
                "log_level": "WARNING",
                # Loopback only; the benchmark measures the pipeline, not TLS or per-caller limits.
                "plaintext": True,
                "rate_limit_per_s": 1e6,
                "rate_limit_burst": 1_000_000,
                "max_in_flight_per_principal": 100_000,
                **({"http_listen": f"127.0.0.1:{http_port}"} if http_port else {}),
                **(extra or {}),
            }
        )
    )
    log = scratch / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and a config we wrote
            [
                sys.executable,
                "-c",
                "from custos.cli.main import main; main()",
                "serve",
                "--config",
                str(config),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if cpus:
        os.sched_setaffinity(process.pid, cpus)
    target = f"127.0.0.1:{port}"
    try:
        _wait_serving(process, target, log)
        yield ServedProcess(
            process,
            target,
            scraped_stage_seconds(f"http://127.0.0.1:{metrics_port}/metrics"),
            (scratch / "data" / "admin.token").read_text().strip(),
            f"http://127.0.0.1:{http_port}" if http_port else None,
            f"http://127.0.0.1:{metrics_port}/metrics",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
