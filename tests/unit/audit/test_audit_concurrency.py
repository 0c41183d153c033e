from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from custos.audit import AuditStore, StoredRecord
from custos.testing.audit import assert_linear_chain, event

THREADS = 8
PER_THREAD = 25


@pytest.mark.parametrize(
    "separate_engines",
    [
        pytest.param(False, id="one shared store"),
        # One engine and store per thread, like separate processes or replicas: only the database lock
        # (BEGIN IMMEDIATE / pg_advisory_xact_lock) keeps the chain linear.
        pytest.param(True, id="store per thread"),
    ],
)
def test_concurrent_appends_form_one_linear_chain(
    engine: sa.Engine, engine_factory: Callable[..., sa.Engine], separate_engines: bool
) -> None:
    shared = AuditStore(engine)
    stores = [AuditStore(engine_factory()) if separate_engines else shared for _ in range(THREADS)]
    start = threading.Barrier(THREADS)
    results: dict[int, list[StoredRecord]] = {}
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            start.wait()
            results[index] = [stores[index].append(event(actor=f"svc:{index}")) for _ in range(PER_THREAD)]
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)

    records = assert_linear_chain(shared, THREADS * PER_THREAD)
    by_id = {r.id: r for r in records}
    for index, appended in results.items():
        # what each append returned is what was committed, in that thread's order
        assert [by_id[r.id] for r in appended] == appended
        assert [r.seq for r in appended] == sorted(r.seq for r in appended)
        assert {r.actor for r in appended} == {f"svc:{index}"}
