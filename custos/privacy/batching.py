"""Batch analysis of concurrent requests: calls that wait while another is analysed go through spaCy together.

Analyses take turns at the shared analyzer (one spaCy pipeline, one interpreter:
``custos.privacy.scheduling``), so short requests arriving while one is being analysed would otherwise queue
and run one by one. ``AnalysisBatcher`` lets the first caller lead: it analyses every call waiting at that
moment (up to ``max_batch``) in one ``analyze_many`` (one ``nlp.pipe`` over all their messages), hands each
caller its own result, and passes the lead to the next waiting caller, so no caller works for others after its
own answer is ready. A lone request is analysed at once, without waiting for company. Only calls whose
messages are all short come here; a long message is analysed in slices with turns of its own, and these
batches go before its next slice (``PrivacyStage``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from custos.privacy.pseudonymize import Analysis

#: Analyses several calls at once; per call either its Analysis or the exception that refused it.
AnalyzeMany = Callable[[Sequence[Sequence[str]]], "list[Analysis | Exception]"]


@dataclass
class _Job:
    texts: list[str]
    wake: threading.Event = field(default_factory=threading.Event)
    outcome: Analysis | Exception | None = None


class AnalysisBatcher:
    """Thread-safe front of ``analyze_many`` that batches the calls waiting for it."""

    def __init__(self, analyze_many: AnalyzeMany, *, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._analyze_many = analyze_many
        self._max_batch = max_batch
        self._mutex = threading.Lock()
        self._pending: list[_Job] = []
        # Invariant: pending calls exist only while a leader is busy (or has just been handed the lead).
        self._busy = False
        #: Number of calls in each of the last 256 batches (for tests and diagnostics; bounded).
        self.batch_sizes: deque[int] = deque(maxlen=256)

    def analyze(self, texts: Sequence[str]) -> Analysis:
        """Analyse one call's messages, together with whatever else is waiting; raise what refused it."""
        job = _Job(list(texts))
        with self._mutex:
            self._pending.append(job)
            lead = not self._busy
            self._busy = True
        if not lead:
            job.wake.wait()
        if job.outcome is None:  # woken without a result: this caller leads the next batch
            self._lead()
        outcome = job.outcome
        if isinstance(outcome, Exception):
            raise outcome
        assert outcome is not None
        return outcome

    def _lead(self) -> None:
        with self._mutex:
            batch = self._pending[: self._max_batch]
            del self._pending[: len(batch)]
        try:
            outcomes = self._analyze_many([job.texts for job in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError("analyze_many returned a different number of results than calls")
        except Exception as exc:
            outcomes = [exc] * len(batch)
        for job, outcome in zip(batch, outcomes, strict=True):
            job.outcome = outcome
        with self._mutex:
            self.batch_sizes.append(len(batch))
            successor = self._pending[0] if self._pending else None
            if successor is None:
                self._busy = False
        for job in batch:
            job.wake.set()
        if successor is not None:
            successor.wake.set()
