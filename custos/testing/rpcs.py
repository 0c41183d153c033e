"""Test support generated from the service descriptors: every RPC, and messages with every field set.

Fuzzing and the no-personal-data test walk the API from the descriptors, so an RPC or field added later is
covered without touching the tests. Nothing here runs in production.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from custos.server.app import SERVICES

INT_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
UINT_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
    }
)
FLOAT_TYPES = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE})


def is_repeated(field: FieldDescriptor) -> bool:
    """Whether ``field`` is a repeated field (``label`` is gone from newer protobuf runtimes)."""
    flag = getattr(field, "is_repeated", None)
    if isinstance(flag, bool):
        return flag
    return bool(getattr(field, "label", None) == FieldDescriptor.LABEL_REPEATED)


@dataclass(frozen=True)
class Rpc:
    """One method of the API: its path, descriptor and request class."""

    method: MethodDescriptor

    @property
    def path(self) -> str:
        """The gRPC method path, e.g. ``/custos.v1.Inference/Generate``."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def request_type(self) -> type[Message]:
        """The generated request class."""
        return message_factory.GetMessageClass(self.method.input_type)

    def raw_call(self, channel: grpc.Channel, payload: bytes, *, timeout: float = 60.0) -> list[bytes]:
        """Send ``payload`` as the serialized request; return the raw responses (one for unary calls)."""
        if self.method.server_streaming:
            stream = channel.unary_stream(self.path, request_serializer=None, response_deserializer=None)
            return list(stream(payload, timeout=timeout))
        unary = channel.unary_unary(self.path, request_serializer=None, response_deserializer=None)
        return [unary(payload, timeout=timeout)]


def all_rpcs() -> list[Rpc]:
    """Every method of every API service, in declaration order."""
    return [Rpc(method) for service in SERVICES for method in service.methods]


def fill_message(
    descriptor: Descriptor,
    *,
    text: Callable[[str], str],
    number: Callable[[FieldDescriptor], int | float],
    depth: int = 3,
) -> dict[str, Any]:
    """Keyword arguments that set every field of ``descriptor`` (recursively, repeated fields twice).

    ``text(field_path)`` gives string values, ``number(field)`` numeric ones; enums take their last value.
    """
    values: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.containing_oneof is not None and field.containing_oneof.fields[0] is not field:
            continue  # one member per oneof
        value: Any
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            assert field.message_type is not None
            if depth == 0:
                continue
            if field.message_type.full_name == "google.protobuf.Timestamp":
                value = {"seconds": 1_700_000_000}
            else:
                value = fill_message(field.message_type, text=text, number=number, depth=depth - 1)
        elif field.type == FieldDescriptor.TYPE_STRING:
            value = text(f"{descriptor.name}.{field.name}")
        elif field.type == FieldDescriptor.TYPE_BYTES:
            value = text(f"{descriptor.name}.{field.name}").encode()
        elif field.type == FieldDescriptor.TYPE_BOOL:
            value = True
        elif field.type == FieldDescriptor.TYPE_ENUM:
            assert field.enum_type is not None
            value = field.enum_type.values[-1].number
        else:
            value = number(field)
        values[field.name] = [value, value] if is_repeated(field) else value
    return values
