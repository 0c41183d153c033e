"""Group commit: appends from many concurrent callers share one transaction, each caller waits for its own.

The first caller to arrive while no commit is running becomes the leader: it takes everything queued (up to
``max_group`` callers), commits it in one transaction under the append lock, hands each caller its own
records (or its own error), and repeats until its own request is committed. Then it passes leadership to a
waiting caller, if any. One transaction's fsync and lock round-trip is thus shared by every caller that
arrived meanwhile, while each caller still returns only after its own records are durable and still gets
exactly the records it appended (one record per request, never merged).

If a grouped transaction fails, every caller of the group is retried alone, so one caller's bad input (a
duplicate id) never fails another caller's append.

Steady concurrent writers come back right after their commit, while the caller that led it starts the next
transaction at once: groups would alternate between one caller and all the others. So a leader that finds
fewer callers queued than its previous group had waits briefly for them (at most ``linger_s`` and half the
previous transaction's duration); when they do not come, the next wait expects only as many as did.
A lone writer never waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from custos.audit.events import StoredRecord
    from custos.audit.store import PreparedRecord, SealedTranscript

__all__ = ["CommitFn", "GroupCommitter"]

CommitFn = Callable[
    [Sequence[tuple[Sequence["PreparedRecord"], Sequence["SealedTranscript"]]]], list[list["StoredRecord"]]
]
"""Commits several callers' (events, transcripts) in one transaction; returns each caller's records."""


@dataclass(eq=False)
class _Pending:
    events: Sequence[PreparedRecord]
    transcripts: Sequence[SealedTranscript]
    wake: threading.Event = field(default_factory=threading.Event)
    result: list[StoredRecord] | None = None
    error: BaseException | None = None
    promoted: bool = False

    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None


class GroupCommitter:
    """Leader/follower group commit around a :data:`CommitFn`; thread-safe."""

    def __init__(self, commit: CommitFn, *, max_group: int = 256, linger_s: float = 0.002) -> None:
        if max_group < 1:
            raise ValueError("max_group must be >= 1")
        if linger_s < 0:
            raise ValueError("linger_s must be >= 0")
        self._commit = commit
        self._max_group = max_group
        self._linger_s = linger_s
        self._mutex = threading.Lock()
        self._arrived = threading.Condition(self._mutex)
        self._queue: list[_Pending] = []
        self._leading = False
        self._expected = 1  # callers in the previous group: the size worth waiting for
        self._last_commit_s = 0.0
        self.transactions = 0
        """Number of transactions committed so far (for tests and the benchmark)."""

    def submit(
        self, events: Sequence[PreparedRecord], transcripts: Sequence[SealedTranscript] = ()
    ) -> list[StoredRecord]:
        """Append one caller's records; return them once committed (or raise that caller's error)."""
        item = _Pending(events, transcripts)
        with self._mutex:
            self._queue.append(item)
            lead = not self._leading
            if lead:
                self._leading = True
            else:
                self._arrived.notify()
        while not lead:
            item.wake.wait()
            item.wake.clear()
            if item.finished:
                break
            lead = item.promoted
        if lead:
            self._lead(item)
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _lead(self, own: _Pending) -> None:
        try:
            while not own.finished:
                with self._mutex:
                    self._linger()
                    batch = self._queue[: self._max_group]
                    del self._queue[: self._max_group]
                started = time.perf_counter()
                self._run(batch)
                self._last_commit_s = time.perf_counter() - started
                self._expected = len(batch)
        finally:
            with self._mutex:
                if self._queue:
                    successor = self._queue[0]
                    successor.promoted = True
                    successor.wake.set()
                else:
                    self._leading = False

    def _linger(self) -> None:
        """Wait (mutex held, released while waiting) for the callers of the previous group to queue again."""
        wanted = min(self._expected, self._max_group)
        wait = min(self._linger_s, self._last_commit_s / 2)
        if len(self._queue) >= wanted or wait <= 0:
            return
        deadline = time.monotonic() + wait
        while len(self._queue) < wanted:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.wait(remaining)

    def _run(self, batch: list[_Pending]) -> None:
        try:
            results = self._commit([(p.events, p.transcripts) for p in batch])
            self.transactions += 1
        except BaseException as err:
            if len(batch) == 1:
                self._finish(batch[0], error=err)
                return
            for pending in batch:  # retry alone: only the caller at fault gets the error
                self._run([pending])
            return
        for pending, records in zip(batch, results, strict=True):
            self._finish(pending, result=records)

    @staticmethod
    def _finish(
        pending: _Pending, *, result: list[StoredRecord] | None = None, error: BaseException | None = None
    ) -> None:
        pending.result, pending.error = result, error
        pending.wake.set()
