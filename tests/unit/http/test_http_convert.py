"""OpenAI chat bodies -> GenerateCall: the gRPC edge's limits, OpenAI's field names, nothing dropped."""

from __future__ import annotations

from typing import Any

import pytest

from custos.flows.errors import InvalidArgument
from custos.flows.validation import RequestLimits
from custos.http.convert import generate_call
from custos.http.schema import parse_chat_request, parse_json_object

LIMITS = RequestLimits(
    max_new_tokens_limit=64, default_max_new_tokens=16, max_prompt_chars=200, max_messages=4
)
MODELS = frozenset({"scripted"})


def convert(**fields: Any) -> Any:
    body = {"model": "scripted", "messages": [{"role": "user", "content": "Where is my order?"}], **fields}
    return generate_call(parse_chat_request(body), LIMITS, served_models=MODELS)


def test_defaults_are_the_grpc_edge_ones() -> None:
    call = convert()
    assert call.params.max_new_tokens == 16
    assert call.params.temperature == 0.0 and call.params.top_p == 1.0
    assert call.reidentify is False and call.privacy_mode == "mask" and call.subject_id is None
    assert [t.role for t in call.turns] == ["user"]


def test_each_request_without_conversation_id_is_its_own_conversation() -> None:
    assert convert().conversation_id != convert().conversation_id
    assert convert(conversation_id="c-1").conversation_id == "c-1"


def test_openai_fields_map_to_the_domain_request() -> None:
    call = convert(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}],
            },
            {"role": "assistant", "content": "Hi.", "refusal": None, "tool_calls": None},
            {"role": "user", "content": "Refund?", "name": "ignored"},
        ],
        max_tokens=10,
        max_completion_tokens=12,
        temperature=0.7,
        top_p=0.9,
        seed=3,
        stop="END",
        subject_id="customer-1",
        purpose="support",
        reidentify=True,
        privacy_mode="block",
        block_entity_types=["IBAN_CODE"],
    )
    assert [(t.role, t.content) for t in call.turns] == [
        ("system", "Be brief."),
        ("user", "Hello\nthere"),
        ("assistant", "Hi."),
        ("user", "Refund?"),
    ]
    assert call.params.max_new_tokens == 12  # max_completion_tokens wins, as in OpenAI's API
    assert (call.params.temperature, call.params.top_p, call.params.seed) == (0.7, 0.9, 3)
    assert call.params.stop == ("END",)
    assert (call.subject_id, call.purpose, call.reidentify) == ("customer-1", "support", True)
    assert (call.privacy_mode, call.block_entities) == ("block", ("IBAN_CODE",))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"messages": [{"role": "user", "content": "x"}] * 5}, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 201}]}, "messages"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
            "messages[0].content[0].text",
        ),
        (
            {"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]},
            "messages[0].tool_calls",
        ),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_tokens": 65}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"seed": -1}, "seed"),
        ({"stop": ""}, "stop"),
        ({"stop": ["ok", "x" * 65]}, "stop[1]"),
        ({"subject_id": "a\nb"}, "subject_id"),
        ({"reidentify": "yes"}, "reidentify"),
        ({"privacy_mode": "strict"}, "privacy_mode"),
        ({"block_entity_types": ["iban"], "privacy_mode": "block"}, "block_entity_types[0]"),
        ({"stream_options": {"include_usage": True, "continuous": True}}, "stream_options.continuous"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"model": "other"}, "model"),
    ],
)
def test_refusals_name_the_openai_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        convert(**fields)
    assert info.value.field == field


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'"text"', b'{"a": Infinity}', b"\xff"])
def test_only_a_json_object_is_a_body(body: bytes) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_json_object(body)
    assert info.value.field == "request"


def test_refusals_never_repeat_the_input() -> None:
    secret = "Jane Doe 4111 1111 1111 1111"
    for fields in ({"temperature": secret}, {"messages": [{"role": secret, "content": "x"}]}, {secret: 1}):
        with pytest.raises(InvalidArgument) as info:
            convert(**fields)
        assert "4111" not in str(info.value)
    with pytest.raises(InvalidArgument) as info:
        convert(temprature=0.5)  # a typo is named
    assert info.value.field == "temprature"
