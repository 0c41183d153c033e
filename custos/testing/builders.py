"""Request messages the test suite builds in many places, built one way; nothing here runs in production."""

from __future__ import annotations

from typing import Any

from custos.v1 import common_pb2, inference_pb2


def generate_request(
    *contents: str, conversation_id: str = "conv-1", max_new_tokens: int = 8, **fields: Any
) -> inference_pb2.GenerateRequest:
    """A GenerateRequest with one user message per ``contents``; ``fields`` set any other request field."""
    return inference_pb2.GenerateRequest(
        conversation_id=conversation_id,
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=c) for c in contents],
        parameters=inference_pb2.GenerationParameters(max_new_tokens=max_new_tokens),
        **fields,
    )
