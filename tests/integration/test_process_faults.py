"""A real ``custos serve`` process: drain on SIGTERM, and 32 clients through a SIGKILL and a restart."""

from __future__ import annotations

import collections
import ipaddress
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from custos.testing.builders import generate_request
from custos.testing.privacy import is_loopback
from custos.testing.process import ServeProcess, write_config
from custos.testing.tiny_engine import save_tiny_model_dir
from custos.v1 import inference_pb2, inference_pb2_grpc

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 300)]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The tiny random model as a local Hugging Face directory, and a cache shared by the servers here."""
    root = tmp_path_factory.mktemp("serve-model")
    return {
        "model_source": str(save_tiny_model_dir(root / "tiny-model")),
        "model_cache_dir": str(root / "cache"),
    }


def config(tmp_path: Path, model_dirs: dict[str, str], **settings: Any) -> Path:
    return write_config(
        tmp_path / "custos.toml",
        {
            "data_dir": str(tmp_path / "data"),
            "listen": "127.0.0.1:0",
            "metrics_listen": "",
            # These clients test drain and crash recovery, not transport security.
            "plaintext": True,
            "precision": "fp32",
            **model_dirs,
            **settings,
        },
    )


def request(conversation: str, max_new_tokens: int) -> inference_pb2.GenerateRequest:
    return generate_request(
        "Where is my parcel, please?", conversation_id=conversation, max_new_tokens=max_new_tokens
    )


def audit_rows(data_dir: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(data_dir / "custos.db") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM audit_records ORDER BY seq").fetchall()


def assert_audited(rows: list[sqlite3.Row], answered: set[str], *, status: str = "OK") -> None:
    """Every answered request id has its request record and a completion record with ``status``."""
    requests = {r["id"] for r in rows if r["event_type"] == "generate" and r["phase"] == "request"}
    completions = {r["request_id"]: r["status"] for r in rows if r["phase"] == "completion"}
    missing_request = answered - requests
    missing_completion = {rid for rid in answered if completions.get(rid) != status}
    assert not missing_request and not missing_completion, (
        len(missing_request),
        len(missing_completion),
        [(r["event_type"], r["phase"], r["status"]) for r in rows],
    )


def audit_verify(cfg: Path) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from custos.cli.main import main; main()",
            "audit",
            "verify",
            "--config",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


class StreamReader(threading.Thread):
    """Reads one GenerateStream to its end in the background, after its start event was received."""

    def __init__(self, stub: inference_pb2_grpc.InferenceStub, req: inference_pb2.GenerateRequest) -> None:
        super().__init__(daemon=True)
        self.call = stub.GenerateStream(req, timeout=60)
        self.request_id = next(self.call).start.request_id  # the request record is committed
        self.events: list[str] = []
        self.error: grpc.StatusCode | None = None
        self.end: Any = None

    def run(self) -> None:
        try:
            for event in self.call:
                self.events.append(event.WhichOneof("event"))
                if event.HasField("end"):
                    self.end = event.end
        except grpc.RpcError as err:
            self.error = err.code()


def test_sigterm_drains_in_flight_calls_refuses_new_ones_and_exits_zero(
    tmp_path: Path, model_dirs: dict[str, str]
) -> None:
    cfg = config(tmp_path, model_dirs, drain_timeout_s=60.0, max_new_tokens_limit=512)
    server = ServeProcess(cfg).start()
    try:
        channel = server.channel()
        stub = inference_pb2_grpc.InferenceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        readers = [StreamReader(stub, request(f"drain-{i}", 512)) for i in range(3)]
        for reader in readers:
            reader.start()
        server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]

        deadline = time.monotonic() + 10
        while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != NOT_SERVING:
            assert time.monotonic() < deadline, "health did not turn NOT_SERVING"
            time.sleep(0.02)
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(request("late", 8), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert any(reader.is_alive() for reader in readers), "the in-flight calls ended before the checks"

        for reader in readers:
            reader.join(timeout=60)
        assert [r.error for r in readers] == [None, None, None]
        assert all(
            r.end is not None and r.end.finish_reason == inference_pb2.FINISH_REASON_LENGTH for r in readers
        )
        assert server.process.wait(timeout=60) == 0  # type: ignore[union-attr]
        channel.close()
    finally:
        server.kill()
    assert any(e.get("msg") == "draining" for e in server.log_entries())
    assert_audited(audit_rows(tmp_path / "data"), {r.request_id for r in readers})
    assert re.search(r"\b0\s+incomplete", audit_verify(cfg))


def test_drain_timeout_cancels_and_audits_what_is_left(tmp_path: Path, model_dirs: dict[str, str]) -> None:
    cfg = config(tmp_path, model_dirs, drain_timeout_s=0.5, max_new_tokens_limit=2048)
    server = ServeProcess(cfg).start()
    try:
        channel = server.channel()
        readers = [
            StreamReader(inference_pb2_grpc.InferenceStub(channel), request(f"slow-{i}", 2048))
            for i in range(2)
        ]
        for reader in readers:
            reader.start()
        started = time.monotonic()
        assert server.terminate(timeout=60) == 0
        assert time.monotonic() - started < 30
        for reader in readers:
            reader.join(timeout=30)
        assert all(r.end is None and r.error is not None for r in readers)
        channel.close()
    finally:
        server.kill()
    assert_audited(audit_rows(tmp_path / "data"), {r.request_id for r in readers}, status="CANCELLED")
    assert re.search(r"\b0\s+incomplete", audit_verify(cfg))


class ConnectionSampler(threading.Thread):
    """Samples the remote addresses of a process's TCP sockets (gRPC's C core included) until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.remotes: collections.Counter[str] = collections.Counter()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                for conn in self.process.net_connections(kind="inet"):
                    if conn.raddr:
                        address = ipaddress.ip_address(conn.raddr.ip.split("%", 1)[0])
                        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 (dual stack)
                        self.remotes[str(mapped or address)] += 1
            except psutil.Error:
                return
            self.done.wait(0.2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoadClient(threading.Thread):
    """Sends Generate and GenerateStream calls in a loop until stopped, counting what happens."""

    def __init__(self, index: int, server: ServeProcess, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.index = index
        self.channel = server.channel(options=CHANNEL_OPTIONS)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        self.stop = stop
        self.sent = 0
        self.answered: set[str] = set()
        self.rejected: collections.Counter[str] = collections.Counter()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            self.sent += 1
            req = request(f"load-{self.index}-{n}", 16)
            try:
                if n % 2:
                    self.answered.add(self.stub.Generate(req, timeout=20).request_id)
                else:
                    events = list(self.stub.GenerateStream(req, timeout=20))
                    assert events[-1].HasField("end")
                    self.answered.add(events[0].start.request_id)
            except grpc.RpcError as err:
                self.rejected[err.code().name] += 1
                time.sleep(0.25)
        self.channel.close()


def test_load_with_sigkill_and_restart_keeps_every_answer_audited(
    tmp_path: Path, model_dirs: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    cfg = config(tmp_path, model_dirs, listen=f"127.0.0.1:{port}", drain_timeout_s=20.0)
    stop = threading.Event()
    server = ServeProcess(cfg, name="first").start()
    clients = [LoadClient(i, server, stop) for i in range(32)]
    sampler = ConnectionSampler(server.process.pid)  # type: ignore[union-attr]
    restarted: ServeProcess | None = None
    try:
        sampler.start()
        for client in clients:
            client.start()
        time.sleep(6)
        sampler.done.set()
        answered_before_kill = sum(len(c.answered) for c in clients)
        server.kill()  # SIGKILL in the middle of the load
        restarted = ServeProcess(cfg, name="second").start()
        time.sleep(6)
        stop.set()
        for client in clients:
            client.join(timeout=60)
        assert restarted.terminate(timeout=60) == 0
    finally:
        stop.set()
        server.kill()
        if restarted is not None:
            restarted.kill()

    answered = set().union(*(c.answered for c in clients))
    rejected = sum((c.rejected for c in clients), collections.Counter[str]())
    rows = audit_rows(tmp_path / "data")
    incomplete = {r["id"] for r in rows if r["phase"] == "request"} - {
        r["request_id"] for r in rows if r["phase"] == "completion"
    }
    verify = audit_verify(cfg)
    with capsys.disabled():  # the counts are part of the result: always shown
        print(
            f"\nload: clients=32 sent={sum(c.sent for c in clients)} answered={len(answered)} "
            f"(before kill {answered_before_kill}) rejected={dict(rejected)} audit_rows={len(rows)} "
            f"incomplete={len(incomplete)}; audit verify: {' '.join(verify.split())}"
        )
    assert answered_before_kill > 0 and len(answered) > answered_before_kill
    # Offline: every connection the serving process held went to a loopback address.
    assert sum(sampler.remotes.values()) > 0
    assert all(is_loopback(ip) for ip in sampler.remotes), dict(sampler.remotes)
    assert incomplete, "no call was cut off by the kill"
    assert rejected["UNAVAILABLE"] > 0  # the kill was felt by the clients
    assert_audited(rows, answered)
    assert not incomplete & answered
    assert re.search(rf"\b{len(incomplete)}\s+incomplete", verify), verify
