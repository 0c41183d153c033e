"""Fail closed under a real database outage: a TCP proxy in front of PostgreSQL is cut and restored."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from presidio_analyzer import AnalyzerEngine
from sqlalchemy.engine import make_url

from custos.audit.db import make_engine
from custos.testing.audit import TEST_POSTGRES_URL, postgres_schema
from custos.testing.builders import generate_request
from custos.testing.faults import TcpProxy
from custos.testing.server import ScriptedEngine, ServerHarness, make_server
from custos.v1 import audit_pb2, inference_pb2

pytestmark = pytest.mark.postgres

PG_URL = TEST_POSTGRES_URL
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema on the shared PostgreSQL, dropped afterwards (skip when PostgreSQL is unreachable)."""
    with postgres_schema("custos_failclosed") as schema:
        yield schema


def request(conversation: str) -> inference_pb2.GenerateRequest:
    return generate_request("Where is my parcel?", conversation_id=conversation)


def health_status(harness: ServerHarness, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(harness.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status  # type: ignore[no-any-return]


def wait_for(condition: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def code_of(call: object) -> grpc.StatusCode:
    assert isinstance(call, grpc.RpcError)
    return call.code()  # type: ignore[no-any-return]


def test_database_outage_fails_closed_and_service_resumes(
    tmp_path: Path, analyzer: AnalyzerEngine, pg_schema: str
) -> None:
    engine = ScriptedEngine("Thanks, we are looking into your parcel.", chunk=2, step_delay=0.05)
    pg = make_url(PG_URL)
    with TcpProxy(pg.host or "127.0.0.1", pg.port or 5432) as proxy:
        url = pg.set(port=proxy.port).update_query_dict({"options": f"-csearch_path={pg_schema}"})
        harness = make_server(
            tmp_path,
            analyzer,
            engine,
            database_url=url.render_as_string(hide_password=False),
            db_probe_interval_s=4.0,  # longer than the checks below: the flip comes from the failed call
        )
        with harness, ThreadPoolExecutor(max_workers=1) as pool:
            assert health_status(harness) == SERVING
            first = harness.inference.Generate(request("before"))

            # An answer in the making when the database goes away never leaves the server.
            in_flight = pool.submit(harness.inference.Generate, request("during"), timeout=30)
            wait_for(lambda: len(engine.calls) == 2)
            proxy.cut()
            with pytest.raises(grpc.RpcError) as info:
                in_flight.result()
            assert code_of(info.value) == grpc.StatusCode.UNAVAILABLE
            assert "Thanks" not in (info.value.details() or "")  # type: ignore[attr-defined]

            # Health flips at once, for the server and each service; new calls are refused unprocessed.
            assert health_status(harness) == NOT_SERVING
            assert health_status(harness, "custos.v1.Inference") == NOT_SERVING
            for call in (
                lambda: harness.inference.Generate(request("refused")),
                lambda: list(harness.inference.GenerateStream(request("refused"))),
                lambda: harness.audit.Query(audit_pb2.AuditQueryRequest()),
            ):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert code_of(info.value) == grpc.StatusCode.UNAVAILABLE
                assert "audit database unavailable" in info.value.details()  # type: ignore[attr-defined]
            assert len(engine.calls) == 2
            time.sleep(1.0)  # and it stays down (the failed call also triggered a probe at once)
            assert health_status(harness) == NOT_SERVING

            # The database comes back: service resumes without a restart.
            proxy.restore()
            wait_for(lambda: health_status(harness) == SERVING)
            assert health_status(harness, "custos.v1.Inference") == SERVING
            after = harness.inference.Generate(request("after"))
            report = harness.audit.Verify(audit_pb2.AuditVerifyRequest())
            assert report.ok
            assert report.incomplete == 1  # the call cut off mid-way: a request record, no completion

    direct = url.set(port=pg.port or 5432).render_as_string(hide_password=False)
    verify_rows(direct, answered={first.request_id, after.request_id})


def verify_rows(url: str, *, answered: set[str]) -> None:
    """Every answer has its request and completion record; the cut call has only its request record."""
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, request_id, phase, status, payload FROM audit_records"
                " WHERE event_type = 'generate'"
            )
        ).all()
    engine.dispose()
    requests = {r.id for r in rows if r.phase == "request"}
    completed = {r.request_id: r.status for r in rows if r.phase == "completion"}
    assert answered <= requests
    assert {rid: completed.get(rid) for rid in answered} == dict.fromkeys(answered, "OK")
    unanswered = requests - set(completed)
    assert len(unanswered) == 1 and not unanswered & answered
    for row in rows:
        assert json.loads(row.payload)["id"] == row.id
