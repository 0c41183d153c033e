"""Domain request and response types of the pipeline; the servicers convert protobuf to and from these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from custos.server.engine.types import ChatTurn, FinishReason, SamplingParams


@dataclass(frozen=True)
class Caller:
    """Who is calling: the authenticated principal and where the call came from."""

    principal: str
    peer: str
    role: str = "unauthenticated"
    roles: tuple[str, ...] = ()
    permissions: frozenset[str] = frozenset()
    # SHA-256 of the client certificate when the caller authenticated with mutual TLS.
    fingerprint: str | None = None


@dataclass(frozen=True)
class GenerateCall:
    """One Generate / GenerateStream request, validated."""

    conversation_id: str
    turns: tuple[ChatTurn, ...]
    params: SamplingParams
    subject_id: str | None = None
    reidentify: bool = False
    purpose: str | None = None
    idempotency_key: str | None = None
    #: Privacy policy of the request: "mask" (default) or "block" (refuse when block types are present).
    privacy_mode: str = "mask"
    #: Entity types that block the request in "block" mode; empty: the configured ones.
    block_entities: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerateOutcome:
    """What the caller receives for a Generate call."""

    request_id: str
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    redaction: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamStarted:
    """First event of a stream, sent once the request record is durable."""

    request_id: str
    redaction: Mapping[str, int]


@dataclass(frozen=True)
class StreamDelta:
    """A piece of answer text, safe to send (no half placeholder)."""

    text: str


@dataclass(frozen=True)
class StreamFinished:
    """Last event of a stream."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


StreamEvent = StreamStarted | StreamDelta | StreamFinished
