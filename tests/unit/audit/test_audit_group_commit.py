"""Group commit: concurrent appends share transactions; each caller gets exactly its own records."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence

import pytest
import sqlalchemy as sa

from custos.audit import AuditStore, DuplicateId, StoredRecord
from custos.audit.group import GroupCommitter
from custos.testing.audit import assert_linear_chain, event

THREADS = 8
PER_THREAD = 20


def test_concurrent_appends_are_grouped_into_fewer_transactions(engine: sa.Engine) -> None:
    store = AuditStore(engine)
    start = threading.Barrier(THREADS)
    results: dict[int, list[StoredRecord]] = {}

    def worker(index: int) -> None:
        start.wait()
        results[index] = [store.append(event(actor=f"svc:{index}")) for _ in range(PER_THREAD)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    records = assert_linear_chain(store, THREADS * PER_THREAD)
    assert store.transactions is not None and store.transactions < THREADS * PER_THREAD
    by_id = {r.id: r for r in records}
    for index, appended in results.items():
        assert [by_id[r.id] for r in appended] == appended  # one record per request, the one committed
        assert {r.actor for r in appended} == {f"svc:{index}"}


def test_without_group_commit_every_append_is_its_own_transaction(engine: sa.Engine) -> None:
    store = AuditStore(engine, group_commit=False)
    store.append(event())
    assert store.transactions is None
    assert_linear_chain(store, 1)


def test_a_failing_caller_does_not_fail_the_others_of_its_group() -> None:
    """A grouped commit that fails is retried caller by caller, so only the caller at fault sees the error."""
    calls: list[int] = []
    gate = threading.Event()

    def commit(callers: Sequence[tuple[Sequence[object], Sequence[object]]]) -> list[list[StoredRecord]]:
        calls.append(len(callers))
        if len(calls) == 1:
            gate.wait(5)  # hold the first transaction so the others queue up behind it
        if any(events == ["bad"] for events, _ in callers):
            raise DuplicateId("audit record id already exists")
        return [[events[0]] for events, _ in callers]  # type: ignore[list-item]

    group = GroupCommitter(commit)  # type: ignore[arg-type]
    outcomes: dict[str, object] = {}

    def submit(name: str, events: list[str]) -> None:
        try:
            outcomes[name] = group.submit(events)  # type: ignore[arg-type]
        except DuplicateId as err:
            outcomes[name] = err

    first = threading.Thread(target=submit, args=("first", ["a"]))
    first.start()
    while not calls:
        time.sleep(0.001)
    others = [
        threading.Thread(target=submit, args=(n, e))
        for n, e in (("b", ["b"]), ("bad", ["bad"]), ("c", ["c"]))
    ]
    for thread in others:
        thread.start()
    while len(group._queue) < 3:
        time.sleep(0.001)
    gate.set()
    for thread in [first, *others]:
        thread.join(10)
    assert outcomes["first"] == ["a"] and outcomes["b"] == ["b"] and outcomes["c"] == ["c"]
    assert isinstance(outcomes["bad"], DuplicateId)
    assert calls[:2] == [1, 3]  # the three queued callers were tried as one group first


def test_duplicate_chosen_id_in_a_group_fails_only_its_caller(store: AuditStore) -> None:
    chosen = str(uuid.uuid4())
    store.append(event(record_id=chosen))
    with pytest.raises(DuplicateId):
        store.append(event(record_id=chosen))
    store.append(event())
    assert_linear_chain(store, 2)


def test_a_leader_waits_briefly_for_the_callers_of_the_previous_group() -> None:
    """Callers returning from a group of three queue again; the next leader waits for them (bounded)."""
    batches: list[list[str]] = []
    gate = threading.Event()

    def commit(callers: Sequence[tuple[Sequence[object], Sequence[object]]]) -> list[list[StoredRecord]]:
        batches.append([str(events[0]) for events, _ in callers])
        if len(batches) == 1:
            gate.wait(5)  # the others queue up behind the first transaction
        time.sleep(0.4)  # a slow commit: the next leader may wait up to half of it
        return [[events[0]] for events, _ in callers]  # type: ignore[list-item]

    group = GroupCommitter(commit, linger_s=10.0)  # type: ignore[arg-type]

    def submit(name: str) -> None:
        group.submit([name])  # type: ignore[list-item]

    def run(names: list[str], *, hold_first: bool) -> None:
        threads = [threading.Thread(target=submit, args=(name,)) for name in names]
        threads[0].start()
        while hold_first and not batches:
            time.sleep(0.001)
        time.sleep(0.05)
        for thread in threads[1:]:
            thread.start()
            time.sleep(0.02)  # each arrives after the previous one: no leader sees them all at once
        gate.set()
        for thread in threads:
            thread.join(10)

    run(["a", "b", "c", "d"], hold_first=True)
    assert batches == [["a"], ["b", "c", "d"]]
    run(["e", "f", "g"], hold_first=False)  # without the wait "e" would commit alone
    assert batches[2:] == [["e", "f", "g"]]
    run(["h"], hold_first=False)  # fewer come than expected: the wait is bounded, then it commits
    assert batches[3:] == [["h"]]
    assert group.transactions == 4


def test_a_lone_writer_never_waits() -> None:
    def commit(callers: Sequence[tuple[Sequence[object], Sequence[object]]]) -> list[list[StoredRecord]]:
        time.sleep(0.2)
        return [[events[0]] for events, _ in callers]  # type: ignore[list-item]

    group = GroupCommitter(commit, linger_s=10.0)  # type: ignore[arg-type]
    group.submit(["a"])  # type: ignore[list-item]
    started = time.perf_counter()
    group.submit(["b"])  # type: ignore[list-item]
    assert time.perf_counter() - started < 0.3


def test_a_slow_commit_listener_holds_up_only_its_own_caller(store: AuditStore) -> None:
    """Listeners (a checkpoint's fsync) run in the caller's thread, never while leading a group commit."""
    entered, release = threading.Event(), threading.Event()

    def listener(count: int) -> None:
        if threading.current_thread().name == "slow":
            entered.set()
            release.wait(30)

    store.add_commit_listener(listener)
    slow = threading.Thread(target=lambda: store.append(event()), name="slow")
    slow.start()
    try:
        assert entered.wait(30)
        other = threading.Thread(target=lambda: store.append(event()))
        other.start()
        other.join(10)
        assert not other.is_alive(), "an append waited for another caller's listener"
    finally:
        release.set()
        slow.join(30)
    assert store.head().seq == 2
