"""The engine interface the server is written against."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from custos.engine.types import ChatTurn, GenerationResult, ModelInfo, SamplingParams

if TYPE_CHECKING:
    from custos.engine.metrics import EngineMetrics
    from custos.engine.scoring import ContinuationScores


class Engine(ABC):
    """Runs one model. ``generate`` blocks; the server calls it from a worker thread."""

    info: ModelInfo
    concurrency: int = 1
    """How many ``generate`` calls may usefully block at once (running plus queued); sizes the worker pool."""

    readiness_interval_s: float | None = None
    """Seconds between the server's calls of :meth:`check_ready`; None: the engine is always ready."""

    def check_ready(self) -> bool:
        """Whether the engine can take requests now (an engine on another server asks it); blocks briefly."""
        return True

    def observe(self, metrics: EngineMetrics) -> None:  # noqa: B027 - optional: most engines report nothing
        """Report engine metrics (queue, latency, throughput) into ``metrics``; the default reports none."""

    def close(self) -> None:  # noqa: B027 - optional: most engines hold no background work
        """Stop background work once the requests held have finished; a later call may start it again.

        The server calls this when it stops (blocking: from a worker thread).
        """

    @abstractmethod
    def render_prompt(self, turns: Sequence[ChatTurn]) -> str:
        """The prompt text the model sees for ``turns`` (for display and auditing)."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` takes as content (no special tokens added)."""

    def count_prompt_tokens(self, turns: Sequence[ChatTurn]) -> int:
        """How many tokens the full prompt for ``turns`` takes; engines override this with the exact count."""
        return self.count_tokens(self.render_prompt(turns))

    @abstractmethod
    def generate(
        self,
        turns: Sequence[ChatTurn],
        params: SamplingParams,
        *,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Answer the conversation, blocking until done.

        ``on_text`` receives text deltas as soon as they are final (never a partial character, never text
        that may still turn out to be part of a stop sequence); the result's text is exactly their
        concatenation. ``cancelled`` is polled before every model step; when it returns true, generation
        stops with finish reason ``cancelled``. Raises :class:`PromptTooLong` when the prompt plus
        ``params.max_new_tokens`` exceeds :attr:`context_tokens`.
        """

    def score_continuations(self, prefix: str, continuations: Sequence[str]) -> ContinuationScores:
        """Log-likelihood of each continuation after ``prefix`` (raw text, no prompt format); blocks.

        Used by Classify. Raises :class:`PromptTooLong` when the prefix and the longest continuation do not
        fit :attr:`context_tokens`; engines that cannot score raise NotImplementedError.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot score continuations")
