"""``custos health``: the exit code follows grpc.health.v1 over TLS, mTLS and plaintext."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from presidio_analyzer import AnalyzerEngine
from typer.testing import CliRunner

from custos.cli.main import app as cli_app
from custos.security.tls import TLSPaths, init_dev_certs, issue_cert, make_ca
from custos.testing.server import ScriptedEngine, ServerHarness, make_server

runner = CliRunner()


def health(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli_app, ["health", *args])
    return result.exit_code, result.output


@pytest.fixture
def serve(tmp_path: Path, analyzer: AnalyzerEngine) -> Callable[..., ServerHarness]:
    def make(**overrides: object) -> ServerHarness:
        return make_server(tmp_path, analyzer, ScriptedEngine("ok"), **overrides)

    return make


@pytest.fixture
def tls_server(serve: Callable[..., ServerHarness]) -> Iterator[ServerHarness]:
    with serve() as harness:
        yield harness


def test_tls_server_with_its_ca_is_serving(tls_server: ServerHarness) -> None:
    ca = str(tls_server.server.settings.tls_dir / "ca.pem")
    code, output = health("--server", tls_server.target, "--ca-file", ca)
    assert code == 0, output
    assert "SERVING" in output
    code, output = health("--server", tls_server.target, "--ca-file", ca, "--service", "custos.v1.Inference")
    assert code == 0, output


def test_wrong_trust_unknown_service_or_no_server_is_not_serving(
    tls_server: ServerHarness, tmp_path: Path
) -> None:
    ca = str(tls_server.server.settings.tls_dir / "ca.pem")
    # Another CA than the server's: the TLS handshake fails.
    other = TLSPaths.in_dir(tmp_path / "other")
    init_dev_certs(other, "127.0.0.1:0")
    assert health("--server", tls_server.target, "--ca-file", str(other.ca_cert))[0] == 1
    # Plaintext against a TLS listener.
    assert health("--server", tls_server.target, "--plaintext")[0] == 1
    # A service the server does not have: NOT_FOUND.
    code, output = health("--server", tls_server.target, "--ca-file", ca, "--service", "no.such.Service")
    assert code == 1
    assert "NOT_FOUND" in output
    # Nobody listening.
    assert health("--server", "127.0.0.1:1", "--ca-file", ca, "--timeout", "1", "--quiet") == (1, "")


def test_draining_server_is_not_serving(tls_server: ServerHarness) -> None:
    ca = str(tls_server.server.settings.tls_dir / "ca.pem")
    asyncio.run_coroutine_threadsafe(
        tls_server.server.health.enter_graceful_shutdown(), tls_server.loop
    ).result(timeout=10)
    code, output = health("--server", tls_server.target, "--ca-file", ca)
    assert code == 1
    assert "NOT_SERVING" in output


def test_plaintext_server(serve: Callable[..., ServerHarness]) -> None:
    with serve(plaintext=True) as harness:
        assert health("--server", harness.target, "--plaintext", "--token", harness.admin_token)[0] == 0


def test_mtls_server_needs_the_client_certificate(
    serve: Callable[..., ServerHarness], tmp_path: Path
) -> None:
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    ca_cert, ca_key = make_ca()
    cert, key = issue_cert(ca_cert, ca_key, "probe", names=["probe"], client=True)
    (client_dir / "ca.pem").write_bytes(ca_cert)
    (client_dir / "probe.pem").write_bytes(cert)
    (client_dir / "probe-key.pem").write_bytes(key)
    with serve(tls_client_ca_file=client_dir / "ca.pem") as harness:
        ca = str(harness.server.settings.tls_dir / "ca.pem")
        assert health("--server", harness.target, "--ca-file", ca, "--timeout", "3")[0] == 1
        code, output = health(
            "--server",
            harness.target,
            "--ca-file",
            ca,
            "--cert-file",
            str(client_dir / "probe.pem"),
            "--key-file",
            str(client_dir / "probe-key.pem"),
        )
        assert code == 0, output


def test_server_name_override(tls_server: ServerHarness) -> None:
    ca = str(tls_server.server.settings.tls_dir / "ca.pem")
    port = tls_server.server.port
    # The development certificate covers "localhost"; checking it against another name fails.
    assert health("--server", f"127.0.0.1:{port}", "--ca-file", ca, "--server-name", "localhost")[0] == 0
    assert health("--server", f"127.0.0.1:{port}", "--ca-file", ca, "--server-name", "elsewhere")[0] == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--plaintext", "--ca-file", "x.pem"],
        ["--cert-file", "c.pem"],
        ["--ca-file", "/nonexistent/ca.pem"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert health("--server", "127.0.0.1:1", *args)[0] == 2


def test_health_listen_serves_health_only_in_plaintext(serve: Callable[..., ServerHarness]) -> None:
    with serve(health_listen="127.0.0.1:0") as harness:
        port = harness.server.health_port
        assert port
        assert health("--server", f"127.0.0.1:{port}", "--plaintext")[0] == 0
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            # The API is not reachable on the health port.
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary("/custos.v1.Inference/Generate")(b"", timeout=5)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            stub = health_pb2_grpc.HealthStub(channel)
            asyncio.run_coroutine_threadsafe(
                harness.server.health.enter_graceful_shutdown(), harness.loop
            ).result(timeout=10)
            answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
