"""An engine over an OpenAI-compatible server (vLLM, TGI, SGLang, llama.cpp's server, Ollama).

Custos renders the prompt itself (the plain customer-service format of :mod:`.prompt`) and sends it to the
upstream's ``/v1/completions``: streamed over server-sent events with the sampled tokens' log-probs, so the
confidence fields mean what they mean with the local engine. Classify scores labels through prompt
log-probs (``echo`` with ``logprobs``) where the upstream offers them.

The flows call :meth:`UpstreamEngine.generate` from a worker thread and it blocks, like the local engine;
the HTTP work runs on one event loop thread of the engine's own with a pooled keep-alive ``httpx``
client (HTTP/2 where a TLS upstream offers it), so a cancelled call or a passed deadline cancels its
request task and the upstream stream is closed at once. At most ``max_in_flight`` requests are sent
together; up to ``max_queue`` more wait for a slot, and beyond that a request gets :class:`EngineBusy`.

Faults never carry upstream text or request text: an unreachable, failing (5xx) or misbehaving upstream,
or a malformed or cut-off stream, raises :class:`EngineUnavailable`; silence longer than ``timeout_s``
raises :class:`EngineTimeout`; each names a fixed ``reason`` for the audit record.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from custos.engine.base import Engine
from custos.engine.prompt import PLAIN_CUSTOMER_SERVICE_FORMAT, PromptFormat
from custos.engine.scoring import ContinuationScores
from custos.engine.streaming import TextStream
from custos.engine.types import (
    ChatTurn,
    EngineBusy,
    EngineError,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
    EngineUnsupported,
    GenerationResult,
    InvalidSamplingParams,
    ModelInfo,
    SamplingParams,
)
from custos.engine.upstream_wire import (
    BACKEND_SETTING,
    check_base_url,
)
from custos.engine.upstream_wire import (
    Chunks as _Chunks,
)
from custos.engine.upstream_wire import (
    Progress as _Progress,
)
from custos.engine.upstream_wire import (
    continuation_logprob as _continuation_logprob,
)
from custos.engine.upstream_wire import (
    finish_reason as _finish_reason,
)
from custos.engine.upstream_wire import (
    json_body as _json_body,
)
from custos.engine.upstream_wire import (
    malformed as _malformed,
)
from custos.engine.upstream_wire import (
    no_prompt_logprobs as _no_prompt_logprobs,
)
from custos.engine.upstream_wire import (
    reason_of as _reason,
)
from custos.engine.upstream_wire import (
    retry_after as _retry_after,
)
from custos.engine.upstream_wire import (
    timeout_error as _timeout,
)
from custos.engine.upstream_wire import (
    unreachable as _unreachable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_POLL_S = 0.02  # how often a waiting worker checks its caller's ``cancelled``
_MAX_SEED = 2**63 - 1  # vLLM and most servers take a signed 64-bit seed
#: What of ``/v1/models``' entry for the served model goes into the audit record (vLLM's fields).
MODEL_CARD_FIELDS = ("id", "object", "owned_by", "root", "parent", "max_model_len")


class UpstreamEngine(Engine):
    """Generates and scores on an OpenAI-compatible server; see the module docstring."""

    readiness_interval_s: float | None

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        ca_file: Path | None = None,
        timeout_s: float = 60.0,
        max_in_flight: int = 16,
        max_queue: int = 32,
        readiness_interval_s: float = 5.0,
        prompt_format: PromptFormat = PLAIN_CUSTOMER_SERVICE_FORMAT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = check_base_url(base_url)
        if not model:
            raise EngineError("upstream_model must name the model the upstream serves")
        if max_in_flight < 1 or max_queue < 0 or not timeout_s > 0:
            raise EngineError("upstream_max_in_flight must be >= 1, max_queue >= 0, upstream_timeout_s > 0")
        self.model = model
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.concurrency = max_in_flight + max_queue
        self.readiness_interval_s = readiness_interval_s
        self._api_key = api_key
        self._ca_file = ca_file
        self._transport = transport
        self._format = prompt_format
        self._slots = threading.Semaphore(max_in_flight)
        self._count_lock = threading.Lock()
        self._outstanding = 0
        self._loop_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self.context_tokens: int | None = None
        self.ready = False
        self.info = self._info(None)

    # ---- identity and readiness -----------------------------------------------------------------

    def _info(self, card: dict[str, Any] | None) -> ModelInfo:
        fmt = self._format
        return ModelInfo(
            name=self.model,
            source_sha256="",
            cache_digest="",
            quantization="unknown",
            precision="unknown",
            device="upstream",
            prompt_format=fmt.id,
            prompt_format_version=fmt.version,
            prompt_format_sha256=fmt.sha256,
            upstream={"base_url": self.base_url, "served_model": self.model, "model_card": card},
        )

    def check_ready(self) -> bool:
        """Ask ``/models`` whether the served model is listed; updates :attr:`info` with its card."""
        try:
            card = self._run(self._model_card(), timeout=self.timeout_s + 1)
        except EngineError as exc:
            if self.ready:
                log.warning("upstream engine not ready", extra={"fields": {"reason": _reason(exc)}})
            self.ready = False
            return False
        if card is None:
            if self.ready or self.info.upstream is None or self.info.upstream.get("model_card") is None:
                log.warning(
                    "upstream engine does not list the configured model",
                    extra={"fields": {"upstream_model": self.model}},
                )
            self.ready = False
            return False
        if self.info.upstream is None or self.info.upstream.get("model_card") != card:
            self.info = self._info(card)
        max_len = card.get("max_model_len")
        self.context_tokens = max_len if isinstance(max_len, int) and max_len > 0 else None
        self.ready = True
        return True

    async def _model_card(self) -> dict[str, Any] | None:
        response = await self._request("GET", "/models")
        body = _json_body(response)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise EngineUnavailable(
                "the upstream's model list is malformed", reason="upstream_malformed_reply"
            )
        for entry in data:
            if isinstance(entry, dict) and entry.get("id") == self.model:
                return {
                    k: entry[k]
                    for k in MODEL_CARD_FIELDS
                    if k in entry and isinstance(entry[k], str | int | float | bool | type(None))
                }
        return None

    # ---- the event loop and the client ----------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="custos-upstream", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def _make_client(self) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = True
        if self._ca_file is not None:
            verify = ssl.create_default_context(cafile=str(self._ca_file))
        headers = {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = httpx.Limits(
            max_connections=self.max_in_flight + 2,  # the readiness probe and a count_tokens beside
            max_keepalive_connections=self.max_in_flight + 2,
            keepalive_expiry=60.0,
        )
        kwargs: dict[str, Any] = {}
        if self._transport is not None:
            kwargs["transport"] = self._transport
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            verify=verify,
            http2=True,
            limits=limits,
            timeout=httpx.Timeout(self.timeout_s),
            trust_env=False,
            **kwargs,
        )

    def _client_now(self) -> httpx.AsyncClient:
        """The pooled client (made on the loop thread, on first use)."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._ensure_loop())

    def _run(self, coro: Coroutine[Any, Any, T], *, timeout: float) -> T:
        future = self._submit(coro)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise EngineTimeout(
                "the upstream engine did not answer in time", reason="upstream_timeout"
            ) from None

    def close(self) -> None:
        """Close the pooled connections and stop the loop thread; the next request starts them again."""
        with self._loop_lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None:
            return

        async def shutdown() -> None:
            if self._client is not None:
                await self._client.aclose()
                self._client = None

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        loop.close()

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            response = await self._client_now().request(method, path, json=body)
        except httpx.TimeoutException as exc:
            raise _timeout(exc) from None
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from None
        self._check_status(response)
        return response

    def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        if status in (400, 413, 422):
            raise EngineRejected(status, self.context_tokens)
        retry = _retry_after(response)
        log.warning("upstream engine answered HTTP %d", status)
        raise EngineUnavailable(
            f"the upstream engine answered HTTP {status}",
            reason=f"upstream_http_{status}",
            retry_after_s=retry,
        )

    # ---- the Engine interface -------------------------------------------------------------------

    def render_prompt(self, turns: Sequence[ChatTurn]) -> str:
        """The prompt text sent to the upstream for ``turns``."""
        return self._format.render(turns)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the upstream's tokenizer (vLLM's ``/tokenize``), else EngineUnsupported."""
        root = self.base_url.removesuffix("/v1")

        async def tokenize() -> int:
            try:
                response = await self._client_now().post(
                    f"{root}/tokenize",
                    json={"model": self.model, "prompt": text, "add_special_tokens": False},
                )
            except httpx.TimeoutException as exc:
                raise _timeout(exc) from None
            except httpx.HTTPError as exc:
                raise _unreachable(exc) from None
            if response.status_code in (404, 405, 501):
                raise EngineUnsupported(
                    f"counting tokens needs the upstream's /tokenize, which it does not offer "
                    f"({BACKEND_SETTING} = 'openai')",
                    setting=BACKEND_SETTING,
                )
            self._check_status(response)
            count = _json_body(response).get("count")
            if not isinstance(count, int):
                raise EngineUnavailable(
                    "the upstream's /tokenize reply is malformed", reason="upstream_malformed_reply"
                )
            return count

        return self._run(tokenize(), timeout=self.timeout_s + 1)

    def _acquire(self, cancelled: Callable[[], bool]) -> bool:
        with self._count_lock:
            if self._outstanding >= self.max_in_flight + self.max_queue:
                raise EngineBusy(queued=max(0, self._outstanding - self.max_in_flight), limit=self.max_queue)
            self._outstanding += 1
        while not self._slots.acquire(timeout=_POLL_S):
            if cancelled():
                self._release_count()
                return False
        return True

    def _release_count(self) -> None:
        with self._count_lock:
            self._outstanding -= 1

    def _release(self) -> None:
        self._slots.release()
        self._release_count()

    @property
    def in_flight(self) -> int:
        """Requests sent or waiting for a slot now."""
        return self._outstanding

    def generate(
        self,
        turns: Sequence[ChatTurn],
        params: SamplingParams,
        *,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Stream the answer from ``/v1/completions``; see :meth:`Engine.generate` for the contract.

        A ``cancelled`` that turns true (the caller left, or its deadline passed) cancels the request task,
        which closes the upstream stream, and ends with finish reason ``cancelled``.
        """
        is_cancelled = cancelled or (lambda: False)
        prompt = self._format.render(turns)
        chunks = _Chunks()
        stops = (*params.stop, *self._format.stop)
        progress = _Progress(stream=TextStream(chunks.decode, stops), on_text=on_text, user_stops=params.stop)
        if not self._acquire(is_cancelled):
            return progress.result("cancelled")
        try:
            future = self._submit(self._stream(prompt, params, stops, progress, chunks))
            while True:
                try:
                    return future.result(timeout=_POLL_S)
                except concurrent.futures.TimeoutError:
                    if is_cancelled():
                        future.cancel()
                        progress.closed.wait(timeout=5)
                        self._flush(progress)
                        return progress.result("cancelled")
                except concurrent.futures.CancelledError:
                    progress.closed.wait(timeout=5)
                    return progress.result("cancelled")
        finally:
            self._release()

    def _flush(self, progress: _Progress) -> None:
        delta = progress.stream.finish()
        if delta and progress.on_text is not None:
            progress.on_text(delta)

    async def _stream(
        self,
        prompt: str,
        params: SamplingParams,
        stops: tuple[str, ...],
        progress: _Progress,
        chunks: _Chunks,
    ) -> GenerationResult:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
            "logprobs": 1,
        }
        if stops:
            body["stop"] = list(stops)
        if params.seed is not None:
            body["seed"] = params.seed & _MAX_SEED
        upstream_reason: str | None = None
        done = False
        try:
            async with self._client_now().stream("POST", "/completions", json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._check_status(response)
                async for line in response.aiter_lines():
                    if not line or line.startswith(":"):
                        continue
                    if not line.startswith("data:"):
                        continue  # "event:", "id:", "retry:" fields carry nothing we use
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    upstream_reason = self._event(data, progress, chunks) or upstream_reason
                    if progress.stream.finished:
                        done = True  # a stop string found here: the rest is not needed
                        break
        except httpx.TimeoutException as exc:
            raise _timeout(exc) from None
        except httpx.HTTPError as exc:
            raise _unreachable(exc, cut=progress.first_at is not None) from None
        finally:
            progress.closed.set()
        if not done and upstream_reason is None:
            raise EngineUnavailable("the upstream engine's stream ended early", reason="upstream_stream_cut")
        self._flush(progress)
        return progress.result(_finish_reason(upstream_reason))

    def _event(self, data: str, progress: _Progress, chunks: _Chunks) -> str | None:
        """Apply one SSE ``data`` event; returns the upstream's finish reason if it gives one."""
        try:
            event = json.loads(data)
        except ValueError:
            raise _malformed() from None
        if not isinstance(event, dict):
            raise _malformed()
        if "error" in event:
            log.warning("upstream engine sent an error event")
            raise EngineUnavailable(
                "the upstream engine failed during the answer", reason="upstream_error_event"
            )
        usage = event.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("prompt_tokens"), int):
                progress.prompt_tokens = usage["prompt_tokens"]
            if isinstance(usage.get("completion_tokens"), int):
                progress.tokens = usage["completion_tokens"]
        choices = event.get("choices")
        if not isinstance(choices, list):
            raise _malformed()
        reason: str | None = None
        for choice in choices:
            if not isinstance(choice, dict) or not isinstance(choice.get("text", ""), str):
                raise _malformed()
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict):
                values = logprobs.get("token_logprobs") or []
                if not isinstance(values, list):
                    raise _malformed()
                for value in values:
                    if isinstance(value, int | float) and math.isfinite(value):
                        progress.logprobs.append(float(value))
            elif logprobs is not None:
                raise _malformed()
            text = choice.get("text", "")
            if text and not progress.stream.finished:
                chunks.parts.append(text)
                self._push(progress)
            finish = choice.get("finish_reason")
            if finish is not None:
                if not isinstance(finish, str):
                    raise _malformed()
                stop_reason = choice.get("stop_reason")
                if finish == "stop" and isinstance(stop_reason, str) and stop_reason in progress.user_stops:
                    reason = "stop_sequence"
                else:
                    reason = finish
        return reason

    def _push(self, progress: _Progress) -> None:
        if progress.first_at is None:
            progress.first_at = time.perf_counter()
        delta, match = progress.stream.push(len(progress.stream.token_ids))
        if delta and progress.on_text is not None:
            progress.on_text(delta)
        if match is not None:
            progress.finish_reason = "stop_sequence" if match.stop in progress.user_stops else "stop"

    # ---- Classify -------------------------------------------------------------------------------

    def score_continuations(self, prefix: str, continuations: Sequence[str]) -> ContinuationScores:
        """Summed prompt log-probs of each continuation after ``prefix`` (one request: echo + logprobs).

        An upstream that does not return prompt log-probs raises EngineUnsupported naming ``engine_backend``.
        """
        if not continuations:
            raise InvalidSamplingParams("labels", "at least one continuation is needed")
        started = time.perf_counter()
        if not self._acquire(lambda: False):
            raise EngineBusy(queued=0, limit=self.max_queue)  # pragma: no cover - never cancelled
        try:
            logprobs, tokens, prefix_tokens = self._run(
                self._score(prefix, list(continuations)), timeout=self.timeout_s + 1
            )
        finally:
            self._release()
        return ContinuationScores(
            logprobs=tuple(logprobs),
            tokens=tuple(tokens),
            prefix_tokens=prefix_tokens,
            seconds=time.perf_counter() - started,
        )

    async def _score(self, prefix: str, continuations: list[str]) -> tuple[list[float], list[int], int]:
        body = {
            "model": self.model,
            "prompt": [prefix + c for c in continuations],
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "logprobs": 1,
        }
        try:
            response = await self._request("POST", "/completions", body)
        except EngineRejected:
            raise _no_prompt_logprobs() from None
        payload = _json_body(response)
        choices = payload.get("choices")
        if not isinstance(choices, list) or len(choices) != len(continuations):
            raise _malformed()
        by_index = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        sums: list[float] = []
        counts: list[int] = []
        prefix_tokens = 0
        for choice, continuation in zip(by_index, continuations, strict=True):
            total, count, before = _continuation_logprob(choice, len(prefix), len(prefix + continuation))
            sums.append(total)
            counts.append(count)
            prefix_tokens = max(prefix_tokens, before)
        return sums, counts, prefix_tokens
