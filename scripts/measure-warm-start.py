"""Time from starting ``custos serve`` to health SERVING, with an already prepared model cache.

Usage: python scripts/measure-warm-start.py DATA_DIR [RUNS]
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(data_dir: str) -> float:
    """Seconds from process start to the first SERVING answer."""
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("custos")), "serve", "--data-dir", data_dir,
         "--listen", f"127.0.0.1:{port}", "--metrics-listen", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"custos serve exited with {proc.returncode}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - started
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


if __name__ == "__main__":
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    times = [measure(sys.argv[1]) for _ in range(runs)]
    print("warm start to SERVING (s):", ", ".join(f"{t:.2f}" for t in times), f"(best {min(times):.2f})")
