"""Offline and quiet: start-up and every RPC open no non-loopback connection, and no personal value seeded
through any RPC (valid, invalid, oversized, malformed) reaches logs, metrics, errors or any database column.

The RPCs and their fields come from the service descriptors, so methods added later are seeded too.
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor

from custos.server.app import CustosServer, build_components
from custos.server.logs import JsonFormatter
from custos.server.settings import load_settings
from custos.testing.privacy import is_loopback, no_network
from custos.testing.rpcs import FLOAT_TYPES, Rpc, all_rpcs, fill_message
from custos.testing.server import ServerHarness
from custos.testing.tiny_engine import save_tiny_model_dir
from custos.v1 import common_pb2, inference_pb2

NAME = "Margaret Hollingsworth"
EMAIL = "m.hollingsworth@example.org"
PHONE = "212-555-0187"
CARD = "4111 1111 1111 1111"
IBAN = "DE89370400440532013000"
PII = (NAME, EMAIL, PHONE, CARD, IBAN)
SENTENCE = f"I am {NAME}, mail {EMAIL}, phone {PHONE}, card {CARD}, IBAN {IBAN}."
MAX_REQUEST_BYTES = 8192


@dataclass
class SeededRun:
    """Everything a seeded run left behind, to be searched for the values."""

    network_attempts: list[str] = field(default_factory=list)
    connects: list[str] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    codes: dict[str, set[str]] = field(default_factory=dict)
    metrics: str = ""
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class _Lines(logging.Handler):
    """Collects every record as the JSON line the server would write."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _number(fd: FieldDescriptor) -> int | float:
    return 1.0 if fd.type in FLOAT_TYPES else 1


def _negative(fd: FieldDescriptor) -> int | float:
    if fd.cpp_type in (FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64):
        return 2**32 - 1
    return -1.0 if fd.type in FLOAT_TYPES else -1


def variants(rpc: Rpc) -> Iterator[tuple[str, bytes]]:
    """Seeded requests for one RPC: every string field carries personal data, in valid and failing forms."""
    message = rpc.request_type
    descriptor = rpc.method.input_type
    yield (
        "every-field",
        message(
            **fill_message(descriptor, text=lambda p: f"{p} {SENTENCE}", number=_number)
        ).SerializeToString(),
    )
    yield (
        "short-ids",
        message(**fill_message(descriptor, text=lambda _p: EMAIL, number=_number)).SerializeToString(),
    )
    yield (
        "negative",
        message(**fill_message(descriptor, text=lambda _p: NAME, number=_negative)).SerializeToString(),
    )
    big = SENTENCE * (MAX_REQUEST_BYTES // len(SENTENCE) + 2)
    yield (
        "oversize",
        message(**fill_message(descriptor, text=lambda _p: big, number=_number)).SerializeToString(),
    )
    yield "malformed", b"\x0a\xff\xff\xff\x0f" + SENTENCE.encode()


def generate_requests() -> Iterator[inference_pb2.GenerateRequest]:
    """Valid Generate requests that get answered: the values in messages, ids and purpose."""
    for reidentify in (False, True):
        yield inference_pb2.GenerateRequest(
            conversation_id=EMAIL,
            subject_id=PHONE,
            purpose="billing-dispute",
            reidentify=reidentify,
            messages=[
                common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=f"The customer is {NAME}."),
                common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=SENTENCE),
            ],
            parameters=inference_pb2.GenerationParameters(max_new_tokens=6, stop=[NAME]),
        )


@contextmanager
def record_connects(connects: list[str]) -> Iterator[None]:
    """Record every connect() target (loopback too), on top of the refusing guard."""
    guarded = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            connects.append(f"{address[0]}:{address[1]}")
        guarded(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect = guarded  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> SeededRun:
    """Start a server from nothing and call every RPC with seeded values, all under the socket guard."""
    root = tmp_path_factory.mktemp("quiet")
    model_dir = save_tiny_model_dir(root / "tiny-model")
    run = SeededRun()
    handler = _Lines(run.log_lines)
    root_logger = logging.getLogger()
    old_level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG)
    try:
        with no_network(run.network_attempts), record_connects(run.connects):
            settings = load_settings(
                data_dir=root / "data",
                listen="127.0.0.1:0",
                metrics_listen="127.0.0.1:0",
                model_source=str(model_dir),
                precision="fp32",
                max_new_tokens_limit=16,
                max_request_bytes=MAX_REQUEST_BYTES,
                log_level="DEBUG",
            )
            components = build_components(settings)
            with ServerHarness(CustosServer(settings, components)) as harness:
                _call_everything(harness, run)
                port = harness.server.metrics_port
                run.metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(old_level)
    with sqlite3.connect(root / "data" / "custos.db") as conn:
        conn.row_factory = sqlite3.Row
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for name in names:
            run.tables[name] = [dict(row) for row in conn.execute(f'SELECT * FROM "{name}"')]
    return run


