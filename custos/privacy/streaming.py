"""Streaming re-identification: send model text as it comes, but never half a placeholder.

Only a tail that could still grow into a placeholder (``<``, ``<PERS``, ``<PERSON_1``) is held back;
everything before it is restored (or left masked) and released at once.
"""

from __future__ import annotations

import re

from custos.privacy.pseudonymize import PlaceholderMap, restore

# The longest tail worth holding: "<" + an entity type + "_" + a number + ">".
MAX_PLACEHOLDER_CHARS = 48
_OPEN_TAIL = re.compile(r"<[A-Za-z_ ]*\d*\Z")


class StreamRestorer:
    """Turns model text deltas into deltas safe to send.

    With a mapping, complete placeholders are restored to their values; without one (re-identification
    not requested) placeholders pass through masked and nothing is held back.
    """

    def __init__(self, mapping: PlaceholderMap | None) -> None:
        self._mapping = mapping
        self._pending = ""

    def feed(self, delta: str) -> str:
        """Add model text; return the text that can be sent now."""
        if self._mapping is None:
            return delta
        self._pending += delta
        cut = self._hold_from(self._pending)
        ready, self._pending = self._pending[:cut], self._pending[cut:]
        return restore(ready, self._mapping) if ready else ""

    def flush(self) -> str:
        """Release whatever is held at the end of the stream (an unfinished placeholder stays as written)."""
        rest, self._pending = self._pending, ""
        if self._mapping is None or not rest:
            return rest
        return restore(rest, self._mapping)

    @staticmethod
    def _hold_from(text: str) -> int:
        start = text.rfind("<", max(0, len(text) - MAX_PLACEHOLDER_CHARS))
        if start >= 0 and _OPEN_TAIL.match(text, start):
            return start
        return len(text)
