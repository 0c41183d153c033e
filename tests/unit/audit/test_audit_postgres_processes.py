"""Real PostgreSQL: two processes appending at once, a writer killed mid-transaction, hardening."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from custos.audit import AuditStore, make_engine, migrate
from custos.audit.hardening import harden_postgres
from custos.testing.audit import assert_linear_chain, event

pytestmark = pytest.mark.postgres

THREADS = 8
PER_THREAD = 25

WRITER = """
import sys, threading
from custos.audit import AuditStore, make_engine
from custos.testing.audit import event
url, name, threads, per_thread = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = AuditStore(make_engine(url, lock_timeout_s=60))
barrier = threading.Barrier(threads)
errors = []
def work(i):
    try:
        barrier.wait()
        for _ in range(per_thread):
            store.append(event(actor=f"{name}:{i}"))
    except BaseException as err:
        errors.append(err)
ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
[t.start() for t in ts]
[t.join() for t in ts]
sys.exit(1 if errors else 0)
"""

STUCK_WRITER = """
import sys, time
from custos.audit import make_engine
from custos.audit.store import append_in, lock_chain
from custos.testing.audit import event
engine = make_engine(sys.argv[1])
with engine.begin() as conn:
    lock_chain(conn)
    append_in(conn, [event(actor="doomed")])
    print("inside", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def pg_url(pg_schema_url: str) -> Iterator[str]:
    engine = make_engine(pg_schema_url)
    migrate(engine)
    engine.dispose()
    yield pg_schema_url


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def test_two_processes_with_eight_threads_each_leave_one_linear_chain(pg_url: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, pg_url, name, str(THREADS), str(PER_THREAD)], env=_env()
        )
        for name in ("proc-a", "proc-b")
    ]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    engine = make_engine(pg_url)
    try:
        records = assert_linear_chain(AuditStore(engine), 2 * THREADS * PER_THREAD)
        assert {r.actor.split(":")[0] for r in records} == {"proc-a", "proc-b"}
    finally:
        engine.dispose()


def test_a_writer_killed_inside_its_transaction_leaves_no_row_and_the_next_proceeds(pg_url: str) -> None:
    engine = make_engine(pg_url, lock_timeout_s=30)
    store = AuditStore(engine)
    store.append(event(actor="before"))
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_WRITER, pg_url], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "inside"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    store.append(event(actor="after"))  # waits for the dead writer's lock to be released, then appends
    records = assert_linear_chain(store, 2)
    assert [r.actor for r in records] == ["before", "after"]
    engine.dispose()


@pytest.fixture
def roles(pg_url: str, pg_admin: sa.Engine) -> Iterator[tuple[str, str]]:
    app, maintenance = (f"custos_test_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("app", "mnt"))
    schema = pg_url.rsplit("search_path%3D", 1)[1]
    with pg_admin.begin() as conn:
        for role in (app, maintenance):
            conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
            conn.execute(sa.text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
    yield app, maintenance
    with pg_admin.begin() as conn:
        for role in (app, maintenance):
            conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
            conn.execute(sa.text(f'DROP ROLE "{role}"'))


def test_the_app_role_cannot_update_or_delete_and_the_trigger_stops_the_owner(
    pg_url: str, roles: tuple[str, str]
) -> None:
    app, maintenance = roles
    owner = make_engine(pg_url)
    harden_postgres(owner, app_role=app, maintenance_role=maintenance)
    app_url = pg_url.replace("postgres@", f"{app}@", 1)
    app_engine = make_engine(app_url)
    try:
        app_store = AuditStore(app_engine)
        for _ in range(3):
            app_store.append(event())  # appending and reading work
        assert app_store.verify().ok
        for statement in ("UPDATE audit_records SET status = 'OK'", "DELETE FROM audit_records"):
            with (
                pytest.raises(sa.exc.ProgrammingError, match="permission denied"),
                app_engine.begin() as conn,
            ):
                conn.execute(sa.text(statement))
        for statement in ("UPDATE audit_records SET status = 'X'", "DELETE FROM audit_records WHERE seq = 2"):
            with pytest.raises(sa.exc.ProgrammingError, match="append-only"), owner.begin() as conn:
                conn.execute(sa.text(statement))
        # Archiving (the maintenance path) still removes a prefix.
        owner_store = AuditStore(owner)
        head = owner_store.head()
        assert (
            owner_store.delete_through(
                1, expected_hash=app_store.get(next(iter(app_store.scan())).id).row_hash
            )
            == 1
        )
        assert owner_store.first_seq() == 2 and owner_store.head() == head
    finally:
        app_engine.dispose()
        owner.dispose()


def test_truncate_is_refused_after_harden_for_the_owner_and_the_app_role(
    pg_url: str, roles: tuple[str, str]
) -> None:
    """TRUNCATE fires no row trigger: the statement trigger is what stops the owner (here a superuser)."""
    from custos.security.tokens import TokenStore

    app, maintenance = roles
    owner = make_engine(pg_url)
    owner_store = AuditStore(owner)
    for _ in range(3):
        owner_store.append(event())
    harden_postgres(owner, app_role=app, maintenance_role=maintenance)
    harden_postgres(owner, app_role=app, maintenance_role=maintenance)  # idempotent
    app_engine = make_engine(pg_url.replace("postgres@", f"{app}@", 1))
    try:
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), app_engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE audit_records"))
        for statement in ("TRUNCATE audit_records", "TRUNCATE audit_records CASCADE"):
            with (
                pytest.raises(sa.exc.ProgrammingError, match=r"append-only \(TRUNCATE refused\)"),
                owner.begin() as conn,
            ):
                conn.execute(sa.text(statement))
        assert_linear_chain(owner_store, 3)
        # The app role can do the server's work: migrate at head, append, and change its other tables.
        migrate(app_engine)
        app_store = AuditStore(app_engine)
        tokens = TokenStore(app_engine, app_store)
        _, info = tokens.create("svc", ["inference"], actor="test")
        tokens.revoke(info.id, actor="test")
        assert_linear_chain(app_store, 5)
    finally:
        app_engine.dispose()
        owner.dispose()
