"""Protobuf <-> domain conversion of the Inference service, with request validation that names the field.

The chat roles and the privacy policy fields, shared by every service that takes messages, are converted
here; the other services' conversions are in ``convert_*.py`` beside this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypeVar

from google.protobuf.message import DecodeError

from custos.engine.types import ChatTurn, FinishReason, Role, SamplingParams
from custos.flows.errors import InvalidArgument
from custos.flows.types import (
    GenerateCall,
    GenerateOutcome,
    PrivacyMode,
    StreamDelta,
    StreamEvent,
    StreamFinished,
    StreamStarted,
)
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
from custos.v1 import common_pb2, inference_pb2

ROLES_FROM_PB: Mapping[common_pb2.Role.ValueType, Role] = {
    common_pb2.ROLE_SYSTEM: "system",
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
}
ROLES_TO_PB: Mapping[str, common_pb2.Role.ValueType] = {role: pb for pb, role in ROLES_FROM_PB.items()}
_FINISH: Mapping[FinishReason, inference_pb2.FinishReason.ValueType] = {
    "stop": inference_pb2.FINISH_REASON_STOP,
    "length": inference_pb2.FINISH_REASON_LENGTH,
    "stop_sequence": inference_pb2.FINISH_REASON_STOP_SEQUENCE,
    "cancelled": inference_pb2.FINISH_REASON_CANCELLED,
}
M = TypeVar("M")
_MODES: dict[int, PrivacyMode] = {
    common_pb2.PRIVACY_MODE_UNSPECIFIED: "mask",
    common_pb2.PRIVACY_MODE_MASK: "mask",
    common_pb2.PRIVACY_MODE_BLOCK: "block",
}


def parse_message(message_type: type[M], raw: bytes) -> M:
    """Parse raw request bytes; a malformed message is the caller's error, not ours."""
    try:
        return message_type.FromString(raw)  # type: ignore[attr-defined]
    except (DecodeError, RuntimeError, ValueError):
        raise InvalidArgument("request", "malformed protobuf message") from None


def chat_message_to_pb(role: str, content: str) -> common_pb2.ChatMessage:
    """A chat message; a role this API does not know becomes ROLE_UNSPECIFIED."""
    return common_pb2.ChatMessage(role=ROLES_TO_PB.get(role, common_pb2.ROLE_UNSPECIFIED), content=content)


def privacy_policy_from_pb(
    mode: int, block_types: Sequence[str], *, prefix: str = ""
) -> tuple[PrivacyMode, tuple[str, ...]]:
    """Validate the policy fields of a request; field names in errors carry ``prefix``."""
    resolved = _MODES.get(mode)
    if resolved is None:
        raise InvalidArgument(f"{prefix}privacy_mode", "must be PRIVACY_MODE_MASK or PRIVACY_MODE_BLOCK")
    if len(block_types) > MAX_BLOCK_TYPES:
        raise InvalidArgument(f"{prefix}block_entity_types", f"at most {MAX_BLOCK_TYPES} entries")
    for index, entity_type in enumerate(block_types):
        if not ENTITY_TYPE_PATTERN.fullmatch(entity_type):
            raise InvalidArgument(
                f"{prefix}block_entity_types[{index}]",
                "must be an upper-case entity type such as CREDIT_CARD",
            )
    if block_types and resolved != "block":
        raise InvalidArgument(f"{prefix}block_entity_types", "only allowed with PRIVACY_MODE_BLOCK")
    return resolved, tuple(block_types)