def _call_everything(harness: ServerHarness, run: SeededRun) -> None:
    for rpc in all_rpcs():
        for kind, payload in variants(rpc):
            _call(harness, rpc, payload, run, kind)
    generate = next(r for r in all_rpcs() if r.method.name == "Generate")
    stream = next(r for r in all_rpcs() if r.method.name == "GenerateStream")
    for req in generate_requests():
        for rpc in (generate, stream):
            _call(harness, rpc, req.SerializeToString(), run, "answered")


def _call(harness: ServerHarness, rpc: Rpc, payload: bytes, run: SeededRun, kind: str) -> None:
    try:
        responses = rpc.raw_call(harness.channel, payload, timeout=60)
        code = "OK"
        if rpc.method.containing_service.name == "Audit":
            # Compliance reads return records; their payloads are searched too.
            run.errors.extend(r.decode("utf-8", "replace") for r in responses)
    except grpc.RpcError as err:
        code = err.code().name
        run.errors.append(err.details() or "")
        run.errors.extend(f"{k}={v!r}" for k, v in (err.trailing_metadata() or ()))
    run.codes.setdefault(f"{rpc.method.name}:{kind}", set()).add(code)


def found(haystack: object) -> list[str]:
    if isinstance(haystack, bytes):
        haystack = haystack.decode("utf-8", errors="replace")
    text = str(haystack).lower()
    hits = [value for value in PII if value.lower() in text]
    if CARD.replace(" ", "") in text.replace(" ", ""):
        hits.append(CARD)
    return hits


def test_start_up_and_every_rpc_open_no_outside_connection(seeded: SeededRun) -> None:
    assert seeded.network_attempts == []
    assert any(is_loopback(c.rsplit(":", 1)[0]) for c in seeded.connects), "the guard saw no connect at all"
    assert all(is_loopback(c.rsplit(":", 1)[0]) for c in seeded.connects), seeded.connects


def test_every_rpc_was_seeded_including_failing_calls(seeded: SeededRun) -> None:
    for rpc in all_rpcs():
        assert f"{rpc.method.name}:every-field" in seeded.codes
    assert seeded.codes["Generate:answered"] == {"OK"} and seeded.codes["GenerateStream:answered"] == {"OK"}
    assert seeded.codes["Generate:oversize"] == {"RESOURCE_EXHAUSTED"}
    assert seeded.codes["Generate:malformed"] == {"INVALID_ARGUMENT"}
    assert "INVALID_ARGUMENT" in seeded.codes["Generate:every-field"]


def test_no_personal_data_in_logs(seeded: SeededRun) -> None:
    assert seeded.log_lines, "nothing was logged"
    leaks = [line for line in seeded.log_lines if found(line)]
    assert leaks == []


def test_logs_are_json_with_request_ids(seeded: SeededRun) -> None:
    entries = [json.loads(line) for line in seeded.log_lines]
    rpc_entries = [e for e in entries if e["logger"] == "custos.rpc" and e["msg"] == "rpc"]
    assert len(rpc_entries) >= len(all_rpcs()) * 5
    # The request id is the audit record's: a uuid4 in its 36-character form.
    assert all(len(e.get("request_id", "")) == 36 and e["code"] and e["rpc"] for e in rpc_entries)


def test_no_personal_data_in_metrics_or_errors(seeded: SeededRun) -> None:
    assert "custos_requests_total" in seeded.metrics
    assert found(seeded.metrics) == []
    assert seeded.errors
    assert [e for e in seeded.errors if found(e)] == []


def test_no_personal_data_in_any_column_of_any_table(seeded: SeededRun) -> None:
    assert seeded.tables["audit_records"] and seeded.tables["transcripts"]
    leaks = [
        f"{table}.{column}"
        for table, rows in seeded.tables.items()
        for row in rows
        for column, value in row.items()
        if found(value)
    ]
    assert leaks == []
