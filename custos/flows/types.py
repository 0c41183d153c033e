"""Domain request and response types of the flows; every edge converts its messages to and from these."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from custos.engine.types import ChatTurn, FinishReason, SamplingParams
from custos.privacy.pseudonymize import Finding
from custos.tasks.feedback import Period

#: Privacy policy of a request: mask personal data, or refuse the request when block types are present.
PrivacyMode = Literal["mask", "block"]


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
    privacy_mode: PrivacyMode = "mask"
    #: Entity types that block the request in "block" mode; empty: the configured ones.
    block_entities: tuple[str, ...] = ()
    #: Task template id; ``None`` for free-form generation from ``turns``.
    task: str | None = None
    #: The task's variables as (name, value) pairs, sorted by name; anonymized like messages.
    variables: tuple[tuple[str, str], ...] = ()

    def privacy_texts(self) -> list[str]:
        """Everything the privacy step anonymizes: message contents, then variable values."""
        return [*(t.content for t in self.turns), *(value for _, value in self.variables)]


@dataclass(frozen=True)
class TemplateRef:
    """The task template a Generate call was answered with."""

    id: str
    version: int
    sha256: str


@dataclass(frozen=True)
class GenerateOutcome:
    """What the caller receives for a Generate call."""

    request_id: str
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    redaction: Mapping[str, int] = field(default_factory=dict)
    #: The task template, for calls with a task (not part of an idempotently stored answer).
    template: TemplateRef | None = None


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


@dataclass(frozen=True)
class ClassifyCall:
    """One Classify request, validated; ``request`` carries the message as one user turn for step 1."""

    request: GenerateCall
    label_set: str | None
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelScore:
    """One label of a Classify answer."""

    label: str
    probability: float
    logprob: float


@dataclass(frozen=True)
class ClassifyOutcome:
    """What the caller receives for a Classify call; ``distribution`` is most probable first."""

    request_id: str
    label: str
    distribution: tuple[LabelScore, ...]
    calibrated: bool
    label_set: str
    label_set_version: int
    redaction: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FeedbackCall:
    """One Feedback.Submit request, validated."""

    request_id: str
    rating: int
    comment: str | None = None


@dataclass(frozen=True)
class FeedbackOutcome:
    """The stored feedback: its id and the comment as stored (anonymized)."""

    feedback_id: str
    request_id: str
    comment: str | None


@dataclass(frozen=True)
class SatisfactionQuery:
    """One Feedback.Satisfaction request, validated."""

    period: Period
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class AnonymizeOutcome:
    """What Anonymize returns: the messages as the model gets them, the findings, the exact prompt."""

    request_id: str
    texts: list[str]
    findings: list[Finding]
    prompt: str

    def counts(self) -> dict[str, int]:
        """Entity type -> findings."""
        return dict(Counter(f.entity_type for f in self.findings))
