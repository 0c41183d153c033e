"""The OpenAI wire format as the upstream engine reads it: base URLs, stream progress, log-probs, faults.

Every fault built here carries a fixed message and ``reason`` word, never upstream or request text.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from custos.engine.streaming import TextStream
from custos.engine.types import (
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    EngineUnsupported,
    FinishReason,
    GenerationResult,
)

log = logging.getLogger("custos.engine.upstream")

RETRY_AFTER_S = 1.0
BACKEND_SETTING = "engine_backend"


def check_base_url(value: str, field: str = "upstream_base_url") -> str:
    """``http(s)://host[:port][/path]``, no credentials, query or fragment; ValueError naming ``field``."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{field} must be an http:// or https:// URL with a host, got {value!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{field} must not carry credentials; put the API key in upstream_api_key_file")
    if parts.query or parts.fragment:
        raise ValueError(f"{field} must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError(f"{field} has an invalid port") from None
    return value.rstrip("/")


@dataclass
class Progress:
    """What one generation produced so far (kept outside the request task, so a cancel keeps it)."""

    stream: TextStream
    on_text: Callable[[str], None] | None
    user_stops: tuple[str, ...]
    logprobs: list[float] = field(default_factory=list)
    tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: FinishReason | None = None
    started: float = field(default_factory=time.perf_counter)
    first_at: float | None = None
    closed: threading.Event = field(default_factory=threading.Event)

    def result(self, reason: FinishReason) -> GenerationResult:
        """The generation so far as a result, ending for ``reason`` unless the upstream said why."""
        if self.finish_reason is None:
            self.finish_reason = reason
        now = time.perf_counter()
        first = self.first_at if self.first_at is not None else now
        return GenerationResult(
            text=self.stream.text,
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=max(self.tokens, len(self.logprobs)),
            mean_logprob=sum(self.logprobs) / len(self.logprobs) if self.logprobs else None,
            min_logprob=min(self.logprobs) if self.logprobs else None,
            prefill_seconds=first - self.started,
            decode_seconds=now - first,
        )


class Chunks:
    """The raw text received, as the ``decode`` of a :class:`TextStream` (one "token" per SSE chunk)."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def decode(self, ids: list[int]) -> str:
        """The text of the first ``len(ids)`` chunks."""
        return "".join(self.parts[: len(ids)])


def continuation_logprob(choice: object, prefix_chars: int, prompt_chars: int) -> tuple[float, int, int]:
    """(summed log-prob, count) of the echoed prompt's tokens ending after ``prefix_chars``; tokens before.

    The last entry is the one generated token (``max_tokens = 1``); the prompt's tokens come before it.
    Offsets count the text of every token, a BOS token's too (vLLM's ``<bos>``), so they are shifted by
    where the generated token starts compared with the prompt's length.
    """
    if not isinstance(choice, dict):
        raise malformed()
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        raise no_prompt_logprobs()
    values = logprobs.get("token_logprobs")
    offsets = logprobs.get("text_offset")
    if not isinstance(values, list) or not isinstance(offsets, list) or len(values) != len(offsets):
        raise no_prompt_logprobs()
    if len(values) < 2 or not all(isinstance(o, int) for o in offsets):
        raise no_prompt_logprobs()
    shift = offsets[-1] - prompt_chars
    total, count, before = 0.0, 0, 0
    for i in range(len(values) - 1):
        if offsets[i + 1] - shift <= prefix_chars:
            before += 1
            continue
        value = values[i]
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise no_prompt_logprobs()
        total += float(value)
        count += 1
    if count == 0:
        raise malformed()
    return total, count, before


def finish_reason(upstream: str | None) -> FinishReason:
    """The upstream's ``finish_reason`` as Custos names it."""
    if upstream == "length":
        return "length"
    if upstream == "stop_sequence":
        return "stop_sequence"
    return "stop"


def json_body(response: httpx.Response) -> dict[str, Any]:
    """The reply's JSON object; anything else is a malformed reply."""
    try:
        body = response.json()
    except ValueError:
        raise malformed() from None
    if not isinstance(body, dict):
        raise malformed()
    return body


def reason_of(exc: BaseException) -> str:
    """The fixed reason word of an engine fault (its class name when it has none)."""
    return str(getattr(exc, "reason", type(exc).__name__))


def retry_after(response: httpx.Response) -> float:
    """Seconds the upstream asks a client to wait (its ``retry-after``, bounded to 0.1-300 s)."""
    try:
        return max(0.1, min(300.0, float(response.headers.get("retry-after", RETRY_AFTER_S))))
    except ValueError:
        return RETRY_AFTER_S


def malformed() -> EngineUnavailable:
    """The fault of a reply that is not what the OpenAI API sends."""
    log.warning("upstream engine sent a malformed reply")
    return EngineUnavailable("the upstream engine sent a malformed reply", reason="upstream_malformed_stream")


def no_prompt_logprobs() -> EngineUnsupported:
    """The fault of an upstream without prompt log-probs, naming the setting."""
    return EngineUnsupported(
        f"Classify needs prompt log-probs (echo with logprobs), which the upstream engine does not offer "
        f"({BACKEND_SETTING} = 'openai')",
        setting=BACKEND_SETTING,
    )


def timeout_error(exc: httpx.TimeoutException) -> EngineError:
    """A connect or pool timeout as unreachable, any other as a deadline."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return EngineUnavailable("the upstream engine is unreachable", reason="upstream_unreachable")
    log.warning("upstream engine timed out", extra={"fields": {"error": type(exc).__name__}})
    return EngineTimeout("the upstream engine did not answer in time", reason="upstream_timeout")


def unreachable(exc: httpx.HTTPError, *, cut: bool = False) -> EngineUnavailable:
    """A connection fault: a cut stream or an unreachable upstream."""
    log.warning("upstream engine connection failed", extra={"fields": {"error": type(exc).__name__}})
    if cut or isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return EngineUnavailable("the upstream engine's stream ended early", reason="upstream_stream_cut")
    return EngineUnavailable("the upstream engine is unreachable", reason="upstream_unreachable")
