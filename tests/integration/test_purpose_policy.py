"""The purpose policy on every RPC that processes text, gRPC and HTTP, over a real socket.

The matrix is built from the API: every method whose request declares an optional ``purpose`` (the purpose
of processing) must be listed in :data:`TEXT_REQUESTS`, so a new text-processing RPC cannot be left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.message import Message

from custos.server.app import SERVICES
from custos.testing.builders import generate_request
from custos.testing.server import ScriptedEngine, ScriptedServer, ServerHarness
from custos.v1 import common_pb2, inference_pb2, privacy_pb2

TEXT = "Hi, I am John Smith. Where is my parcel?"
PRINCIPAL = "svc:crm"
PURPOSES = {PRINCIPAL: ["support"], "*": ["billing"]}


def _anonymize(**fields: Any) -> Message:
    return privacy_pb2.AnonymizeRequest(
        conversation_id="c-1",
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=TEXT)],
        **fields,
    )


def _classify(**fields: Any) -> Message:
    return inference_pb2.ClassifyRequest(
        conversation_id="c-1", message=TEXT, labels=["parcel", "bill"], **fields
    )


# Method -> (builds a valid request with these fields, server streaming).
TEXT_REQUESTS: dict[str, tuple[Callable[..., Message], bool]] = {
    "/custos.v1.Inference/Generate": (lambda **f: generate_request(TEXT, **f), False),
    "/custos.v1.Inference/GenerateStream": (lambda **f: generate_request(TEXT, **f), True),
    "/custos.v1.Inference/Classify": (_classify, False),
    "/custos.v1.Privacy/Anonymize": (_anonymize, False),
}
# (declared purpose, outcome): none, one nobody has, the "*" list's (not the caller's), the caller's own.
CASES = [
    (None, "INVALID_ARGUMENT"),
    ("marketing", "INVALID_ARGUMENT"),
    ("billing", "INVALID_ARGUMENT"),
    ("support", "OK"),
]


def test_every_rpc_declaring_a_purpose_is_in_the_matrix() -> None:
    declaring = {
        f"/{s.full_name}/{m.name}"
        for s in SERVICES
        for m in s.methods
        if "purpose" in m.input_type.fields_by_name and m.input_type.fields_by_name["purpose"].has_presence
    }
    assert declaring == set(TEXT_REQUESTS)


@pytest.fixture
def policed(scripted_server: ScriptedServer) -> tuple[ServerHarness, ScriptedEngine]:
    return scripted_server("Hello <PERSON_1>.", http_listen="127.0.0.1:0", purposes=PURPOSES)


def _grpc_code(channel: grpc.Channel, method: str, streaming: bool, request: Message) -> tuple[str, str]:
    payload = request.SerializeToString()
    try:
        if streaming:
            list(channel.unary_stream(method)(payload, timeout=20))
        else:
            channel.unary_unary(method)(payload, timeout=20)
    except grpc.RpcError as err:
        return err.code().name, err.details() or ""
    return "OK", ""


@pytest.mark.parametrize("method", sorted(TEXT_REQUESTS))
def test_grpc_purpose_matrix(policed: tuple[ServerHarness, ScriptedEngine], method: str) -> None:
    harness, engine = policed
    channel = harness.channel_for("inference", principal=PRINCIPAL)
    build, streaming = TEXT_REQUESTS[method]
    rpc = method.rsplit("/", 1)[1]
    for purpose, expected in CASES:
        fields = {} if purpose is None else {"purpose": purpose}
        before_invalid = len([r for r in harness.audit_rows("invalid") if r["rpc"] == rpc])
        code, details = _grpc_code(channel, method, streaming, build(**fields))
        assert code == expected, (method, purpose, details)
        invalid = [r for r in harness.audit_rows("invalid") if r["rpc"] == rpc]
        if expected == "OK":
            assert len(invalid) == before_invalid
        else:
            assert details.startswith("purpose"), details  # the message names the field
            assert len(invalid) == before_invalid + 1  # the refusal is audited
            assert invalid[-1]["payload"]["details"]["field"] == "purpose"
    # The model ran only for the permitted purpose (Anonymize never runs it).
    assert len(engine.calls) + len(engine.prefixes) == (0 if rpc == "Anonymize" else 1)


@pytest.mark.parametrize("stream", [False, True])
def test_http_purpose_matrix(policed: tuple[ServerHarness, ScriptedEngine], stream: bool) -> None:
    harness, engine = policed
    token = harness.create_token("inference", principal=PRINCIPAL)
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=harness.http_url, headers=headers, verify=harness.http_tls()) as client:
        for purpose, expected in CASES:
            body: dict[str, Any] = {
                "model": "scripted",
                "messages": [{"role": "user", "content": TEXT}],
                "stream": stream,
            }
            if purpose is not None:
                body["purpose"] = purpose
            reply = client.post("/v1/chat/completions", json=body)
            if expected == "OK":
                assert reply.status_code == 200, reply.text
            else:
                assert reply.status_code == 400, reply.text
                assert reply.json()["error"]["param"] == "purpose"
    assert len(engine.calls) == 1
