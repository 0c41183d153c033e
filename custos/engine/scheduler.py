"""Continuous batching: requests join and leave one running batch between decode steps.

One scheduler thread owns the model. Each iteration it drops cancelled requests (and those past their
deadline: the caller's ``cancelled`` callback covers both), runs at most one prefill chunk of a newcomer,
then one decode step for the whole running batch. So a cancelled request stops within one step, and a long
prompt stalls the running streams for at most one chunk per step.

The running batch keeps one KV cache (transformers' ``DynamicCache`` with full-attention layers) whose rows
are left-padded to a common length; the 2-D attention mask hides the padding, per-row position ids keep
rotary positions exact, and sliding-window layers get their window from the attention mask. A newcomer is
prefilled into its own cache, then padded and concatenated into the batch; a finished row is removed by
index, and columns that only padding occupies are trimmed.

``generate`` keeps the blocking :class:`~custos.engine.base.Engine` contract: the calling worker
thread waits on an event while the scheduler thread produces its tokens.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from custos.engine.base import Engine
from custos.engine.local import Generation, TransformersEngine
from custos.engine.prefix import HEAD_SCOPE, PrefixCache, common_prefix, snapshot
from custos.engine.sampling import choose_token
from custos.engine.types import (
    ChatTurn,
    EngineBusy,
    EngineError,
    GenerationResult,
    SamplingParams,
)

if TYPE_CHECKING:
    from custos.engine.metrics import EngineMetrics
    from custos.engine.scoring import ContinuationScores


@dataclass
class _Request:
    """One submitted generation and its progress through the scheduler."""

    state: Generation
    cancelled: Callable[[], bool]
    submitted: float
    done: threading.Event = field(default_factory=threading.Event)
    result: GenerationResult | None = None
    error: BaseException | None = None
    prefilled: int = 0  # prompt tokens already in ``cache``
    cache: Any = None  # the request's own cache while it is prefilled
    started: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    last_token: int = 0
    head_stop: int = 0  # prefill pauses here to keep the format head's cache (0: no pause)


@dataclass
class _Batch:
    """The running batch: one left-padded KV cache, its attention mask, and the requests in row order."""

    cache: Any = None
    mask: torch.Tensor | None = None  # [rows, columns] of 0/1
    rows: list[_Request] = field(default_factory=list)


def _pad_left(tensor: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    if columns == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class BatchingEngine(Engine):
    """A TransformersEngine behind a continuous-batching scheduler (see the module docstring).

    ``max_batch`` sequences decode together; up to ``max_queue`` more wait, and a request beyond that
    raises :class:`EngineBusy` at once. ``prefill_chunk`` bounds the prompt tokens run between two decode
    steps of the running batch. ``prompt_cache_bytes`` > 0 keeps the prompt format's head and, per
    ``SamplingParams.cache_scope``, each conversation's last prompt as KV caches to start from (an LRU
    of that many bytes, see :mod:`.prefix`).
    """

    def __init__(
        self,
        engine: TransformersEngine,
        *,
        max_batch: int = 8,
        max_queue: int = 32,
        prefill_chunk: int = 256,
        prompt_cache_bytes: int = 0,
    ) -> None:
        if max_batch < 1 or max_queue < 0 or prefill_chunk < 1:
            raise EngineError("max_batch and prefill_chunk must be at least 1, max_queue at least 0")
        if prompt_cache_bytes < 0:
            raise EngineError("prompt_cache_bytes must not be negative")
        self.prompt_cache = PrefixCache(prompt_cache_bytes) if prompt_cache_bytes else None
        self.head_ids: tuple[int, ...] = self._format_head(engine) if self.prompt_cache is not None else ()
        self.inner = engine
        self.info = engine.info
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.concurrency = max_batch + max_queue
        self._metrics: EngineMetrics | None = None
        self._cv = threading.Condition()
        self._waiting: collections.deque[_Request] = collections.deque()
        self._prefilling: list[_Request] = []
        self._batch = _Batch()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.steps = 0
        """Decode steps run so far (for tests and benchmarks)."""

    @staticmethod
    def _format_head(engine: TransformersEngine) -> tuple[int, ...]:
        """The tokens every prompt of the format starts with (common to unlike conversations)."""
        samples = [
            (ChatTurn("user", "a"),),
            (ChatTurn("user", "Zz 9"),),
            (ChatTurn("system", "b"), ChatTurn("user", "c")),
            (ChatTurn("assistant", "d"), ChatTurn("user", "e")),
        ]
        encoded = [engine.encode_prompt(t) for t in samples]
        n = min(common_prefix(encoded[0], other) for other in encoded[1:])
        return tuple(encoded[0][:n])

    # ---- the Engine interface -------------------------------------------------------------------

    def render_prompt(self, turns: Sequence[ChatTurn]) -> str:
        """The prompt text for ``turns``."""
        return self.inner.render_prompt(turns)

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as content."""
        return self.inner.count_tokens(text)

    def count_prompt_tokens(self, turns: Sequence[ChatTurn]) -> int:
        """Tokens of the full prompt for ``turns``."""
        return self.inner.count_prompt_tokens(turns)

    def score_continuations(self, prefix: str, continuations: Sequence[str]) -> ContinuationScores:
        """Score on the inner engine (one short forward pass beside the decode loop, not queued)."""
        return self.inner.score_continuations(prefix, continuations)

    def observe(self, metrics: EngineMetrics) -> None:
        """Report queue depth and wait, time to first token, inter-token latency and tokens/s."""
        self._metrics = metrics

    def generate(
        self,
        turns: Sequence[ChatTurn],
        params: SamplingParams,
        *,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Queue the request and block until the scheduler finished it; EngineBusy if the queue is full."""
        request = self.submit(turns, params, on_text=on_text, cancelled=cancelled)
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def submit(
        self,
        turns: Sequence[ChatTurn],
        params: SamplingParams,
        *,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> _Request:
        """Queue a request without waiting; its ``done`` event is set when it has finished."""
        state = self.inner.new_generation(turns, params, on_text)
        request = _Request(state=state, cancelled=cancelled or (lambda: False), submitted=time.perf_counter())
        with self._cv:
            if self._closing:
                raise EngineError("the engine is closed")
            if self._outstanding() >= self.max_batch + self.max_queue:
                raise EngineBusy(queued=max(0, self._outstanding() - self.max_batch), limit=self.max_queue)
            self._waiting.append(request)
            self._set_gauges()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="custos-scheduler", daemon=True)
                self._thread.start()
            self._cv.notify()
        return request

    #: The server asks :meth:`check_ready` this often; Inference's health follows the answer.
    readiness_interval_s: float | None = 5.0

    def check_ready(self) -> bool:
        """False while closing, or when the scheduler thread died (nothing would ever answer)."""
        with self._cv:
            return not self._closing and (self._thread is None or self._thread.is_alive())

    def close(self) -> None:
        """Stop the scheduler thread after the requests it holds have finished.

        Requests submitted meanwhile are refused; afterwards the next request starts a new thread, so an
        engine shared by several servers (tests build the model once) stays usable after one stops.
        """
        with self._cv:
            self._closing = True
            thread = self._thread
            self._cv.notify()
        if thread is not None:
            thread.join()
        with self._cv:
            if self._thread is thread:
                self._thread = None
            self._closing = False

    # ---- the scheduler thread -------------------------------------------------------------------

    def _outstanding(self) -> int:
        return len(self._waiting) + len(self._prefilling) + len(self._batch.rows)

    def _set_gauges(self) -> None:
        if self._metrics is not None:
            self._metrics.engine_queue_depth.set(len(self._waiting))
            self._metrics.engine_batch_size.set(len(self._batch.rows))

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._waiting or self._prefilling or self._batch.rows or self._closing):
                    self._cv.wait()
                if self._closing and not (self._waiting or self._prefilling or self._batch.rows):
                    return
                self._admit()
            try:
                with torch.inference_mode():
                    self._drop_cancelled()
                    if self._prefilling:
                        self._prefill_step(self._prefilling[0])
                    if self._batch.rows:
                        self._decode_step()
            except Exception as exc:
                self._fail_all(exc)

    def _admit(self) -> None:
        """Move waiting requests into prefill while the batch has room (called with the lock held)."""
        while self._waiting and len(self._batch.rows) + len(self._prefilling) < self.max_batch:
            request = self._waiting.popleft()
            self._prefilling.append(request)
        self._set_gauges()

    def _finish(self, request: _Request) -> None:
        request.state.close()
        now = time.perf_counter()
        started = request.started if request.started is not None else now
        first = request.first_token_at if request.first_token_at is not None else now
        request.result = request.state.result(first - started, now - first)
        request.cache = None
        request.done.set()

    def _fail_all(self, exc: BaseException) -> None:
        with self._cv:
            requests = [*self._waiting, *self._prefilling, *self._batch.rows]
            self._waiting.clear()
            self._prefilling.clear()
            self._batch = _Batch()
            self._set_gauges()
        for request in requests:
            request.error = exc
            request.done.set()

    def _drop_cancelled(self) -> None:
        with self._cv:
            for request in [r for r in self._waiting if r.cancelled()]:
                self._waiting.remove(request)
                request.state.finish_reason = "cancelled"
                self._finish(request)
            self._set_gauges()
        for request in [r for r in self._prefilling if r.cancelled()]:
            self._prefilling.remove(request)
            request.state.finish_reason = "cancelled"
            self._finish(request)
        gone = [i for i, r in enumerate(self._batch.rows) if r.cancelled()]
        for i in gone:
            self._batch.rows[i].state.finish_reason = "cancelled"
            self._finish(self._batch.rows[i])
        if gone:
            self._remove_rows(set(gone))

    def _forward(self, input_ids: torch.Tensor, cache: Any, **kwargs: Any) -> torch.Tensor:
        out = self.inner.model(
            input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self.inner.cache_kwarg: cache}, **kwargs
        )
        logits: torch.Tensor = out.logits[:, -1]
        return logits

    def _prefill_step(self, request: _Request) -> None:
        """Run the next chunk of a newcomer's prompt; after the last, take its first token and let it join."""
        from transformers import DynamicCache

        prompt = request.state.prompt_ids
        store = self.prompt_cache
        if request.started is None:
            request.started = time.perf_counter()
            request.cache = DynamicCache()  # full-attention layers: the batch mask applies the sliding window
            if store is not None:
                reused, entry = store.lookup(prompt, request.state.params.cache_scope)
                if entry is not None:
                    request.cache, request.prefilled = entry.restore(reused), reused
                head = len(self.head_ids)
                if (
                    HEAD_SCOPE not in store
                    and reused < head < len(prompt)
                    and tuple(prompt[:head]) == self.head_ids
                ):
                    request.head_stop = head
            if self._metrics is not None:
                self._metrics.engine_queue_wait.observe(request.started - request.submitted)
        end = request.prefilled + self.prefill_chunk
        if request.prefilled < request.head_stop < end:
            end = request.head_stop
        chunk = prompt[request.prefilled : end]
        ids = torch.tensor([chunk], dtype=torch.long, device=self.inner.model.device)
        logits = self._forward(ids, request.cache)
        request.prefilled += len(chunk)
        if store is not None and request.prefilled == request.head_stop:
            store.store(HEAD_SCOPE, snapshot(self.head_ids, request.cache))
        if request.prefilled < len(prompt):
            return
        scope = request.state.params.cache_scope
        if store is not None and scope is not None:
            store.store(scope, snapshot(prompt, request.cache))
        self._prefilling.remove(request)
        token, logprob = choose_token(
            logits[0], request.state.params, request.state.generator, request.state.banned()
        )
        now = time.perf_counter()
        request.first_token_at = request.last_token_at = now
        if self._metrics is not None:
            self._metrics.engine_ttft.observe(now - request.submitted)
        request.state.accept(token, logprob)
        if request.state.finish_reason is not None:
            self._finish(request)
            return
        request.last_token = token
        self._join(request)

    def _join(self, request: _Request) -> None:
        """Concatenate a prefilled request's cache into the batch, left-padding the shorter side."""
        batch = self._batch
        length = len(request.state.prompt_ids)
        own_mask = torch.ones((1, length), dtype=torch.long)
        if not batch.rows:
            batch.cache, batch.mask, batch.rows = request.cache, own_mask, [request]
            request.cache = None
            self._set_gauges()
            return
        assert batch.mask is not None
        columns = max(batch.mask.shape[1], length)
        pad_batch, pad_new = columns - batch.mask.shape[1], columns - length
        for layer, new in zip(batch.cache.layers, request.cache.layers, strict=True):
            layer.keys = torch.cat([_pad_left(layer.keys, pad_batch, 2), _pad_left(new.keys, pad_new, 2)])
            layer.values = torch.cat(
                [_pad_left(layer.values, pad_batch, 2), _pad_left(new.values, pad_new, 2)]
            )
        batch.mask = torch.cat([_pad_left(batch.mask, pad_batch, 1), _pad_left(own_mask, pad_new, 1)])
        batch.rows.append(request)
        request.cache = None
        self._set_gauges()

    def _remove_rows(self, gone: set[int]) -> None:
        batch = self._batch
        keep = [i for i in range(len(batch.rows)) if i not in gone]
        if not keep:
            self._batch = _Batch()
            self._set_gauges()
            return
        assert batch.mask is not None
        index = torch.tensor(keep, dtype=torch.long)
        mask = batch.mask.index_select(0, index)
        # Columns that are padding in every remaining row are dropped.
        used = mask.any(dim=0).nonzero()
        first = int(used[0].item()) if len(used) else 0
        for layer in batch.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]
        batch.mask = mask[:, first:]
        batch.rows = [batch.rows[i] for i in keep]
        self._set_gauges()

    def _decode_step(self) -> None:
        """One token for every sequence of the running batch."""
        batch = self._batch
        assert batch.mask is not None
        rows = len(batch.rows)
        input_ids = torch.tensor([[r.last_token] for r in batch.rows], dtype=torch.long)
        positions = batch.mask.sum(dim=1, keepdim=True)
        mask = torch.cat([batch.mask, torch.ones((rows, 1), dtype=torch.long)], dim=1)
        started = time.perf_counter()
        logits = self._forward(input_ids, batch.cache, attention_mask=mask, position_ids=positions)
        batch.mask = mask
        finished: set[int] = set()
        for i, request in enumerate(batch.rows):
            token, logprob = choose_token(
                logits[i], request.state.params, request.state.generator, request.state.banned()
            )
            request.state.accept(token, logprob)
            request.last_token = token
            now = time.perf_counter()
            if self._metrics is not None and request.last_token_at is not None:
                self._metrics.engine_inter_token.observe(now - request.last_token_at)
            request.last_token_at = now
            if request.state.finish_reason is not None:
                finished.add(i)
        self.steps += 1
        if self._metrics is not None:
            self._metrics.engine_tokens_per_second.set(rows / max(time.perf_counter() - started, 1e-9))
        for i in finished:
            self._finish(batch.rows[i])
        if finished:
            self._remove_rows(finished)
