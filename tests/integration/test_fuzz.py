"""Property-based fuzzing of a running server: random and malformed requests to every RPC.

No call may crash the server or come back INTERNAL/UNKNOWN, and health stays SERVING throughout.
Messages are drawn from the service descriptors, so a method or field added later is fuzzed too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from presidio_analyzer import AnalyzerEngine

from custos.engine.base import Engine
from custos.testing.rpcs import FLOAT_TYPES, INT_TYPES, UINT_TYPES, Rpc, all_rpcs, is_repeated
from custos.testing.server import ServerHarness, make_server
from custos.v1 import audit_pb2, common_pb2, inference_pb2

RPCS = all_rpcs()
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
    # Text the language policy cannot analyse (e.g. 'a' * 500 reads as no supported language) is refused.
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
}
FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

ODD_TEXT = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.sampled_from(
        ["", " ", "\x00", "\u202e\u202d", "\ufeff", "<PERSON_1>", "<PERSON_", "e\u0301" * 50, "\U0001f600"]
    ),
    st.builds(
        lambda piece, count: piece * count,
        st.sampled_from(["a", "\u00e9", "\U0001f600", "\u0301", "<EMAIL_ADDRESS_1> ", "\n"]),
        st.integers(500, 9000),
    ),
)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return ODD_TEXT
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(-(2**31), 2**31 - 1)
    if field.type in FLOAT_TYPES:
        return st.floats(width=32 if field.type == FieldDescriptor.TYPE_FLOAT else 64)
    bits = 32 if field.cpp_type in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_UINT32) else 64
    if field.type in UINT_TYPES:
        return st.one_of(st.sampled_from([0, 1]), st.integers(0, 2**bits - 1))
    assert field.type in INT_TYPES, field.full_name
    return st.one_of(st.sampled_from([0, -1, 1]), st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))


def message_strategy(descriptor: Descriptor, depth: int = 3) -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments for ``descriptor``'s message with any subset of fields set to odd values."""
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        value: st.SearchStrategy[Any]
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            key, item = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            optional[field.name] = st.dictionaries(_scalar(key), _scalar(item), max_size=4)
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth == 0:
                continue
            if field.message_type.full_name == "google.protobuf.Timestamp":
                value = st.fixed_dictionaries(
                    {},
                    optional={"seconds": st.integers(-(2**40), 2**40), "nanos": st.integers(0, 999_999_999)},
                )
            else:
                value = message_strategy(field.message_type, depth - 1)
        else:
            value = _scalar(field)
        optional[field.name] = st.lists(value, max_size=4) if is_repeated(field) else value
    return st.fixed_dictionaries({}, optional=optional)


@pytest.fixture(scope="module")
def fuzz_server(
    tmp_path_factory: pytest.TempPathFactory, analyzer: AnalyzerEngine, tiny_engine: Engine
) -> Iterator[ServerHarness]:
    with make_server(
        tmp_path_factory.mktemp("fuzz"),
        analyzer,
        tiny_engine,
        max_new_tokens_limit=16,
        max_prompt_chars=4000,
        max_request_bytes=8192,
        # Hundreds of examples a second from one principal: the rate limit is not what is fuzzed here.
        rate_limit_per_s=1e6,
        rate_limit_burst=1_000_000,
    ) as harness:
        # Every RPC is fuzzed past authorization: a caller holding every role.
        harness.channel = harness.channel_for(
            "admin", "inference", "compliance-transcripts", principal="fuzz-all-roles"
        )
        yield harness


def call_and_check(harness: ServerHarness, rpc: Rpc, payload: bytes) -> None:
    """Send ``payload``: an answer or a clear refusal must come back, and the server must stay healthy."""
    try:
        for response in rpc.raw_call(harness.channel, payload, timeout=60):
            rpc.method.output_type._concrete_class.FromString(response)  # answers parse
        code = grpc.StatusCode.OK
    except grpc.RpcError as err:
        code = err.code()
        assert "Traceback" not in (err.details() or "")
    event(f"{rpc.method.name}: {code.name}")
    assert code in ALLOWED, f"{rpc.path} answered {code.name}"
    health = health_pb2_grpc.HealthStub(harness.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        == health_pb2.HealthCheckResponse.SERVING
    )


