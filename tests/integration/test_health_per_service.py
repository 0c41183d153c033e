"""Health per service: Inference follows the database and the engine, Audit the database."""

from __future__ import annotations

import time
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc
from presidio_analyzer import AnalyzerEngine

from custos.testing.server import ScriptedEngine, make_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FailingEngine(ScriptedEngine):
    """A scripted engine that can be told it has stopped (as a dead scheduler thread would say)."""

    up = True
    readiness_interval_s = 0.1

    def check_ready(self) -> bool:
        return self.up


def test_inference_follows_the_engine_and_audit_does_not(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    engine = FailingEngine("Hello.")
    with make_server(tmp_path, analyzer, engine) as harness:
        health = health_pb2_grpc.HealthStub(harness.channel)

        def status(service: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status  # type: ignore[no-any-return]

        def settle(service: str, expected: int) -> None:
            deadline = time.monotonic() + 10
            while status(service) != expected:
                assert time.monotonic() < deadline, f"{service} never became {expected}"
                time.sleep(0.05)

        assert status("custos.v1.Inference") == SERVING
        engine.up = False
        settle("custos.v1.Inference", NOT_SERVING)
        assert status("custos.v1.Audit") == SERVING
        assert status("custos.v1.Privacy") == SERVING
        assert status("") == SERVING
        engine.up = True
        settle("custos.v1.Inference", SERVING)
