"""Turns at the shared analyzer: one analysis at a time, short work first, long messages in bounded slices.

Why one at a time: the analyzer (one spaCy pipeline, Presidio's recognizers, ``SteppedNer``) is shared by
every request, and spaCy does not promise that one ``Language`` object may be used by several threads at once
(explosion/spaCy#6398: unstable results; #11904: pipeline changes race); nothing would be gained either,
since ``SteppedNer`` holds the GIL for its whole transition loop. Analyses therefore take turns.

Why turns rather than a plain lock: a 32,000-character message costs about as much as 60 messages of 500
characters, and with a plain lock every request arriving meanwhile waited for all of it. The pseudonymizer
analyses a long message in slices of bounded length (``Pseudonymizer.CHUNK_CHARS``), taking one turn per
slice, and :class:`AnalysisGate` gives the next turn to the most urgent waiter: short work (a batch of
ordinary calls, an output-guard check) before the next slice of a long message, first come first served
within one priority. A short request thus waits at most for one slice, however long the message before it.

A turn can be waited for until a deadline (the caller's); past it :class:`TurnDeadline` is raised and the
turn is not taken, so an abandoned request stops using the analyzer.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

#: Priorities of a turn: lower goes first.
SHORT = 0
LONG = 1


class TurnDeadline(Exception):
    """The deadline passed before the analysis could take (or finish) its turns; nothing was returned."""


class Gate(Protocol):
    """What the pseudonymizer asks for each unit of analysis: a turn of the given priority."""

    def turn(self, priority: int, deadline: float | None = None) -> AbstractContextManager[None]:
        """Hold the analyzer for the ``with`` block; raise ``TurnDeadline`` once ``deadline`` has passed."""
        ...


class AnalysisGate:
    """A lock whose next holder is the waiter of lowest priority, then the longest waiting; thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._queue: list[tuple[int, int]] = []  # (priority, ticket), a heap
        self._tickets = itertools.count()
        #: Turns taken per priority (for tests and diagnostics).
        self.turns: dict[int, int] = {SHORT: 0, LONG: 0}

    @contextmanager
    def turn(self, priority: int, deadline: float | None = None) -> Iterator[None]:
        """Wait for the analyzer (short work first), hold it for the block, hand it on."""
        self._acquire(priority, deadline)
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()

    def _acquire(self, priority: int, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise TurnDeadline("the deadline passed before the analysis")
        with self._cond:
            entry = (priority, next(self._tickets))
            heapq.heappush(self._queue, entry)
            try:
                while self._held or self._queue[0] != entry:
                    timeout = None if deadline is None else deadline - time.monotonic()
                    if timeout is not None and timeout <= 0:
                        raise TurnDeadline("the deadline passed while the analysis waited for its turn")
                    self._cond.wait(timeout)
            except BaseException:
                self._queue.remove(entry)
                heapq.heapify(self._queue)
                self._cond.notify_all()  # the next waiter may be first now
                raise
            heapq.heappop(self._queue)
            self._held = True
            self.turns[priority] = self.turns.get(priority, 0) + 1


class Unshared:
    """The gate of an analyzer used by one thread: every turn is granted at once (deadlines still hold)."""

    @contextmanager
    def turn(self, priority: int, deadline: float | None = None) -> Iterator[None]:
        """Check the deadline, then run the block."""
        del priority
        if deadline is not None and time.monotonic() >= deadline:
            raise TurnDeadline("the deadline passed before the analysis")
        yield
