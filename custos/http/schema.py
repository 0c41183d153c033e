"""The JSON bodies of the OpenAI-compatible API: what a chat completion request may carry, and how it parses.

Parsing is strict (JSON types as sent, no string-to-number coercion) and every refusal is an
:class:`~custos.flows.errors.InvalidArgument` naming the field in OpenAI's own names
(``messages[0].content``, ``max_tokens``), never FastAPI's 422. Fields of the OpenAI API that Custos does
not implement are refused by name unless they carry their neutral value (``n: 1``, ``tools: []``), so a
client never silently gets something other than what it asked for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from custos.flows.errors import InvalidArgument
from custos.flows.validation import MAX_TEMPERATURE

Neutral = Callable[[Any], bool]
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _none(value: Any) -> bool:
    return value is None


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {}


def _is(*allowed: Any) -> Neutral:
    return lambda value: value is None or any(value == a and type(value) is type(a) for a in allowed)


#: OpenAI request fields this server does not implement -> the values it accepts for them (their defaults).
UNSUPPORTED_FIELDS: Mapping[str, Neutral] = {
    "n": _is(1),
    "tools": _empty,
    "tool_choice": _is("none"),
    "parallel_tool_calls": lambda v: v is None or isinstance(v, bool),
    "functions": _empty,
    "function_call": _is("none"),
    "logit_bias": _empty,
    "logprobs": _is(False),
    "top_logprobs": _is(0),
    "presence_penalty": _is(0, 0.0),
    "frequency_penalty": _is(0, 0.0),
    "response_format": lambda v: v is None or v == {"type": "text"},
    "audio": _none,
    "modalities": lambda v: v is None or v == ["text"],
    "prediction": _none,
    "reasoning_effort": _none,
    "web_search_options": _none,
    "service_tier": _is("auto", "default"),
    "store": _is(False),
    "metadata": _empty,
    "verbosity": _none,
    "prompt_cache_key": _none,
    "safety_identifier": _none,
}
#: Message fields of the OpenAI API that only make sense with tools or audio -> their accepted values.
UNSUPPORTED_MESSAGE_FIELDS: Mapping[str, Neutral] = {
    "tool_calls": _empty,
    "function_call": _none,
    "tool_call_id": _none,
    "audio": _none,
    "refusal": _none,
    "annotations": _empty,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ChatMessage(_Strict):
    """One message: text content as a string or as ``{"type": "text"}`` parts."""

    role: Literal["system", "developer", "user", "assistant"]
    #: A string, a list of content parts, or null (checked by the converter, which names the part at fault).
    content: Any = None
    #: The participant's name: accepted for compatibility and dropped (never reaches the model or a record).
    name: str | None = None


class StreamOptions(_Strict):
    """``stream_options``: OpenAI's usage chunk at the end of a stream."""

    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions``: the OpenAI fields Custos implements, then the Custos extras."""

    model: str
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = Field(None, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    #: OpenAI's end-user identifier; accepted and dropped (it may be personal data).
    user: str | None = None
    # ---- Custos extras ----
    #: The conversation whose vault keeps placeholders stable; absent: the request is its own conversation.
    conversation_id: str | None = None
    #: The data subject (customer) the conversation belongs to; absent: an anonymous subject.
    subject_id: str | None = None
    #: Restore placeholders in the answer (needs the ``reidentify`` permission).
    reidentify: bool = False
    #: The declared purpose of processing, a label such as ``support``.
    purpose: str | None = None
    #: ``mask`` (default) or ``block``: refuse the request when block entity types are present.
    privacy_mode: Literal["mask", "block"] = "mask"
    block_entity_types: list[str] = Field(default_factory=list)


def _reject_nan(constant: str) -> float:
    raise ValueError(constant)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object; anything else is INVALID_ARGUMENT on ``request``."""
    try:
        data = json.loads(body, parse_constant=_reject_nan)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("request", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidArgument("request", "the body must be a JSON object")
    return data


def field_path(loc: Sequence[int | str]) -> str:
    """Pydantic's error location as the field name a client reads: ``messages[0].content``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "request"


def invalid_from_validation(errors: Sequence[Mapping[str, Any]], *, skip: int = 0) -> InvalidArgument:
    """The first validation error as an InvalidArgument naming its field.

    Only pydantic's message is used (it names types and limits); the offending input is never repeated.
    ``skip`` drops leading location parts (FastAPI's ``body`` / ``query``).
    """
    first = errors[0]
    loc = tuple(first.get("loc", ()))[skip:]
    kind = first.get("type", "")
    problem = "unknown field" if kind == "extra_forbidden" else str(first.get("msg", "invalid"))
    if any(isinstance(part, str) and not _FIELD_NAME.fullmatch(part) for part in loc):
        # An unknown key is the caller's text: named only when it looks like a field name.
        return InvalidArgument("request", problem)
    return InvalidArgument(field_path(loc), problem)


def _check_unsupported(data: Mapping[str, Any], table: Mapping[str, Neutral], prefix: str) -> None:
    for name, neutral in table.items():
        if name in data and not neutral(data[name]):
            raise InvalidArgument(f"{prefix}{name}", "not supported by this server")


def parse_chat_request(data: dict[str, Any]) -> ChatCompletionRequest:
    """Validate a decoded body; unsupported OpenAI fields and unknown fields are refused by name."""
    _check_unsupported(data, UNSUPPORTED_FIELDS, "")
    messages = data.get("messages")
    if isinstance(messages, list):
        for index, message in enumerate(messages):
            if isinstance(message, dict):
                _check_unsupported(message, UNSUPPORTED_MESSAGE_FIELDS, f"messages[{index}].")
                if message.get("role") in ("tool", "function"):
                    raise InvalidArgument(f"messages[{index}].role", "tool messages are not supported")
        data = {
            **data,
            "messages": [
                {k: v for k, v in m.items() if k not in UNSUPPORTED_MESSAGE_FIELDS}
                if isinstance(m, dict)
                else m
                for m in messages
            ],
        }
    data = {k: v for k, v in data.items() if k not in UNSUPPORTED_FIELDS}
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid_from_validation(exc.errors(include_input=False, include_url=False)) from None
