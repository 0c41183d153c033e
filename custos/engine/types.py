"""Domain types of the model engine: conversation turns, sampling parameters, results and errors.

Nothing here imports torch or transformers, so the server and its tests can use these types cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "stop_sequence", "cancelled"]
"""Why generation ended.

``stop``: the model ended its answer (end-of-sequence token, or the prompt format's end-of-turn marker);
``length``: ``max_new_tokens`` reached; ``stop_sequence``: one of the request's stop strings appeared;
``cancelled``: the caller's ``cancelled`` callback returned true.
"""


class EngineError(Exception):
    """Base of the engine's errors."""


class ModelCacheError(EngineError):
    """The model cache is missing, incomplete or altered; the message names the path and the fix."""


class InvalidSamplingParams(EngineError, ValueError):
    """A sampling parameter is out of range; ``field`` names it so the server can report it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class PromptTooLong(EngineError):
    """The prompt plus the requested new tokens do not fit the model's context.

    The message carries only counts, so it is safe to return to a caller.
    """

    def __init__(self, *, prompt_tokens: int, max_new_tokens: int, context_tokens: int) -> None:
        super().__init__(
            f"the prompt is {prompt_tokens} tokens; with max_new_tokens={max_new_tokens} it exceeds "
            f"the model's context of {context_tokens} tokens"
        )
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context_tokens = context_tokens


class EngineBusy(EngineError):
    """The engine's request queue is full; the caller may retry later. The message carries only counts."""

    def __init__(self, *, queued: int, limit: int) -> None:
        super().__init__(f"the model queue is full ({queued} of {limit} requests waiting); retry later")
        self.queued = queued
        self.limit = limit


class EngineUnavailable(EngineError):
    """The engine cannot answer now (an upstream server unreachable, failing or sending a broken stream).

    ``reason`` is a fixed token for the audit record (``upstream_unreachable``, ``upstream_http_503``, ...);
    the message names no request text and no upstream reply text. The caller may retry after
    ``retry_after_s``.
    """

    def __init__(self, message: str, *, reason: str, retry_after_s: float = 1.0) -> None:
        super().__init__(f"{message}; retry after {retry_after_s:g} s")
        self.reason = reason
        self.retry_after_s = retry_after_s


class EngineTimeout(EngineError):
    """The engine did not answer within its own time limit (an upstream's ``upstream_timeout_s``)."""

    def __init__(self, message: str, *, reason: str, retry_after_s: float = 1.0) -> None:
        super().__init__(f"{message}; retry after {retry_after_s:g} s")
        self.reason = reason
        self.retry_after_s = retry_after_s


class EngineUnsupported(EngineError):
    """The configured engine cannot do what the call needs; ``setting`` names the setting that chose it."""

    def __init__(self, message: str, *, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class EngineRejected(EngineError):
    """An upstream engine refused the request as invalid (HTTP 400/413/422): most often, a prompt too long."""

    def __init__(self, status: int, context_tokens: int | None) -> None:
        limit = f" of {context_tokens} tokens" if context_tokens else ""
        super().__init__(
            f"the upstream engine refused the request (HTTP {status}); the prompt plus max_new_tokens may "
            f"exceed its context{limit}"
        )
        self.status = status
        self.reason = f"upstream_http_{status}"


@dataclass(frozen=True)
class ChatTurn:
    """One message of a conversation, already anonymized when it reaches the engine."""

    role: Role
    content: str


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` means greedy; ``seed`` makes sampling reproducible.

    Invalid values raise :class:`InvalidSamplingParams` at construction.
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_new_tokens: int = 0
    """Tokens generated before an end-of-sequence token may end the answer (benchmarks force a count)."""
    cache_scope: str | None = None
    """Who may reuse this prompt's KV cache: a keyed digest of the caller and the conversation, computed
    by the flow (see ``engine.prefix``); None: the prompt is not kept for a next turn."""

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1:
            raise InvalidSamplingParams("max_new_tokens", "must be at least 1")
        if isinstance(self.min_new_tokens, bool) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise InvalidSamplingParams("min_new_tokens", "must be between 0 and max_new_tokens")
        if self.cache_scope is not None and not (isinstance(self.cache_scope, str) and self.cache_scope):
            raise InvalidSamplingParams("cache_scope", "must be a non-empty string or None")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidSamplingParams("temperature", "must be a finite number >= 0")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise InvalidSamplingParams("top_p", "must be in (0, 1]")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise InvalidSamplingParams("seed", "must be in [0, 2**64)")
        if not isinstance(self.stop, tuple):
            raise InvalidSamplingParams("stop", "must be a tuple of strings")
        if any(not s for s in self.stop):
            raise InvalidSamplingParams("stop", "stop sequences must not be empty")

    @property
    def greedy(self) -> bool:
        """Whether tokens are chosen by argmax rather than sampled."""
        return self.temperature == 0.0


@dataclass(frozen=True)
class ModelInfo:
    """What the audit log records about the model that produced an answer."""

    name: str
    source_sha256: str
    cache_digest: str
    quantization: str
    precision: str
    device: str
    prompt_format: str
    prompt_format_version: int
    prompt_format_sha256: str
    upstream: dict[str, object] | None = None
    """For an engine served by another server: its URL, served model and what it says of the model.

    Such weights were never hashed here: ``source_sha256`` and ``cache_digest`` are empty, and the audit
    record says so in ``weights_hashed_locally``.
    """

    def to_audit(self) -> dict[str, object]:
        """The audit record's model fields (plain JSON types, stable keys)."""
        if self.upstream is not None:
            return {
                "name": self.name,
                "weights_hashed_locally": False,
                "weights": "served by the upstream server; not hashed or verified by Custos",
                "source_sha256": self.source_sha256,
                "cache_digest": self.cache_digest,
                "device": self.device,
                "prompt_format": self.prompt_format,
                "prompt_format_version": self.prompt_format_version,
                "prompt_format_sha256": self.prompt_format_sha256,
                "upstream": dict(self.upstream),
            }
        return {
            "name": self.name,
            "source_sha256": self.source_sha256,
            "cache_digest": self.cache_digest,
            "quantization": self.quantization,
            "precision": self.precision,
            "device": self.device,
            "prompt_format": self.prompt_format,
            "prompt_format_version": self.prompt_format_version,
            "prompt_format_sha256": self.prompt_format_sha256,
        }


@dataclass(frozen=True)
class GenerationResult:
    """The outcome of one generation.

    ``text`` is exactly the concatenation of the deltas passed to ``on_text``. ``completion_tokens``
    counts every token the model produced (including an end-of-sequence token or the tokens of a stop
    sequence); the log-probs are those tokens' natural-log probabilities under the model's unmodified
    distribution, ``None`` when no token was produced.
    """

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    mean_logprob: float | None
    min_logprob: float | None
    prefill_seconds: float
    decode_seconds: float
