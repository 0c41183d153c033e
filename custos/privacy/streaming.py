"""Streaming output guard: send model text as it comes, but never half a placeholder or a raw PII value.

Held back is only what could still change meaning with the next token:

* a tail that could still grow into a placeholder (``<``, ``<Pers``, ``<PERSON 1``, ``PERSON_``);
* a tail that could still grow into a pattern-detected value: the last word, and the digit-bearing words
  before it (``4111 1111 `` may become a card number, ``+44 20`` a phone number, ``jane@`` an e-mail);
  an unfinished word is held whole however long it grows (an e-mail address of 254 characters, a URL),
  whatever the NER window;
* when names are detected (NER), the current sentence, at most ``ner_window_chars`` characters of it: a
  name is only recognisable in its sentence.

Everything before the held tail is passed through the output guard and released at once. Cuts never fall
inside a placeholder or a run of digit-bearing words, so no value straddles two guarded pieces.
"""

from __future__ import annotations

import re

from custos.privacy.guard import TOLERANT_PLACEHOLDER, GuardReport, OutputGuard
from custos.privacy.pseudonymize import PlaceholderMap, restore

# The longest tail worth holding for a placeholder: "<" + an entity type + "_" + a number + ">".
MAX_PLACEHOLDER_CHARS = 48
#: The longest run of digit-bearing words held for pattern PII (an IBAN with spaces is 42 characters).
MAX_PATTERN_CHARS = 64
_OPEN_TAIL = re.compile(r"<\s*[A-Za-z_ ]*\d*\s*\Z")
_BARE_TAIL = re.compile(r"(?<![A-Za-z0-9_])[A-Z][A-Z_]*[0-9]*\Z")
# Digit-bearing words (with '@' for e-mail) separated by single spaces, then the unfinished last word.
_PATTERN_TAIL = re.compile(r"(?<!\S)(?:\S*[0-9@]\S*[ \t]){0,12}\S*\Z")
_PREVIOUS_CAPITALISED = re.compile(r"(?<!\S)[A-Z][^\s]*[ \t]\Z")
_SENTENCE_END = re.compile(r"[.!?;:\n][\"')\]]*\s+")
_DIGIT_WORD = re.compile(r"[^\s]*[0-9@][^\s]*")
_PREVIOUS_DIGIT_WORD = re.compile(r"(?<!\S)[^\s]*[0-9@][^\s]*[ \t]\Z")
# White space that ends a word, found from the end with str.rfind (C speed, however long the word).
_WORD_BREAKS = (" ", "\n", "\t", "\r", "\f", "\v", "\u00a0", "\u2028", "\u2029", "\u3000")


class StreamRestorer:
    """Turns model text deltas into deltas safe to send, through an ``OutputGuard``.

    Without a guard (the legacy form ``StreamRestorer(mapping)``), exact placeholders are restored and only a
    possible placeholder tail is held back.
    """

    def __init__(
        self,
        mapping: PlaceholderMap | None,
        *,
        guard: OutputGuard | None = None,
        reidentify: bool = True,
        ner_window_chars: int = 0,
    ) -> None:
        if ner_window_chars < 0:
            raise ValueError("ner_window_chars must not be negative")
        self._mapping = mapping if mapping is not None else PlaceholderMap()
        self._legacy = guard is None and mapping is not None
        self._passthrough = guard is None and mapping is None
        self._guard = guard
        self._reidentify = reidentify
        self._window = ner_window_chars
        self._pending = ""
        self._released_chars = 0
        self.report = GuardReport()

    def feed(self, delta: str) -> str:
        """Add model text; return the text that can be sent now."""
        if self._passthrough:
            return delta
        self._pending += delta
        cut = self.hold_from(self._pending)
        return self._release(cut)

    def flush(self) -> str:
        """Release whatever is held at the end of the stream, through the guard."""
        if self._passthrough:
            return ""
        return self._release(len(self._pending))

    def _release(self, cut: int) -> str:
        ready, self._pending = self._pending[:cut], self._pending[cut:]
        if not ready:
            return ""
        if self._legacy:
            return restore(ready, self._mapping)
        assert self._guard is not None
        safe, report = self._guard.check(ready, self._mapping, reidentify=self._reidentify)
        self.report.merge(report, offset=self._released_chars)
        self._released_chars += len(ready)
        return safe

    def hold_from(self, text: str) -> int:
        """Return the position from which ``text`` must be held back."""
        if self._legacy:
            return _placeholder_hold(text)
        cut = min(_placeholder_hold(text), _pattern_hold(text))
        if self._window:
            cut = min(cut, _sentence_hold(text, self._window))
        return _not_inside_a_value(text, cut)


def _placeholder_hold(text: str) -> int:
    start = text.rfind("<", max(0, len(text) - MAX_PLACEHOLDER_CHARS))
    if start >= 0 and _OPEN_TAIL.match(text, start):
        return start
    bare = _BARE_TAIL.search(text, max(0, len(text) - MAX_PLACEHOLDER_CHARS))
    return bare.start() if bare else len(text)


def _last_word_start(text: str) -> int:
    """Where the unfinished last word starts (``len(text)`` when the text ends with white space)."""
    return max(text.rfind(space) for space in _WORD_BREAKS) + 1


def _pattern_hold(text: str) -> int:
    word_start = _last_word_start(text)
    if len(text) - word_start > MAX_PATTERN_CHARS:
        # A long unbroken word still being written (an e-mail address of up to 254 characters, a URL) is
        # held whole until it ends: released in pieces, no piece would look like the value it is part of.
        return word_start
    window_start = max(0, len(text) - MAX_PATTERN_CHARS)
    match = _PATTERN_TAIL.search(text, window_start)
    return min(match.start() if match else len(text), word_start)


def _sentence_hold(text: str, window: int) -> int:
    """Hold the current sentence, but no more than ``window`` characters (cut at a space)."""
    sentence_start = 0
    for match in _SENTENCE_END.finditer(text):
        sentence_start = match.end()
    if len(text) - sentence_start <= window:
        return sentence_start
    space = text.find(" ", len(text) - window)
    if space < 0:
        return len(text)
    cut = space + 1
    # Do not separate capitalised words ("Jane | Roe"): a name is recognised whole or not at all.
    floor = max(0, cut - MAX_PLACEHOLDER_CHARS)
    while cut < len(text) and text[cut].isupper():
        previous = _PREVIOUS_CAPITALISED.search(text, floor, cut)
        if previous is None:
            break
        cut = previous.start()
    return cut


def _not_inside_a_value(text: str, cut: int) -> int:
    """Move ``cut`` back so it splits neither a placeholder, nor a word, nor a run of digit-bearing words."""
    for match in TOLERANT_PLACEHOLDER.finditer(text, max(0, cut - MAX_PLACEHOLDER_CHARS)):
        if match.start() < cut < match.end():
            cut = match.start()
    if cut <= 0 or cut >= len(text):
        return cut
    while cut > 0 and not text[cut - 1].isspace() and not text[cut].isspace():
        cut -= 1  # never split a word
    following = text[cut:].split(None, 1)
    if not following or _DIGIT_WORD.fullmatch(following[0]) is None:
        return cut
    # The next word may continue a value written with spaces ("+44 20 | 7946 0958"): take its start back.
    floor = max(0, cut - MAX_PATTERN_CHARS)
    while cut > floor:
        previous = _PREVIOUS_DIGIT_WORD.search(text, floor, cut)
        if previous is None:
            break
        cut = previous.start()
    return cut