@settings(FUZZ, max_examples=250)
@given(
    rpc=st.sampled_from(RPCS),
    payload=st.one_of(st.binary(max_size=256), st.binary(min_size=7000, max_size=20000)),
)
def test_random_bytes_as_the_serialized_request(fuzz_server: ServerHarness, rpc: Rpc, payload: bytes) -> None:
    call_and_check(fuzz_server, rpc, payload)


@settings(FUZZ, max_examples=200)
@given(data=st.data(), rpc=st.sampled_from(RPCS))
def test_well_formed_requests_with_odd_values(
    fuzz_server: ServerHarness, data: st.DataObject, rpc: Rpc
) -> None:
    fields = data.draw(message_strategy(rpc.method.input_type), label="fields")
    call_and_check(fuzz_server, rpc, rpc.request_type(**fields).SerializeToString())


VALID = inference_pb2.GenerateRequest(
    conversation_id="fuzz",
    messages=[
        common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Hi, I am John Smith. Where is my parcel?")
    ],
    parameters=inference_pb2.GenerationParameters(max_new_tokens=4, temperature=0.7, top_p=0.9, seed=1),
).SerializeToString()


@settings(FUZZ, max_examples=150)
@given(
    rpc=st.sampled_from([r for r in RPCS if r.method.input_type.name == "GenerateRequest"]),
    edits=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_valid_request_with_flipped_bytes(
    fuzz_server: ServerHarness, rpc: Rpc, edits: list[tuple[int, int]]
) -> None:
    payload = bytearray(VALID)
    for position, value in edits:
        payload[position] = value
    call_and_check(fuzz_server, rpc, bytes(payload))


NEAR_VALID_GENERATE = st.builds(
    inference_pb2.GenerateRequest,
    conversation_id=st.one_of(st.just("conv-1"), st.just("conv-1"), ODD_TEXT),
    messages=st.lists(
        st.builds(
            common_pb2.ChatMessage,
            role=st.one_of(st.sampled_from([1, 2, 3]), st.sampled_from([1, 2, 3]), st.integers(-5, 10)),
            content=ODD_TEXT,
        ),
        min_size=1,
        max_size=4,
    ),
    parameters=st.builds(
        inference_pb2.GenerationParameters,
        max_new_tokens=st.integers(-3, 20),
        temperature=st.one_of(st.sampled_from([0.0, 0.7]), st.floats(width=32)),
        top_p=st.one_of(st.sampled_from([1.0, 0.9]), st.floats(width=32)),
        seed=st.integers(-(2**63), 2**63 - 1),
        stop=st.lists(ODD_TEXT, max_size=3),
    ),
    reidentify=st.booleans(),
)


@settings(FUZZ, max_examples=150)
@given(
    rpc=st.sampled_from([r for r in RPCS if r.method.input_type.name == "GenerateRequest"]),
    req=NEAR_VALID_GENERATE,
)
def test_nearly_valid_generate_requests(
    fuzz_server: ServerHarness, rpc: Rpc, req: inference_pb2.GenerateRequest
) -> None:
    call_and_check(fuzz_server, rpc, req.SerializeToString())


@pytest.mark.parametrize("field", ["since", "until"])
def test_timestamp_out_of_range_is_invalid_argument(fuzz_server: ServerHarness, field: str) -> None:
    req = audit_pb2.AuditQueryRequest(**{field: timestamp_pb2.Timestamp(seconds=-62_135_596_801)})
    with pytest.raises(grpc.RpcError) as info:
        fuzz_server.audit.Query(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert info.value.details().startswith(field)  # type: ignore[attr-defined]
