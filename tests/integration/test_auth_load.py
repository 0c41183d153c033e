"""Unauthenticated callers get no amplified work, over a real socket (gRPC and HTTP).

Credentials are checked from metadata before the body is read; failed attempts are limited per client
address and per presented token id (client addresses from X-Forwarded-For only through trusted proxies);
their ``denied`` records are aggregated per client address and interval, and none is lost at shutdown;
the server caps the calls it runs at once.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from presidio_analyzer import AnalyzerEngine

from custos.testing.builders import generate_request
from custos.testing.server import ScriptedEngine, ServerHarness, make_server

GENERATE = "/custos.v1.Inference/Generate"
REPLY = "Hello <PERSON_1>."
PAYLOAD = generate_request("Where is my parcel?").SerializeToString()


def _code(channel: grpc.Channel, metadata: list[tuple[str, str]] | None = None) -> grpc.StatusCode:
    try:
        channel.unary_unary(GENERATE)(PAYLOAD, metadata=metadata, timeout=20)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _bearer(token: str, forwarded: str | None = None) -> list[tuple[str, str]]:
    metadata = [("authorization", f"Bearer {token}")]
    if forwarded is not None:
        metadata.append(("x-forwarded-for", forwarded))
    return metadata


def _wrong(token: str) -> str:
    token_id, _, secret = token.partition(".")
    return f"{token_id}.{secret[::-1]}"


def _server(tmp_path: Path, analyzer: AnalyzerEngine, **overrides: Any) -> ServerHarness:
    settings: dict[str, Any] = {"plaintext": True, "http_listen": "127.0.0.1:0"}
    settings.update(overrides)
    return make_server(tmp_path, analyzer, ScriptedEngine(REPLY), **settings)


@pytest.fixture
def plain_channel() -> Iterator[list[grpc.Channel]]:
    opened: list[grpc.Channel] = []
    yield opened
    for channel in opened:
        channel.close()


def _channel(harness: ServerHarness, opened: list[grpc.Channel]) -> grpc.Channel:
    channel = grpc.insecure_channel(harness.target)
    opened.append(channel)
    return channel


# ---- the body is not read before the credentials --------------------------------------------------


def test_grpc_refuses_bad_credentials_without_reading_the_request(
    tmp_path: Path, analyzer: AnalyzerEngine, plain_channel: list[grpc.Channel]
) -> None:
    """The client sends its metadata and holds the message back: the refusal must not wait for it."""
    with _server(tmp_path, analyzer) as harness:
        channel = _channel(harness, plain_channel)
        release = threading.Event()

        def held_back() -> Iterator[bytes]:
            release.wait(10)
            yield PAYLOAD

        started = time.monotonic()
        try:
            with pytest.raises(grpc.RpcError) as info:
                channel.stream_unary(GENERATE)(held_back(), metadata=_bearer("nope.nope"), timeout=5)
        finally:
            release.set()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert time.monotonic() - started < 3


def test_http_refuses_bad_credentials_without_reading_the_body(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    """Headers announce a body that never comes: a 401 must come back anyway, at once."""
    with _server(tmp_path, analyzer) as harness:
        assert harness.server.http_port is not None
        with socket.create_connection(("127.0.0.1", harness.server.http_port), timeout=5) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: custos\r\ncontent-type: application/json\r\n"
                b"content-length: 100000\r\nauthorization: Bearer nope.nope\r\n\r\n"
            )
            head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 401"), head[:64]


# ---- failed attempts are limited ------------------------------------------------------------------


def test_failed_attempts_are_limited_per_client_address(
    tmp_path: Path, analyzer: AnalyzerEngine, plain_channel: list[grpc.Channel]
) -> None:
    with _server(tmp_path, analyzer, auth_failure_burst=3, auth_failure_rate_per_s=0.01) as harness:
        channel = _channel(harness, plain_channel)
        good = harness.create_token("inference")
        assert _code(channel, _bearer(good)) == grpc.StatusCode.OK  # success takes nothing from the bucket
        assert [_code(channel, _bearer(f"{'0' * 16}.{'x' * 43}")) for _ in range(3)] == [
            grpc.StatusCode.UNAUTHENTICATED
        ] * 3
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(GENERATE)(PAYLOAD, metadata=_bearer("nope"), timeout=20)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert int(dict(info.value.trailing_metadata())["retry-after-ms"]) > 1000
        # The address is throttled whatever it presents; the HTTP edge shares the limiter.
        assert _code(channel, _bearer(good)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        with httpx.Client(base_url=harness.http_url, headers={"authorization": f"Bearer {good}"}) as client:
            assert client.get("/v1/models").status_code == 429
        # X-Forwarded-For from a peer that is not a trusted proxy changes nothing.
        assert _code(channel, _bearer(good, forwarded="203.0.113.9")) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_failed_attempts_are_limited_per_token_id_behind_a_trusted_proxy(
    tmp_path: Path, analyzer: AnalyzerEngine, plain_channel: list[grpc.Channel]
) -> None:
    overrides = {"auth_failure_burst": 3, "auth_failure_rate_per_s": 0.01, "trusted_proxies": ["127.0.0.0/8"]}
    with _server(tmp_path, analyzer, **overrides) as harness:
        channel = _channel(harness, plain_channel)
        target = harness.create_token("inference")
        other = harness.create_token("inference")
        # Guesses at one token's secret from ever new client addresses (as a proxy forwards them).
        guesses = [_code(channel, _bearer(_wrong(target), forwarded=f"198.51.100.{i}")) for i in range(4)]
        assert guesses == [grpc.StatusCode.UNAUTHENTICATED] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
        # That token id is throttled from anywhere; other tokens and other clients are not.
        assert (
            _code(channel, _bearer(target, forwarded="198.51.100.99")) == grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert _code(channel, _bearer(other, forwarded="198.51.100.0")) == grpc.StatusCode.OK
        # A client's own failures count against its forwarded address, not the proxy's.
        for _ in range(3):
            _code(channel, _bearer("nope", forwarded="192.0.2.1"))
        assert _code(channel, _bearer(other, forwarded="192.0.2.1")) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _code(channel, _bearer(other, forwarded="192.0.2.2")) == grpc.StatusCode.OK
        harness.flush_denials()
        peers = {r["payload"]["details"]["actor"]["peer"] for r in harness.audit_rows("denied")}
        assert {"ipv4:198.51.100.0", "ipv4:192.0.2.1"} <= peers
        assert not any(p.startswith("ipv4:127.") for p in peers)


# ---- denial records are aggregated ----------------------------------------------------------------


def _denied_counts(harness: ServerHarness) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in harness.audit_rows("denied"):
        details = row["payload"]["details"]
        counts[row["status"]] = counts.get(row["status"], 0) + details.get("count", 1)
    return counts


def test_denials_are_aggregated_per_address_and_interval_and_none_is_lost(
    tmp_path: Path, analyzer: AnalyzerEngine, plain_channel: list[grpc.Channel]
) -> None:
    calls = 60
    harness = _server(
        tmp_path,
        analyzer,
        auth_failure_burst=20,
        auth_failure_rate_per_s=0.01,
        denied_aggregate_interval_s=600,
    )
    with harness:
        channel = _channel(harness, plain_channel)
        codes = [_code(channel) for _ in range(calls // 2)]
        with httpx.Client(base_url=harness.http_url) as client:
            statuses = [
                client.post("/v1/chat/completions", content=b"{}").status_code for _ in range(calls // 2)
            ]
        assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 20 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 10
        assert statuses == [429] * (calls // 2)
        # The first refusal of each kind was written at once; the rest wait for the interval's end.
        written = harness.audit_rows("denied")
        assert [(r["status"], r["payload"]["details"].get("count", 1)) for r in written] == [
            ("UNAUTHENTICATED", 1),
            ("RESOURCE_EXHAUSTED", 1),
        ]
    # Stopping the server flushed the tallies: every refusal is counted, in four records.
    rows = harness.audit_rows("denied")
    assert len(rows) == 4
    assert _denied_counts(harness) == {"UNAUTHENTICATED": 20, "RESOURCE_EXHAUSTED": 40}
    aggregated = [r["payload"]["details"] for r in rows if r["payload"]["details"].get("aggregated")]
    assert {d["reason"] for d in aggregated} == {"missing", "auth_failures"}
    assert all(d["actor"] == {"principal": "unauthenticated", "peer": "127.0.0.1"} for d in aggregated)


# ---- server-wide caps ------------------------------------------------------------------------------


def test_the_server_caps_calls_in_flight(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    engine = ScriptedEngine("x" * 60, chunk=1, step_delay=0.05)
    with make_server(tmp_path, analyzer, engine, max_calls_in_flight=1, max_concurrent_streams=4) as harness:
        stream = harness.inference.GenerateStream(generate_request("Where is my parcel?", max_new_tokens=60))
        assert next(stream).WhichOneof("event") == "start"
        with pytest.raises(grpc.RpcError) as info:
            harness.inference.Generate(generate_request("Where is my parcel?"))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert list(stream)[-1].WhichOneof("event") == "end"
        assert harness.inference.Generate(generate_request("Where is my parcel?")).request_id
