"""Incremental detokenization: token ids in, final text deltas out.

Subword tokenizers cannot decode a token on its own: SentencePiece marks spaces on the following piece,
and byte-fallback or byte-level tokens may end in the middle of a UTF-8 character (decoded as U+FFFD until
the rest arrives). So the stream decodes the whole answer so far and emits only the part that can no
longer change: text before a trailing U+FFFD, before anything that could still become a stop sequence,
and before trailing whitespace (answers are trimmed at both ends; whitespace is emitted with the next word).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

_REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class StopMatch:
    """A stop string found in the answer; ``index`` is its position in ``TextStream.stops``."""

    index: int
    stop: str


class TextStream:
    """Turns the growing list of generated token ids into final text deltas and finds stop strings.

    ``decode`` maps the generated ids (not the prompt) to text. The concatenated deltas are the answer:
    without leading/trailing whitespace and without the stop string or anything after it.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()) -> None:
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        self.stops = tuple(stops)
        self._decode = decode
        self._ids: list[int] = []
        self._raw = ""
        self._consumed = 0  # index into the decoded text up to which output is final
        self._started = False  # whether any non-whitespace text was emitted
        self._parts: list[str] = []
        self._max_hold = max((len(s) for s in self.stops), default=1) - 1
        self.finished = False

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return "".join(self._parts)

    @property
    def token_ids(self) -> list[int]:
        """The ids pushed so far."""
        return list(self._ids)

    def _emit(self, chunk: str, *, final: bool) -> str:
        if not self._started:
            chunk = chunk.lstrip()
        if final:
            chunk = chunk.rstrip()
        if chunk:
            self._started = True
            self._parts.append(chunk)
        return chunk

    def _find_stop(self) -> tuple[int, StopMatch] | None:
        best: tuple[int, StopMatch] | None = None
        for index, stop in enumerate(self.stops):
            pos = self._raw.find(stop, self._consumed)
            if pos >= 0 and (best is None or pos < best[0]):
                best = (pos, StopMatch(index, stop))
        return best

    def _held_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text[self._consumed:]`` that could start a stop string."""
        longest = min(self._max_hold, len(text) - self._consumed)
        for k in range(longest, 0, -1):
            tail = text[-k:]
            if any(stop.startswith(tail) for stop in self.stops):
                return k
        return 0

    def push(self, token_id: int) -> tuple[str, StopMatch | None]:
        """Add one generated token; return the newly final text and the stop string if one completed.

        After a stop match the stream is finished and the delta is the last one.
        """
        if self.finished:
            raise RuntimeError("push after the stream finished")
        self._ids.append(token_id)
        self._raw = self._decode(self._ids)
        found = self._find_stop()
        if found is not None:
            pos, match = found
            delta = self._emit(self._raw[self._consumed : pos], final=True)
            self._consumed = pos
            self.finished = True
            return delta, match
        stable = self._raw.rstrip(_REPLACEMENT)
        safe = len(stable) - self._held_suffix(stable)
        if safe <= self._consumed:
            return "", None
        chunk = self._raw[self._consumed : safe]
        body = chunk.rstrip()  # hold trailing whitespace until text follows it
        lead = 0 if self._started else len(body) - len(body.lstrip())
        delta = self._emit(body, final=False)
        self._consumed += lead + len(delta)
        return delta, None

    def finish(self) -> str:
        """End the stream (end of sequence, length, cancellation): emit whatever is still held back."""
        if self.finished:
            return ""
        self.finished = True
        delta = self._emit(self._raw[self._consumed :], final=True)
        self._consumed = len(self._raw)
        return delta
