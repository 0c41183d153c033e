"""The batching engine behind a real server: capacity, deadline and cancellation reach caller and audit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from presidio_analyzer import AnalyzerEngine
from sqlalchemy import create_engine, text

from custos.engine.scheduler import BatchingEngine
from custos.testing.builders import generate_request
from custos.testing.server import ServerHarness, make_server
from custos.testing.tiny_engine import build_tiny_engine
from custos.v1 import inference_pb2


def _request(max_new_tokens: int) -> inference_pb2.GenerateRequest:
    return generate_request(
        "Where is my parcel?", conversation_id="conv-sched", max_new_tokens=max_new_tokens
    )


def _completions(harness: ServerHarness) -> list[str]:
    db = create_engine(harness.server.settings.resolved_database_url)
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT status FROM audit_records"
                " WHERE event_type = 'generate' AND phase = 'completion' ORDER BY 1"
            )
        ).all()
    db.dispose()
    return sorted(str(r[0]) for r in rows)


@pytest.fixture
def engine() -> BatchingEngine:
    return BatchingEngine(build_tiny_engine(), max_batch=1, max_queue=0)


@pytest.fixture
def server(tmp_path: Path, analyzer: AnalyzerEngine, engine: BatchingEngine) -> Iterator[ServerHarness]:
    with make_server(tmp_path, analyzer, engine, max_new_tokens_limit=2500) as harness:
        yield harness


def test_a_full_engine_answers_resource_exhausted_and_audits_it(
    server: ServerHarness, engine: BatchingEngine
) -> None:
    stream = server.inference.GenerateStream(_request(2500))
    events = iter(stream)
    next(events)  # start
    next(events)  # the first delta: the only place in the batch is taken
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        server.inference.Generate(_request(4))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "queue is full" in info.value.details()  # type: ignore[attr-defined]
    assert time.monotonic() - started < 5
    stream.cancel()
    # The cancelled stream frees its place within a step; then requests are served again.
    deadline = time.monotonic() + 30
    while engine.concurrency and time.monotonic() < deadline:
        try:
            assert server.inference.Generate(_request(3)).usage.completion_tokens == 3
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            time.sleep(0.05)
    else:
        pytest.fail("the cancelled request never left the batch")
    time.sleep(0.5)  # completion records of the cancelled stream are written after the caller left
    statuses = _completions(server)
    assert "RESOURCE_EXHAUSTED" in statuses and "CANCELLED" in statuses and "OK" in statuses


def test_a_deadline_stops_generation_and_is_audited(server: ServerHarness, engine: BatchingEngine) -> None:
    with pytest.raises(grpc.RpcError) as info:
        server.inference.Generate(_request(2500), timeout=1.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    # The server learns of the deadline a moment after the client: give the cancellation that moment
    # (a loaded machine), then no further decode step may run.
    time.sleep(0.3)
    steps = engine.steps
    time.sleep(0.5)
    assert engine.steps == steps, "generation went on after the deadline"
    assert server.inference.Generate(_request(3)).usage.completion_tokens == 3
    assert "DEADLINE_EXCEEDED" in _completions(server)


def test_stopping_the_server_stops_the_scheduler_thread(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    engine = BatchingEngine(build_tiny_engine(), max_batch=2, max_queue=2)
    with make_server(tmp_path, analyzer, engine) as harness:
        assert harness.inference.Generate(_request(3)).usage.completion_tokens == 3
        thread = engine._thread
        assert thread is not None and thread.is_alive()
    thread.join(timeout=5)
    assert not thread.is_alive(), "the scheduler thread outlived the server"
    # The engine stays usable by the next server (the test suite shares one model across servers).
    with make_server(tmp_path / "again", analyzer, engine) as harness:
        assert harness.inference.Generate(_request(2)).usage.completion_tokens == 2
