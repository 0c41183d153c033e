"""Over a real socket: idempotency replies inside retention, rotation, erasure and audit; one request id.

A stored reply holds an answer (possibly re-identified), so it must be sealed for its subject, expire, be
rewrapped and listed with the keys, vanish with an erasure (even one that races the completion), and every
replay must leave an audit record. Every call has one id: the audit record's, in trailers and log lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from presidio_analyzer import AnalyzerEngine
from typer.testing import CliRunner

from custos.cli.main import app as cli_app
from custos.engine.types import ChatTurn, GenerationResult, SamplingParams
from custos.privacy.envelope import FORMAT_SUBJECT, read_header, seal
from custos.privacy.keys import blind_index
from custos.server.logs import JsonFormatter
from custos.testing.builders import generate_request
from custos.testing.server import ScriptedEngine, ServerHarness, make_server
from custos.v1 import admin_pb2, inference_pb2_grpc

REPLY = "Hello <PERSON_1>, your parcel is on its way."
QUESTION = "I am John Smith, where is my parcel?"


def erase(harness: ServerHarness, subject_id: str) -> admin_pb2.EraseSubjectResponse:
    call = harness.channel_for("admin").unary_unary(
        "/custos.v1.Admin/EraseSubject", response_deserializer=admin_pb2.EraseSubjectResponse.FromString
    )
    response: admin_pb2.EraseSubjectResponse = call(
        admin_pb2.EraseSubjectRequest(subject_id=subject_id).SerializeToString(), timeout=30
    )
    return response


def execute(harness: ServerHarness, sql: str, **params: Any) -> None:
    """Run a write statement on the server's database and commit it."""
    from sqlalchemy import create_engine, text

    engine = create_engine(harness.server.settings.resolved_database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()


def wait_for(condition: Callable[[], bool], *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


class GatedEngine(ScriptedEngine):
    """A scripted engine that holds every generation until the test opens the gate."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.started = threading.Event()
        self.gate = threading.Event()

    def generate(
        self,
        turns: Sequence[ChatTurn],
        params: SamplingParams,
        *,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        self.started.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return super().generate(turns, params, on_text=on_text, cancelled=cancelled)


class BrokenEngine(ScriptedEngine):
    """A scripted engine whose model fails with an error the caller must never see."""

    def generate(
        self,
        turns: Sequence[ChatTurn],
        params: SamplingParams,
        *,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        raise RuntimeError("model exploded near John Smith")


# ---- item 3: replies ---------------------------------------------------------------------------


def test_a_replay_is_audited_and_the_reply_is_sealed_for_its_subject(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    engine = ScriptedEngine(REPLY)
    with make_server(tmp_path, analyzer, engine) as harness:
        req = generate_request(QUESTION, subject_id="customer-a", idempotency_key="k-1", reidentify=True)
        first = harness.inference.Generate(req)
        again = harness.inference.Generate(req)
        assert again == first and len(engine.calls) == 1

        # The reply is sealed under the subject key (format 2), never under the master key alone.
        stored = harness.rows("SELECT * FROM idempotency_keys")
        assert len(stored) == 1
        assert read_header(bytes(stored[0]["response"])).format_version == FORMAT_SUBJECT
        subject = harness.audit_rows("generate")[0]["subject_ref"]
        assert stored[0]["subject_ref"] == subject

        # The replay is audited, pointing at the record whose answer it returned.
        replays = harness.audit_rows("replay")
        assert len(replays) == 1
        replay = replays[0]
        assert replay["payload"]["details"]["original_request_id"] == first.request_id
        assert replay["request_id"] != first.request_id and replay["subject_ref"] == subject
        assert replay["status"] == "OK" and replay["actor"] == harness.audit_rows("generate")[0]["actor"]

        # Erasing the subject takes the reply with it; the next retry is a new call.
        assert erase(harness, "customer-a").subject_key_destroyed
        assert harness.rows("SELECT * FROM idempotency_keys") == []
        assert harness.inference.Generate(req).request_id != first.request_id
        assert len(engine.calls) == 2


def test_concurrent_duplicates_are_each_audited_as_replays(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    engine = ScriptedEngine(REPLY, chunk=2, step_delay=0.02)
    with make_server(tmp_path, analyzer, engine) as harness:
        req = generate_request(QUESTION, idempotency_key="dup")
        barrier = threading.Barrier(3)

        def call(_: int) -> str:
            barrier.wait()
            return str(harness.inference.Generate(req).request_id)

        with ThreadPoolExecutor(3) as pool:
            ids = set(pool.map(call, range(3)))
        assert len(ids) == 1 and len(engine.calls) == 1
        replays = harness.audit_rows("replay")
        assert len(replays) == 2
        assert {r["payload"]["details"]["original_request_id"] for r in replays} == ids


def test_an_erasure_racing_the_completion_leaves_no_reply(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    engine = GatedEngine(REPLY)
    with make_server(tmp_path, analyzer, engine) as harness:
        req = generate_request(QUESTION, subject_id="customer-r", idempotency_key="race")
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(harness.inference.Generate, req, timeout=60)
            # The request record is committed before the engine runs; the engine now holds the call.
            assert engine.started.wait(30)
            assert len(harness.audit_rows("generate")) == 1
            erase(harness, "customer-r")
            engine.gate.set()
            first = pending.result(timeout=60)
        # Whatever the completion did after the erasure, no reply of the erased subject is left to replay.
        assert harness.rows("SELECT * FROM idempotency_keys WHERE response IS NOT NULL") == []
        again = harness.inference.Generate(req)
        assert again.request_id != first.request_id
        assert len(engine.calls) == 2


def test_replies_expire_with_idempotency_ttl_s(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    engine = ScriptedEngine(REPLY)
    with make_server(tmp_path, analyzer, engine, idempotency_ttl_s=3600) as harness:
        req = generate_request(QUESTION, idempotency_key="ttl")
        first = harness.inference.Generate(req)
        row = harness.rows("SELECT completed_at, expires_at FROM idempotency_keys")[0]
        completed, expires = (
            row[name] if not isinstance(row[name], str) else _parse(row[name])
            for name in ("completed_at", "expires_at")
        )
        assert 3599 <= (expires - completed).total_seconds() <= 3601

        # Past its expiry a reply is never replayed, and the housekeeping deletes it.
        execute(harness, "UPDATE idempotency_keys SET expires_at = '2020-01-01 00:00:00.000000'")
        again = harness.inference.Generate(req)
        assert again.request_id != first.request_id and len(engine.calls) == 2
        execute(harness, "UPDATE idempotency_keys SET expires_at = '2020-01-01 00:00:00.000000'")
        task = harness.server.reply_purge
        assert task is not None
        purged = asyncio.run_coroutine_threadsafe(task.run_once(), harness.loop).result(timeout=30)
        assert purged == 1
        assert harness.rows("SELECT * FROM idempotency_keys") == []


def _parse(value: str) -> Any:
    from datetime import UTC, datetime

    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def test_retention_purge_removes_replies_older_than_transcripts_may_live(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY), transcript_retention_days=1) as harness:
        harness.inference.Generate(generate_request(QUESTION, idempotency_key="old"))
        harness.inference.Generate(generate_request(QUESTION, conversation_id="c2", idempotency_key="new"))
        old = harness.rows("SELECT request_id FROM idempotency_keys ORDER BY created_at")[0]["request_id"]
        execute(
            harness,
            "UPDATE idempotency_keys SET created_at = '2020-01-01 00:00:00.000000', "
            "completed_at = '2020-01-01 00:00:00.000000' WHERE request_id = :old",
            old=old,
        )
        asyncio.run_coroutine_threadsafe(harness.server.purge_expired_transcripts(), harness.loop).result(
            timeout=30
        )
        left = [r["request_id"] for r in harness.rows("SELECT request_id FROM idempotency_keys")]
        assert len(left) == 1 and old not in left


def test_keys_list_counts_replies_and_rewrap_moves_legacy_replies(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    """A reply written by the previous release (data key wrapped by master key v1) is rewrapped and listed."""
    runner = CliRunner()
    engine = ScriptedEngine(REPLY)
    with make_server(tmp_path, analyzer, engine) as harness:
        req = generate_request(QUESTION, subject_id="customer-l", idempotency_key="legacy")
        first = harness.inference.Generate(req)
        keys = harness.server.keys
        assert keys is not None
        # Rewrite the stored reply exactly as the previous release sealed it: master key, no subject.
        principal = harness.audit_rows("generate")[0]["actor"]
        key_ref = blind_index(keys.index_key(), "idempotency", f"{principal}\x00legacy")
        document = json.dumps(
            {
                "request_id": first.request_id,
                "text": first.text,
                "finish_reason": "stop",
                "prompt_tokens": first.usage.prompt_tokens,
                "completion_tokens": first.usage.completion_tokens,
                "redaction": {e.entity_type: e.count for e in first.redaction.entities},
            }
        ).encode()
        legacy = seal(document, aad=f"custos:idempotency_keys:v1:{key_ref}".encode(), keys=keys)
        # What migration 0007 records for such a row: envelope format 1 on master key version 1.
        execute(
            harness,
            "UPDATE idempotency_keys SET response = :blob, key_version = 1, format_version = 1 "
            "WHERE key_ref = :ref",
            blob=legacy,
            ref=key_ref,
        )
    data = str(tmp_path / "data")
    listed = runner.invoke(cli_app, ["keys", "list", "--data-dir", data])
    assert listed.exit_code == 0, listed.output
    assert "wraps 1 subject keys and 1 legacy idempotency replies" in listed.output

    assert runner.invoke(cli_app, ["keys", "rotate", "--data-dir", data]).exit_code == 0
    rewrapped = runner.invoke(cli_app, ["keys", "rewrap", "--data-dir", data])
    assert rewrapped.exit_code == 0, rewrapped.output
    assert "1 idempotency replies resealed for their subjects" in rewrapped.output

    with make_server(tmp_path, analyzer, engine, key_min_decrypt_version=2) as harness:
        row = harness.rows("SELECT * FROM idempotency_keys")[0]
        assert read_header(bytes(row["response"])).format_version == FORMAT_SUBJECT
        assert row["subject_ref"] == harness.audit_rows("generate")[0]["subject_ref"]
        # Master key v1 is retired now; the reply still replays, and the replay is audited.
        assert harness.inference.Generate(req) == first and len(engine.calls) == 1
        assert len(harness.audit_rows("replay")) == 1
        rewraps = harness.audit_rows("key_rewrap")
        assert rewraps[-1]["payload"]["details"]["replies_resealed"] == 1
    listed = runner.invoke(cli_app, ["keys", "list", "--data-dir", data])
    assert "and 1 idempotency replies" in listed.output and "legacy" not in listed.output


# ---- item 11: one request id -------------------------------------------------------------------


def _logged_ids(caplog: pytest.LogCaptureFixture, message: str) -> list[str]:
    formatter = JsonFormatter()
    lines = [json.loads(formatter.format(r)) for r in caplog.records if r.getMessage() == message]
    return [str(line.get("request_id")) for line in lines]


def test_a_success_carries_the_audit_record_id_in_trailers_and_logs(
    tmp_path: Path, analyzer: AnalyzerEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="custos.rpc")
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY)) as harness:
        response, call = harness.inference.Generate.with_call(
            generate_request(QUESTION), metadata=(("x-request-id", "crm-7f3a"),), timeout=30
        )
        trailers = dict(call.trailing_metadata())
        assert trailers["x-request-id"] == response.request_id
        records = harness.audit_rows("generate")
        assert {r["request_id"] for r in records} == {response.request_id}
        request_record = next(r for r in records if r["phase"] == "request")
        assert request_record["id"] == response.request_id
        assert request_record["payload"]["details"]["client_request_id"] == "crm-7f3a"
        wait_for(lambda: response.request_id in _logged_ids(caplog, "rpc"))

        # A streamed answer: the start event, the trailer and the record agree too.
        stream = harness.inference.GenerateStream(generate_request(QUESTION, conversation_id="c-2"))
        events = list(stream)
        started = events[0].start.request_id
        assert dict(stream.trailing_metadata())["x-request-id"] == started
        assert started in {r["id"] for r in harness.audit_rows("generate")}


def test_an_internal_error_carries_the_audit_record_id_everywhere(
    tmp_path: Path, analyzer: AnalyzerEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="custos.rpc")
    with make_server(tmp_path, analyzer, BrokenEngine(REPLY)) as harness:
        with pytest.raises(grpc.RpcError) as info:
            harness.inference.Generate(
                generate_request(QUESTION), metadata=(("x-request-id", "not an id"),), timeout=30
            )
        error = info.value
        assert error.code() == grpc.StatusCode.INTERNAL
        request_id = dict(error.trailing_metadata())["x-request-id"]
        assert error.details() == f"internal error (request id {request_id})"
        assert "John Smith" not in (error.details() or "")
        records = harness.audit_rows("generate")
        assert [(r["phase"], r["request_id"]) for r in records] == [
            ("request", request_id),
            ("completion", request_id),
        ]
        assert records[0]["id"] == request_id and records[1]["status"] == "INTERNAL"
        # An x-request-id with anything but visible ASCII characters (here: spaces) is never recorded.
        assert "client_request_id" not in records[0]["payload"]["details"]
        wait_for(lambda: request_id in _logged_ids(caplog, "rpc"))
        assert request_id in _logged_ids(caplog, "rpc failed")


def test_a_refused_request_and_its_invalid_record_share_the_id(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY), max_request_bytes=1024) as harness:
        long_id = "x" * 200
        with pytest.raises(grpc.RpcError) as info:
            harness.inference.Generate(
                generate_request("y" * 2000), metadata=(("x-request-id", long_id),), timeout=30
            )
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        request_id = dict(info.value.trailing_metadata())["x-request-id"]
        invalid = harness.audit_rows("invalid")
        assert [r["id"] for r in invalid] == [request_id]
        assert "client_request_id" not in invalid[0]["payload"]["details"]  # longer than allowed
        # A well-formed id from the caller is recorded beside ours, never used as ours.
        stub = inference_pb2_grpc.InferenceStub(harness.channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(generate_request("y" * 2000), metadata=(("x-request-id", "abc-1"),), timeout=30)
        ours = dict(info.value.trailing_metadata())["x-request-id"]
        assert ours != "abc-1"
        last = harness.audit_rows("invalid")[-1]
        assert last["id"] == ours and last["payload"]["details"]["client_request_id"] == "abc-1"