def generate_call_from_pb(request: inference_pb2.GenerateRequest, limits: RequestLimits) -> GenerateCall:
    """Validate a GenerateRequest and convert it to the domain request."""
    check_id(request.conversation_id, "conversation_id", required=True)
    task: str | None = None
    if request.HasField("task"):
        check_id(request.task, "task", required=True)
        task = request.task
    elif request.variables:
        raise InvalidArgument("variables", "only allowed with a task")
    if not request.messages and task is None:
        raise InvalidArgument("messages", "at least one message is required")
    if len(request.messages) > limits.max_messages:
        raise InvalidArgument("messages", f"more than {limits.max_messages} messages")
    turns: list[ChatTurn] = []
    total_chars = 0
    for index, message in enumerate(request.messages):
        role = ROLES_FROM_PB.get(message.role)
        if role is None:
            raise InvalidArgument(
                f"messages[{index}].role", "must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT"
            )
        if not message.content.strip():
            raise InvalidArgument(f"messages[{index}].content", "must not be empty")
        total_chars += len(message.content)
        turns.append(ChatTurn(role=role, content=message.content))
    for name, value in sorted(request.variables.items()):
        if not name or len(name) > MAX_STOP_CHARS or not name.isidentifier():
            raise InvalidArgument("variables", "names must be identifiers of 1..64 characters")
        if not value.strip():
            raise InvalidArgument(f"variables[{name}]", "must not be empty")
        total_chars += len(value)
    if total_chars > limits.max_prompt_chars:
        raise InvalidArgument("messages", f"total content exceeds {limits.max_prompt_chars} characters")

    params = request.parameters
    max_new_tokens = limits.default_max_new_tokens
    if params.HasField("max_new_tokens"):
        max_new_tokens = params.max_new_tokens
        if not 1 <= max_new_tokens <= limits.max_new_tokens_limit:
            raise InvalidArgument(
                "parameters.max_new_tokens", f"must be between 1 and {limits.max_new_tokens_limit}"
            )
    min_new_tokens = params.min_new_tokens if params.HasField("min_new_tokens") else 0
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise InvalidArgument(
            "parameters.min_new_tokens", f"must be between 0 and max_new_tokens ({max_new_tokens})"
        )
    temperature = 0.0
    if params.HasField("temperature"):
        temperature = params.temperature
        if not math.isfinite(temperature) or temperature < 0 or temperature > 2:
            raise InvalidArgument("parameters.temperature", "must be between 0 and 2")
    top_p = 1.0
    if params.HasField("top_p"):
        top_p = params.top_p
        if not math.isfinite(top_p) or not 0 < top_p <= 1:
            raise InvalidArgument("parameters.top_p", "must be in (0, 1]")
    if params.HasField("seed") and params.seed < 0:
        raise InvalidArgument("parameters.seed", "must not be negative")
    if len(params.stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgument("parameters.stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
    for index, stop in enumerate(params.stop):
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise InvalidArgument(f"parameters.stop[{index}]", f"must be 1..{MAX_STOP_CHARS} characters")

    subject_id: str | None = None
    if request.HasField("subject_id"):
        check_id(request.subject_id, "subject_id", required=True)
        subject_id = request.subject_id
    purpose: str | None = None
    if request.HasField("purpose"):
        if not PURPOSE_PATTERN.fullmatch(request.purpose):
            raise InvalidArgument("purpose", PURPOSE_RULE)
        purpose = request.purpose
    idempotency_key: str | None = None
    if request.HasField("idempotency_key"):
        check_id(request.idempotency_key, "idempotency_key", required=True)
        idempotency_key = request.idempotency_key
    privacy_mode, block_entities = privacy_policy_from_pb(request.privacy_mode, request.block_entity_types)

    return GenerateCall(
        conversation_id=request.conversation_id,
        turns=tuple(turns),
        params=SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=params.seed if params.HasField("seed") else None,
            stop=tuple(params.stop),
            min_new_tokens=min_new_tokens,
        ),
        subject_id=subject_id,
        reidentify=request.reidentify,
        purpose=purpose,
        idempotency_key=idempotency_key,
        privacy_mode=privacy_mode,
        block_entities=block_entities,
        task=task,
        variables=tuple(sorted(request.variables.items())),
    )


def redaction_to_pb(counts: Mapping[str, int]) -> common_pb2.RedactionSummary:
    """Entity types and counts only; values never leave the privacy stage."""
    return common_pb2.RedactionSummary(
        entities=[common_pb2.EntityCount(entity_type=t, count=n) for t, n in sorted(counts.items())],
        total=sum(counts.values()),
    )


def generate_outcome_to_pb(outcome: GenerateOutcome) -> inference_pb2.GenerateResponse:
    """Convert the flow's outcome to the response message."""
    response = inference_pb2.GenerateResponse(
        text=outcome.text,
        request_id=outcome.request_id,
        finish_reason=_FINISH[outcome.finish_reason],
        usage=inference_pb2.Usage(
            prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens
        ),
        redaction=redaction_to_pb(outcome.redaction),
    )
    if outcome.template is not None:
        template = outcome.template
        response.template.CopyFrom(
            inference_pb2.TemplateRef(id=template.id, version=template.version, sha256=template.sha256)
        )
    return response


def stream_event_to_pb(event: StreamEvent) -> inference_pb2.GenerateStreamResponse:
    """Convert one stream event to its message."""
    if isinstance(event, StreamStarted):
        return inference_pb2.GenerateStreamResponse(
            start=inference_pb2.StreamStart(
                request_id=event.request_id, redaction=redaction_to_pb(event.redaction)
            )
        )
    if isinstance(event, StreamDelta):
        return inference_pb2.GenerateStreamResponse(delta=event.text)
    if isinstance(event, StreamFinished):
        return inference_pb2.GenerateStreamResponse(
            end=inference_pb2.StreamEnd(
                finish_reason=_FINISH[event.finish_reason],
                usage=inference_pb2.Usage(
                    prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens
                ),
            )
        )
    raise TypeError(f"unknown stream event {type(event).__name__}")
