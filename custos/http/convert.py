"""OpenAI JSON <-> domain conversion: chat completion requests become GenerateCalls, outcomes bodies.

The limits and rules are the gRPC edge's (``custos.flows.validation``); field names in errors are OpenAI's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from custos.engine.types import ChatTurn, FinishReason, Role, SamplingParams
from custos.flows.errors import InvalidArgument
from custos.flows.types import GenerateCall, GenerateOutcome
from custos.flows.validation import (
    ENTITY_TYPE_PATTERN,
    MAX_BLOCK_TYPES,
    MAX_STOP_CHARS,
    MAX_STOP_SEQUENCES,
    PURPOSE_PATTERN,
    PURPOSE_RULE,
    RequestLimits,
    check_id,
)
from custos.http.schema import ChatCompletionRequest, ChatMessage

#: OpenAI roles -> the model's roles ("developer" is OpenAI's newer name for system instructions).
ROLES: Mapping[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}
#: The engine's finish reasons in OpenAI's words; "cancelled" never reaches a client as a finish reason.
FINISH_REASONS: Mapping[FinishReason, str] = {
    "stop": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "cancelled": "stop",
}


def _content_text(content: Any, field: str) -> str:
    """A message's text: a string, or the text parts of a content list joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidArgument(f"{field}[{index}]", "only text content parts are supported")
            if set(part) - {"type", "text"}:
                raise InvalidArgument(f"{field}[{index}]", "a text part has only 'type' and 'text'")
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidArgument(f"{field}[{index}].text", "must be a string")
            texts.append(text)
        return "\n".join(texts)
    raise InvalidArgument(field, "must be a string or a list of text parts")


def _turns(messages: list[ChatMessage], limits: RequestLimits) -> tuple[ChatTurn, ...]:
    if not messages:
        raise InvalidArgument("messages", "at least one message is required")
    if len(messages) > limits.max_messages:
        raise InvalidArgument("messages", f"more than {limits.max_messages} messages")
    turns: list[ChatTurn] = []
    total_chars = 0
    for index, message in enumerate(messages):
        field = f"messages[{index}].content"
        text = _content_text(message.content, field)
        if not text.strip():
            raise InvalidArgument(field, "must not be empty")
        total_chars += len(text)
        turns.append(ChatTurn(role=ROLES[message.role], content=text))
    if total_chars > limits.max_prompt_chars:
        raise InvalidArgument("messages", f"total content exceeds {limits.max_prompt_chars} characters")
    return tuple(turns)


def _max_new_tokens(request: ChatCompletionRequest, limits: RequestLimits) -> int:
    field, value = "max_completion_tokens", request.max_completion_tokens
    if value is None:
        field, value = "max_tokens", request.max_tokens
    if value is None:
        return limits.default_max_new_tokens
    if not 1 <= value <= limits.max_new_tokens_limit:
        raise InvalidArgument(field, f"must be between 1 and {limits.max_new_tokens_limit}")
    return value


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    sequences = [stop] if isinstance(stop, str) else stop
    if len(sequences) > MAX_STOP_SEQUENCES:
        raise InvalidArgument("stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
    for index, sequence in enumerate(sequences):
        if not sequence or len(sequence) > MAX_STOP_CHARS:
            name = "stop" if isinstance(stop, str) else f"stop[{index}]"
            raise InvalidArgument(name, f"must be 1..{MAX_STOP_CHARS} characters")
    return tuple(sequences)


def _block_types(request: ChatCompletionRequest) -> tuple[str, ...]:
    types = request.block_entity_types
    if len(types) > MAX_BLOCK_TYPES:
        raise InvalidArgument("block_entity_types", f"at most {MAX_BLOCK_TYPES} entries")
    for index, entity_type in enumerate(types):
        if not ENTITY_TYPE_PATTERN.fullmatch(entity_type):
            raise InvalidArgument(
                f"block_entity_types[{index}]", "must be an upper-case entity type such as CREDIT_CARD"
            )
    if types and request.privacy_mode != "block":
        raise InvalidArgument("block_entity_types", "only allowed with privacy_mode 'block'")
    return tuple(types)


def generate_call(
    request: ChatCompletionRequest,
    limits: RequestLimits,
    *,
    served_models: frozenset[str],
    idempotency_key: str | None = None,
) -> GenerateCall:
    """Validate a chat completion request and convert it to the domain request.

    Without ``conversation_id`` (the OpenAI SDK sends none) the request is its own conversation: a fresh id,
    so its placeholders are shared with no other request.
    """
    if request.model not in served_models:
        raise InvalidArgument("model", "not a model this server serves (GET /v1/models lists them)")
    turns = _turns(request.messages, limits)
    conversation_id = request.conversation_id
    if conversation_id is None:
        conversation_id = str(uuid.uuid4())
    else:
        check_id(conversation_id, "conversation_id", required=True)
    if request.subject_id is not None:
        check_id(request.subject_id, "subject_id", required=True)
    if request.purpose is not None and not PURPOSE_PATTERN.fullmatch(request.purpose):
        raise InvalidArgument("purpose", PURPOSE_RULE)
    if idempotency_key is not None:
        check_id(idempotency_key, "idempotency-key", required=True)
    return GenerateCall(
        conversation_id=conversation_id,
        turns=turns,
        params=SamplingParams(
            max_new_tokens=_max_new_tokens(request, limits),
            # Greedy unless asked, as on gRPC (OpenAI's default of 1 makes a small base model ramble).
            temperature=request.temperature if request.temperature is not None else 0.0,
            top_p=request.top_p if request.top_p is not None else 1.0,
            seed=request.seed,
            stop=_stop(request.stop),
        ),
        subject_id=request.subject_id,
        reidentify=request.reidentify,
        purpose=request.purpose,
        idempotency_key=idempotency_key,
        privacy_mode=request.privacy_mode,
        block_entities=_block_types(request),
    )


# ---- responses ------------------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage block."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def redaction(counts: Mapping[str, int]) -> dict[str, Any]:
    """Entity types and counts of what was masked before the model: types only, never values."""
    return {"entities": dict(sorted(counts.items())), "total": sum(counts.values())}


def completion_body(outcome: GenerateOutcome, *, model: str, created: int) -> dict[str, Any]:
    """A ``chat.completion`` object; its ``id`` is the audit record's request id."""
    return {
        "id": outcome.request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": outcome.text, "refusal": None},
                "finish_reason": FINISH_REASONS[outcome.finish_reason],
                "logprobs": None,
            }
        ],
        "usage": usage(outcome.prompt_tokens, outcome.completion_tokens),
        "custos": {"request_id": outcome.request_id, "redaction": redaction(outcome.redaction)},
    }


def chunk_body(
    request_id: str,
    *,
    model: str,
    created: int,
    delta: Mapping[str, Any] | None = None,
    finish_reason: str | None = None,
    usage_block: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk``; without ``delta`` it is the usage chunk (no choices)."""
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": dict(delta), "finish_reason": finish_reason, "logprobs": None}],
    }
    if usage_block is not None:
        body["usage"] = dict(usage_block)
    if extra:
        body.update(extra)
    return body


def sse(data: Mapping[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


def models_body(models: list[str], *, created: int) -> dict[str, Any]:
    """``GET /v1/models``."""
    return {"object": "list", "data": [model_body(m, created=created) for m in models]}


def model_body(model: str, *, created: int) -> dict[str, Any]:
    """One model object."""
    return {"id": model, "object": "model", "created": created, "owned_by": "custos"}
