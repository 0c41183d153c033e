"""The prompt cache: the format head and a conversation's previous prompt reused, with equal output."""

from __future__ import annotations

import pytest
import torch

from custos.engine.prefix import HEAD_SCOPE, PrefixCache, PrefixEntry
from custos.engine.scheduler import BatchingEngine
from custos.engine.types import ChatTurn, GenerationResult, SamplingParams
from custos.flows.generate import cache_scope
from custos.testing.tiny_engine import build_tiny_engine

GREEDY = SamplingParams(max_new_tokens=12)
FIRST = (ChatTurn("user", "Hi, I am <PERSON_1>. Where is my order <ORDER_ID_1>?"),)
OTHER = (ChatTurn("user", "Can I change the delivery address?"),)


def _engine(cache_bytes: int) -> BatchingEngine:
    return BatchingEngine(build_tiny_engine(seed=0), prompt_cache_bytes=cache_bytes)


def _same(a: GenerationResult, b: GenerationResult) -> None:
    assert (a.text, a.finish_reason, a.prompt_tokens, a.completion_tokens) == (
        b.text,
        b.finish_reason,
        b.prompt_tokens,
        b.completion_tokens,
    )
    assert a.mean_logprob == pytest.approx(b.mean_logprob, abs=1e-4)


def test_the_format_head_is_prefilled_once_and_reused_with_the_same_output() -> None:
    plain, cached = _engine(0), _engine(8 << 20)
    try:
        assert plain.prompt_cache is None
        store = cached.prompt_cache
        assert store is not None
        head = len(cached.head_ids)
        assert head > 50  # the plain format's instructions and examples
        for turns in (FIRST, OTHER, FIRST):
            _same(cached.generate(turns, GREEDY), plain.generate(turns, GREEDY))
        assert HEAD_SCOPE in store
        # The first request prefilled the head; the next two started from it.
        assert (store.hits, store.reused_tokens) == (2, 2 * head)
    finally:
        plain.close()
        cached.close()


def test_a_conversation_reuses_its_previous_prompt_only_in_its_own_scope() -> None:
    plain, cached = _engine(0), _engine(8 << 20)
    try:
        store = cached.prompt_cache
        assert store is not None
        mine = SamplingParams(max_new_tokens=12, cache_scope="scope-a")
        first = cached.generate(FIRST, mine)
        _same(first, plain.generate(FIRST, GREEDY))
        second_turns = (
            *FIRST,
            ChatTurn("assistant", first.text or "ok"),
            ChatTurn("user", "Thanks, and when?"),
        )
        before = store.reused_tokens
        _same(cached.generate(second_turns, mine), plain.generate(second_turns, GREEDY))
        assert store.reused_tokens - before >= first.prompt_tokens - 1  # the whole previous prompt, nearly
        # The same next turn in another scope (another caller or conversation) reuses only the shared head.
        before = store.reused_tokens
        theirs = SamplingParams(max_new_tokens=12, cache_scope="scope-b")
        _same(cached.generate(second_turns, theirs), plain.generate(second_turns, GREEDY))
        assert store.reused_tokens - before == len(cached.head_ids)
    finally:
        plain.close()
        cached.close()


def _entry(tokens: int, width: int = 16) -> PrefixEntry:
    layer = (torch.zeros(1, 1, tokens, width), torch.zeros(1, 1, tokens, width))
    return PrefixEntry(ids=tuple(range(tokens)), layers=(layer,))


def test_the_store_is_bounded_and_evicts_the_least_recently_used() -> None:
    one = _entry(8).nbytes
    store = PrefixCache(max_bytes=2 * one)
    store.store("a", _entry(8))
    store.store("b", _entry(8))
    assert store.lookup(list(range(20)), "a")[0] == 8  # "a" is now the most recently used
    store.store("c", _entry(8))
    assert "a" in store and "c" in store and "b" not in store
    assert store.nbytes == 2 * one
    store.store("huge", _entry(100))
    assert "huge" not in store and store.nbytes == 2 * one
    # The last prompt token is never reused: it must run to give the first logits.
    assert store.lookup(list(range(8)), "a")[0] == 7
    assert store.lookup([5, 6, 7], "a") == (0, None)


def test_scopes_separate_callers_and_conversations_and_reveal_neither() -> None:
    key = b"k" * 32
    scope = cache_scope(key, "alice", "conv-1")
    assert scope == cache_scope(key, "alice", "conv-1")
    assert len({scope, cache_scope(key, "bob", "conv-1"), cache_scope(key, "alice", "conv-2")}) == 3
    assert cache_scope(key, "a\x00b", "c") != cache_scope(key, "a", "b\x00c")
    assert cache_scope(b"x" * 32, "alice", "conv-1") != scope
    assert "alice" not in scope and "conv" not in scope
