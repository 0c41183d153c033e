"""Reusing prompt KV caches: the prompt format's constant head, and a conversation's previous prompt.

Every prompt of a format starts with the same tokens (the instructions and few-shot examples), so their
keys and values are computed once and copied into each request's cache. A conversation's next turn
starts with its previous prompt (the answer and the new message follow it), so the cache of that prompt
is kept too and reused as far as the token ids still match.

The format head holds no user text and is shared by every caller. A conversation's entry holds user
text (anonymized, but still the caller's), so it is stored under a *scope* the flow derives from the
caller's principal and the conversation id with a keyed hash (see ``flows``): another caller, or another
conversation, cannot match it. The store is an LRU bounded by bytes; an entry is a copy (reused copies
are copied again), so a running request never shares tensors with the store.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

HEAD_SCOPE = "\x00format-head"
"""The scope of the format head (no caller's scope can equal it: the flow's scopes are hex digests)."""


@dataclass(frozen=True)
class PrefixEntry:
    """The keys and values of ``ids`` at every layer (batch of one)."""

    ids: tuple[int, ...]
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)

    def restore(self, tokens: int) -> Any:
        """A new ``DynamicCache`` holding the first ``tokens`` positions (copies)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for index, (keys, values) in enumerate(self.layers):
            cache.update(keys[:, :, :tokens].clone(), values[:, :, :tokens].clone(), index)
        return cache


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def snapshot(ids: Sequence[int], cache: Any) -> PrefixEntry:
    """A copy of ``cache``'s first ``len(ids)`` positions (full-attention layers, batch of one)."""
    n = len(ids)
    return PrefixEntry(
        ids=tuple(ids),
        layers=tuple(
            (layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone()) for layer in cache.layers
        ),
    )


class PrefixCache:
    """An LRU of prompt caches by scope, at most ``max_bytes`` in all (one entry per scope)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("prompt_cache_mb must not be negative")
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[str, PrefixEntry] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        """Lookups that reused at least one token (for tests and benchmarks)."""
        self.reused_tokens = 0
        """Prompt tokens taken from the cache instead of prefilled."""

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def __contains__(self, scope: str) -> bool:
        return scope in self._entries

    def lookup(self, prompt: Sequence[int], scope: str | None) -> tuple[int, PrefixEntry | None]:
        """The longest reusable prefix of ``prompt`` in the head or ``scope``'s entry: (tokens, entry).

        At most ``len(prompt) - 1`` tokens are reused: the last prompt token must run to give the logits.
        """
        best, chosen = 0, None
        with self._lock:
            for key in (HEAD_SCOPE, scope):
                entry = self._entries.get(key) if key is not None else None
                if entry is None:
                    continue
                n = min(common_prefix(entry.ids, prompt), len(prompt) - 1)
                if n > best:
                    best, chosen = n, entry
                    self._entries.move_to_end(key)  # type: ignore[arg-type]
            if chosen is not None:
                self.hits += 1
                self.reused_tokens += best
        return best, chosen

    def store(self, scope: str, entry: PrefixEntry) -> None:
        """Keep ``entry`` as ``scope``'s (replacing its previous one), evicting the least recently used."""
        size = entry.nbytes
        with self._lock:
            old = self._entries.pop(scope, None)
            if old is not None:
                self._bytes -= old.nbytes
            if size > self.max_bytes:
                return
            self._entries[scope] = entry
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
