"""Time from starting ``custos serve`` to health SERVING, with an already prepared model cache.

Usage: python scripts/measure-warm-start.py DATA_DIR [RUNS] [--baseline SRC_DIR]

With ``--baseline``, runs alternate between this checkout and the custos package under SRC_DIR (for
example an export of main, with its generated ``custos/v1``), so both see the same machine load; the
table gives each run, the medians and their ratio. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
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


def measure(data_dir: str, pythonpath: str | None = None) -> float:
    """Seconds from process start to the first SERVING answer."""
    port = free_port()
    env = dict(os.environ, CUSTOS_PLAINTEXT=os.environ.get("CUSTOS_PLAINTEXT", "true"))
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from custos.cli.main import main; main()", "serve", "--data-dir", data_dir,
         "--listen", f"127.0.0.1:{port}", "--metrics-listen", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
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
                time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> None:
    """Measure, print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    parser.add_argument("runs", nargs="?", type=int, default=3)
    parser.add_argument("--baseline", help="source directory of the custos package to compare with")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    times: dict[str, list[float]] = {"this checkout": []}
    if args.baseline:
        times["baseline"] = []
    for run in range(args.runs):
        times["this checkout"].append(measure(args.data_dir))
        if args.baseline:
            times["baseline"].append(measure(args.data_dir, str(Path(args.baseline).resolve())))
        print(f"run {run + 1}: " + ", ".join(f"{name} {t[-1]:.2f} s" for name, t in times.items()), flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{'code':15} {'runs (s)':40} {'median':>7} {'best':>6}")
    for name, values in times.items():
        runs = ", ".join(f"{t:.2f}" for t in values)
        print(f"{name:15} {runs:40} {statistics.median(values):7.2f} {min(values):6.2f}")
    if args.baseline:
        ratio = statistics.median(times["baseline"]) / statistics.median(times["this checkout"])
        print(f"baseline / this checkout (medians): {ratio:.2f}x; goal: <= 5 s to SERVING")


if __name__ == "__main__":
    main()
