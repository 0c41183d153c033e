"""The transformers engine: a manual decode loop (prefill, then one token per step) over a KV cache.

The loop is written around a per-request state object (:class:`Generation`) so that a batching
scheduler can later own the forward passes and drive many requests' states between decode steps.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from custos.engine.base import Engine
from custos.engine.manifest import Manifest, load_manifest
from custos.engine.precision import (
    DYNAMIC_PRECISIONS,
    INT4_PRECISIONS,
    INT8_PRECISIONS,
    PRECISIONS,
    QUANTIZED_PRECISIONS,
)
from custos.engine.prompt import PromptFormat, get_prompt_format
from custos.engine.sampling import choose_token, make_generator
from custos.engine.scoring import ContinuationScores, score_continuations
from custos.engine.streaming import TextStream
from custos.engine.types import (
    ChatTurn,
    EngineError,
    FinishReason,
    GenerationResult,
    ModelCacheError,
    ModelInfo,
    PromptTooLong,
    SamplingParams,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

_LOCK_POLL_SECONDS = 0.05


def available_cpus() -> int:
    """CPUs this process may use: its affinity set, capped by a cgroup v2 CPU quota if one is set."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``num_threads`` or, by default, to the CPUs actually available.

    torch counts the host's cores, which oversubscribes a container limited to fewer; that is slower,
    not faster. Returns the thread count in effect.
    """
    wanted = num_threads if num_threads is not None else min(torch.get_num_threads(), available_cpus())
    if wanted < 1:
        raise EngineError(f"num_threads must be at least 1, not {wanted}")
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return wanted


def check_quality(manifest: Manifest, cache_dir: Path) -> None:
    """Refuse a quantized cache whose manifest does not show an admitted quality gate."""
    quality = manifest.quality or {}
    if manifest.precision in QUANTIZED_PRECISIONS and quality.get("admitted") is not True:
        raise ModelCacheError(
            f"model cache {cache_dir}: precision {manifest.precision} has no admitted quality gate in its "
            "manifest; run `custos model prepare` to measure it"
        )


def _token_ids(*values: object) -> frozenset[int]:
    ids: set[int] = set()
    for value in values:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)


@dataclass(frozen=True)
class CacheContents:
    """A cache's files read into memory: weights, tokenizer and manifest, before the model is built.

    Reading (file I/O, hashing, the tokenizer's parsing in Rust) mostly runs without the GIL, so it can
    overlap the server's imports on another thread; building the model imports transformers' modeling
    code and is left to the caller's thread.
    """

    cache_dir: Path
    manifest: Manifest
    tensors: dict[str, torch.Tensor]
    tokenizer: PreTrainedTokenizerBase


def read_cache_contents(cache_dir: Path, *, verify: bool = True) -> CacheContents:
    """Read a prepared cache (``verify`` re-hashes every file against the manifest while reading)."""
    from custos.engine import weights

    cache_dir = Path(cache_dir)
    manifest = load_manifest(cache_dir)
    check_quality(manifest, cache_dir)
    # One read per file checks the digest and loads it, into private memory: a memory-mapped file would
    # let later writes to the verified cache change the running model unnoticed.
    tensors = weights.read_cache(cache_dir, manifest, verify=verify)
    return CacheContents(cache_dir, manifest, tensors, weights.load_tokenizer(cache_dir))


@dataclass
class Generation:
    """One request's decode state: what a scheduler would keep per sequence between steps."""

    params: SamplingParams
    prompt_ids: list[int]
    stream: TextStream
    user_stops: int  # the first ``user_stops`` entries of stream.stops came with the request
    eos_ids: frozenset[int]
    generator: torch.Generator | None
    on_text: Callable[[str], None] | None
    logprobs: list[float] = field(default_factory=list)
    finish_reason: FinishReason | None = None

    def _send(self, delta: str) -> None:
        if delta and self.on_text is not None:
            self.on_text(delta)

    def banned(self) -> frozenset[int]:
        """Tokens the next step may not choose: end-of-sequence while ``min_new_tokens`` is not reached."""
        return self.eos_ids if len(self.logprobs) < self.params.min_new_tokens else frozenset()

    def accept(self, token: int, logprob: float) -> None:
        """Record the chosen token, stream its text, and decide whether the answer is finished."""
        self.logprobs.append(logprob)
        if token in self.eos_ids:
            self.finish_reason = "stop"
            return
        delta, match = self.stream.push(token)
        self._send(delta)
        if match is not None:
            self.finish_reason = "stop_sequence" if match.index < self.user_stops else "stop"
        elif len(self.logprobs) >= self.params.max_new_tokens:
            self.finish_reason = "length"

    def close(self, reason: FinishReason | None = None) -> None:
        """Finish (with ``reason`` unless one was already decided) and flush held-back text."""
        if self.finish_reason is None:
            self.finish_reason = reason
        self._send(self.stream.finish())

    def result(self, prefill_seconds: float, decode_seconds: float) -> GenerationResult:
        """The outcome; only after :meth:`close`."""
        assert self.finish_reason is not None
        return GenerationResult(
            text=self.stream.text,
            finish_reason=self.finish_reason,
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=len(self.logprobs),
            mean_logprob=sum(self.logprobs) / len(self.logprobs) if self.logprobs else None,
            min_logprob=min(self.logprobs) if self.logprobs else None,
            prefill_seconds=prefill_seconds,
            decode_seconds=decode_seconds,
        )


class TransformersEngine(Engine):
    """Runs a causal LM from transformers on one device, one generation at a time (a lock serialises them)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        info: ModelInfo,
        prompt_format: PromptFormat,
        max_context_tokens: int | None = None,
        eos_token_ids: Iterable[int] | None = None,
    ) -> None:
        self.info = info
        self._model = model
        self._tokenizer = tokenizer
        self._format = prompt_format
        self._device = next(model.parameters()).device
        self._lock = threading.Lock()
        # transformers tokenizers switch settings on the shared Rust object per call; serialise them.
        self._tokenizer_lock = threading.Lock()
        if eos_token_ids is None:
            eos_token_ids = _token_ids(
                getattr(model.generation_config, "eos_token_id", None),
                getattr(model.config, "eos_token_id", None),
                tokenizer.eos_token_id,
            )
        self.eos_token_ids = frozenset(eos_token_ids)
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        limits = [
            n for n in (getattr(model.config, "max_position_embeddings", None), max_context_tokens) if n
        ]
        if not limits:
            raise EngineError("the model config has no max_position_embeddings; set max_context_tokens")
        self._context_tokens = int(min(limits))

    @classmethod
    def from_cache(
        cls,
        cache_dir: Path,
        *,
        device: str = "cpu",
        verify: bool = True,
        prompt_format: str | None = None,
        max_context_tokens: int | None = None,
        num_threads: int | None = None,
    ) -> TransformersEngine:
        """Load a prepared cache (see ``cache.prepare_model``) from local files only.

        ``verify`` re-hashes the cache against its manifest first (ModelCacheError on any difference).
        ``prompt_format`` overrides the manifest's format id. Sets torch's thread count (see
        :func:`configure_threads`).
        """
        return cls.from_contents(
            read_cache_contents(cache_dir, verify=verify),
            device=device,
            prompt_format=prompt_format,
            max_context_tokens=max_context_tokens,
            num_threads=num_threads,
        )

    @classmethod
    def from_contents(
        cls,
        contents: CacheContents,
        *,
        device: str = "cpu",
        prompt_format: str | None = None,
        max_context_tokens: int | None = None,
        num_threads: int | None = None,
    ) -> TransformersEngine:
        """The engine from files read by :func:`read_cache_contents` (see :meth:`from_cache`)."""
        from custos.engine import weights

        cache_dir, manifest, tokenizer = contents.cache_dir, contents.manifest, contents.tokenizer
        configure_threads(num_threads)
        dtype = getattr(torch, PRECISIONS[manifest.precision])
        int8 = manifest.precision in INT8_PRECISIONS
        int4 = manifest.precision in INT4_PRECISIONS
        model = weights.build_model(cache_dir, contents.tensors, dtype=dtype, int8=int8, int4=int4)
        if manifest.precision in DYNAMIC_PRECISIONS:
            from custos.engine.quant import quantize_dynamic_int8

            quantize_dynamic_int8(model)
        torch.nn.Module.to(model, torch.device(device))
        model.eval()
        fmt = get_prompt_format(prompt_format or manifest.prompt_format_id, tokenizer)
        if prompt_format is None and fmt.sha256 != manifest.prompt_format_sha256:
            log.warning(
                "prompt format %s changed since the cache was prepared (now version %d, was %d); using it",
                fmt.id,
                fmt.version,
                manifest.prompt_format_version,
            )
        info = ModelInfo(
            name=manifest.model_name,
            source_sha256=manifest.source_sha256,
            cache_digest=manifest.cache_digest,
            quantization=manifest.source_quantization,
            precision=manifest.precision,
            device=str(torch.device(device)),
            prompt_format=fmt.id,
            prompt_format_version=fmt.version,
            prompt_format_sha256=fmt.sha256,
        )
        return cls(model, tokenizer, info=info, prompt_format=fmt, max_context_tokens=max_context_tokens)

    @property
    def model(self) -> PreTrainedModel:
        """The underlying transformers model."""
        return self._model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The underlying tokenizer."""
        return self._tokenizer

    @property
    def prompt_format(self) -> PromptFormat:
        """The prompt format every generation uses."""
        return self._format

    @property
    def cache_kwarg(self) -> str:
        """The name of the model's KV-cache keyword argument."""
        return self._cache_kwarg

    @property
    def context_tokens(self) -> int:
        """The most tokens (prompt plus new tokens) one generation may use."""
        return self._context_tokens

    def render_prompt(self, turns: Sequence[ChatTurn]) -> str:
        """The prompt text for ``turns`` in this engine's prompt format."""
        return self._format.render(turns)

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as message content (special tokens neither added nor parsed)."""
        with self._tokenizer_lock:
            encoded = self._tokenizer(text, add_special_tokens=False, split_special_tokens=True)
        return len(encoded["input_ids"])

    def _encode_prompt(self, turns: Sequence[ChatTurn]) -> list[int]:
        with self._tokenizer_lock:
            return self._format.encode(turns, self._tokenizer)

    def encode_prompt(self, turns: Sequence[ChatTurn]) -> list[int]:
        """The prompt's token ids for ``turns`` (no check against the context length)."""
        return self._encode_prompt(turns)

    def count_prompt_tokens(self, turns: Sequence[ChatTurn]) -> int:
        """Tokens of the full prompt for ``turns``, as ``generate`` reports them in ``prompt_tokens``."""
        return len(self._encode_prompt(turns))

    def _decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            text = self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert isinstance(text, str)
        return text

    def generate(
        self,
        turns: Sequence[ChatTurn],
        params: SamplingParams,
        *,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Answer the conversation (blocking); see :meth:`Engine.generate` for the contract."""
        state = self.new_generation(turns, params, on_text)
        is_cancelled = cancelled or (lambda: False)
        if not self._acquire(is_cancelled):
            state.close("cancelled")
            return state.result(0.0, 0.0)
        try:
            return self._run(state, is_cancelled)
        finally:
            self._lock.release()

    def new_generation(
        self, turns: Sequence[ChatTurn], params: SamplingParams, on_text: Callable[[str], None] | None
    ) -> Generation:
        """Encode the prompt and set up one request's decode state; PromptTooLong if it cannot fit."""
        prompt_ids = self._encode_prompt(turns)
        if len(prompt_ids) + params.max_new_tokens > self._context_tokens:
            raise PromptTooLong(
                prompt_tokens=len(prompt_ids),
                max_new_tokens=params.max_new_tokens,
                context_tokens=self._context_tokens,
            )
        stops = (*params.stop, *self._format.stop)
        state = Generation(
            params=params,
            prompt_ids=prompt_ids,
            stream=TextStream(self._decode, stops),
            user_stops=len(params.stop),
            eos_ids=self.eos_token_ids,
            generator=make_generator(params, self._device),
            on_text=on_text,
        )
        return state

    def score_continuations(self, prefix: str, continuations: Sequence[str]) -> ContinuationScores:
        """Score ``continuations`` after ``prefix`` in one batched pass (see :mod:`.scoring`)."""
        with self._tokenizer_lock:
            prefix_ids = self._tokenizer(prefix, add_special_tokens=True, split_special_tokens=True)
            endings = [
                self._tokenizer(c, add_special_tokens=False, split_special_tokens=True) for c in continuations
            ]
        ids = [list(e["input_ids"]) for e in endings]
        longest = max((len(i) for i in ids), default=0)
        if len(prefix_ids["input_ids"]) + longest > self._context_tokens:
            raise PromptTooLong(
                prompt_tokens=len(prefix_ids["input_ids"]),
                max_new_tokens=longest,
                context_tokens=self._context_tokens,
            )
        with self._lock:
            return score_continuations(
                self._model, list(prefix_ids["input_ids"]), ids, cache_kwarg=self._cache_kwarg
            )

    def _acquire(self, cancelled: Callable[[], bool]) -> bool:
        """Take the engine lock, giving up if the request is cancelled while it waits."""
        while not self._lock.acquire(timeout=_LOCK_POLL_SECONDS):
            if cancelled():
                return False
        return True

    def _forward(self, ids: list[int], cache: Any) -> torch.Tensor:
        """One model call appending ``ids`` to ``cache``; returns the last position's logits."""
        input_ids = torch.tensor([ids], dtype=torch.long, device=self._device)
        out = self._model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self._cache_kwarg: cache})
        logits: torch.Tensor = out.logits[0, -1]
        return logits

    def _run(self, state: Generation, cancelled: Callable[[], bool]) -> GenerationResult:
        from transformers import DynamicCache

        started = time.perf_counter()
        if cancelled():
            state.close("cancelled")
            return state.result(0.0, 0.0)
        with torch.inference_mode():
            cache = DynamicCache(config=self._model.config)
            logits = self._forward(state.prompt_ids, cache)
            token, logprob = choose_token(logits, state.params, state.generator, state.banned())
            first_token_at = time.perf_counter()
            state.accept(token, logprob)
            while state.finish_reason is None:
                if cancelled():
                    state.finish_reason = "cancelled"
                    break
                logits = self._forward([token], cache)
                token, logprob = choose_token(logits, state.params, state.generator, state.banned())
                state.accept(token, logprob)
        state.close()
        finished = time.perf_counter()
        return state.result(first_token_at - started, finished - first_token_at)
