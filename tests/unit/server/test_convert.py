"""Request validation at the edge: every bad field is named in an INVALID_ARGUMENT."""

from __future__ import annotations

import pytest

from custos.api.convert import RequestLimits, generate_call_from_pb, parse_message
from custos.flows.errors import InvalidArgument
from custos.v1 import common_pb2, inference_pb2

LIMITS = RequestLimits(
    max_new_tokens_limit=64, default_max_new_tokens=16, max_prompt_chars=200, max_messages=4
)


def _request(**overrides: object) -> inference_pb2.GenerateRequest:
    request = inference_pb2.GenerateRequest(
        conversation_id="c-1",
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Where is my order?")],
    )
    for name, value in overrides.items():
        if name == "params":
            request.parameters.CopyFrom(inference_pb2.GenerationParameters(**value))  # type: ignore[arg-type]
        elif name == "messages":
            del request.messages[:]
            request.messages.extend(value)  # type: ignore[arg-type]
        else:
            setattr(request, name, value)
    return request


def _msg(role: int, content: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=content)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"conversation_id": ""}, "conversation_id"),
        ({"conversation_id": "x" * 300}, "conversation_id"),
        ({"conversation_id": "a\nb"}, "conversation_id"),
        ({"messages": []}, "messages"),
        ({"messages": [_msg(common_pb2.ROLE_USER, "hi")] * 5}, "messages"),
        ({"messages": [_msg(common_pb2.ROLE_USER, "x" * 201)]}, "messages"),
        ({"messages": [_msg(common_pb2.ROLE_USER, "")]}, "messages[0].content"),
        (
            {"messages": [_msg(common_pb2.ROLE_USER, "ok"), _msg(common_pb2.ROLE_USER, "  \n")]},
            "messages[1].content",
        ),
        ({"messages": [_msg(common_pb2.ROLE_UNSPECIFIED, "hi")]}, "messages[0].role"),
        ({"messages": [_msg(42, "hi")]}, "messages[0].role"),
        ({"params": {"max_new_tokens": 65}}, "parameters.max_new_tokens"),
        ({"params": {"max_new_tokens": 0}}, "parameters.max_new_tokens"),
        ({"params": {"max_new_tokens": -3}}, "parameters.max_new_tokens"),
        ({"params": {"max_new_tokens": 8, "min_new_tokens": 9}}, "parameters.min_new_tokens"),
        ({"params": {"min_new_tokens": -1}}, "parameters.min_new_tokens"),
        ({"params": {"temperature": -0.1}}, "parameters.temperature"),
        ({"params": {"temperature": float("nan")}}, "parameters.temperature"),
        ({"params": {"top_p": 0.0}}, "parameters.top_p"),
        ({"params": {"top_p": 1.5}}, "parameters.top_p"),
        ({"params": {"seed": -1}}, "parameters.seed"),
        ({"params": {"stop": [""]}}, "parameters.stop[0]"),
        ({"params": {"stop": ["a"] * 9}}, "parameters.stop"),
        ({"subject_id": ""}, "subject_id"),
        ({"purpose": "x" * 257}, "purpose"),
        ({"purpose": "x" * 65}, "purpose"),
        ({"purpose": "Refund for Jane Doe"}, "purpose"),
        ({"purpose": "jane.doe@example.com"}, "purpose"),
    ],
)
def test_invalid_requests_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        generate_call_from_pb(_request(**overrides), LIMITS)
    assert info.value.field == field
    assert info.value.message.startswith(field + ":")


def test_valid_request_takes_defaults_and_values() -> None:
    call = generate_call_from_pb(_request(), LIMITS)
    assert call.params.max_new_tokens == 16
    assert call.params.min_new_tokens == 0
    assert call.params.temperature == 0.0
    assert call.turns[0].role == "user"
    assert call.subject_id is None and call.purpose is None and call.reidentify is False

    call = generate_call_from_pb(
        _request(
            params={
                "max_new_tokens": 64,
                "temperature": 0.7,
                "top_p": 0.9,
                "seed": 7,
                "stop": ["\n"],
                "min_new_tokens": 32,
            },
            subject_id="cust-9",
            reidentify=True,
            purpose="support",
        ),
        LIMITS,
    )
    assert (call.params.max_new_tokens, call.params.seed, call.params.stop) == (64, 7, ("\n",))
    assert call.params.min_new_tokens == 32
    assert call.params.temperature == pytest.approx(0.7)
    assert (call.subject_id, call.reidentify, call.purpose) == ("cust-9", True, "support")


@pytest.mark.parametrize("raw", [b"\xff\xff\xff", b"\x12\x05ab", b"\x0a\xff\x01"])
def test_malformed_bytes_are_invalid_argument(raw: bytes) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_message(inference_pb2.GenerateRequest, raw)
    assert info.value.field == "request"
