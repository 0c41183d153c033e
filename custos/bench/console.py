"""``custos bench console``: page latency of the compliance console on a realistic audit log.

The log is the one ``custos bench audit --records`` builds (:func:`custos.bench.audit_log.build_log`: the
rows a busy server writes, hashed and chained), on PostgreSQL or SQLite, with a signed checkpoint of its head
and a passed verification recorded, so the record and chain pages show what they show in production. The
console's app (the same :class:`~custos.console.app.ConsoleApp` the server runs) is driven in-process over
ASGI by an httpx client holding a signed-in session: every page is rendered from the database, audited, and
measured from request to last byte (TLS and the network are not part of the number). Each page case runs
``runs`` times with a varying argument; p50 and p99 are reported against the goal (p50 <= 200 ms).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from custos.audit.checkpoints import SIGNING_KEY_FILE, CheckpointSigner
from custos.audit.store import TranscriptStore
from custos.audit.trail import AuditTrail
from custos.bench.audit import _database, _fresh_store
from custos.bench.audit_log import LogSample, build_log
from custos.console.app import ConsoleApp, ConsoleDeps, build_console_app
from custos.flows.subject_access import SubjectAccess
from custos.privacy.erasure import ErasureLedger, SubjectService
from custos.security.auth import AccessControl, Authenticator
from custos.security.limits import CapacityLimiter
from custos.security.tokens import TokenStore
from custos.server.keys import open_master_keys
from custos.server.settings import load_settings
from custos.tasks.feedback import FeedbackStore

GOAL_PAGE_P50_MS = 200.0
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass(frozen=True)
class PageRow:
    """Latency of one page case over its runs."""

    page: str
    p50_ms: float
    p99_ms: float
    cold_ms: float
    runs: int
    status: int

    @property
    def met(self) -> bool:
        """The p50 goal is met (and the page answered 200)."""
        return self.status == 200 and self.p50_ms <= GOAL_PAGE_P50_MS


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def page_cases(sample: LogSample) -> list[tuple[str, Callable[[int], str]]]:
    """(name, path of run i): the pages an officer opens, each over varying records and filters."""
    ids = sample.request_ids or sample.ids
    hour = sample.last_time.replace(minute=0, second=0, microsecond=0)

    def pick(pool: list[str]) -> Callable[[int], str]:
        return lambda i: pool[i % len(pool)]

    request_id, record_id = pick(ids), pick(sample.ids)
    return [
        ("search: latest records", lambda i: "/search?all=1"),
        ("search: by request id", lambda i: f"/search?request_id={request_id(i)}"),
        ("search: principal + event type", lambda i: "/search?principal=svc:crm&event_type=generate"),
        ("search: entity type + status", lambda i: "/search?entity_type=EMAIL_ADDRESS&status=OK"),
        ("search: last hour", lambda i: f"/search?since={hour.strftime('%Y-%m-%dT%H:%M')}"),
        ("search: purpose", lambda i: "/search?purpose=billing"),
        ("record page", lambda i: f"/records/{record_id(i)}"),
        ("chain status", lambda i: "/chain"),
        ("reports", lambda i: "/reports"),
    ]


@contextmanager
def _console(
    url: str, data_dir: Path, records: int, say: Callable[[str], None]
) -> Iterator[tuple[ConsoleApp, str, LogSample]]:
    store, engine = _fresh_store(url, group_commit=False)
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bench-console")
    try:
        CheckpointSigner.create(data_dir / SIGNING_KEY_FILE)
        say(f"log: building {records:,} realistic records")
        sample, _ = build_log(engine, records, say=say)
        trail = AuditTrail.open(store, data_dir)
        # The built log has no checkpoint yet: sign its head as `custos audit record-restore` would.
        trail.writer.write("restore", note="custos bench console: the built log's head")
        say("log: verifying once (the record pages then show 'verified through checkpoint N')")
        trail.verify_recorded()
        settings = load_settings(data_dir=data_dir)
        keys = open_master_keys(settings)
        tokens = TokenStore(engine, store)
        token, _ = tokens.create("officer:bench", ["compliance"], actor="bench")
        deps = ConsoleDeps(
            access=AccessControl(
                authenticator=Authenticator(tokens, {}),
                limiter=CapacityLimiter(rate=1e6, burst=1_000_000, max_in_flight=1000),
                audit=store,
                executor=executor,
            ),
            trail=trail,
            subjects=SubjectAccess(
                audit=store,
                transcripts=TranscriptStore(engine),
                keys=keys,
                subjects=SubjectService(engine, keys, store, ErasureLedger.beside_checkpoints(data_dir)),
                executor=executor,
            ),
            keys=keys,
            feedback=FeedbackStore(engine),
            executor=executor,
        )
        yield ConsoleApp(deps), token, sample
    finally:
        executor.shutdown(wait=True)
        engine.dispose()


async def _measure(console: ConsoleApp, token: str, sample: LogSample, runs: int) -> list[PageRow]:
    transport = httpx.ASGITransport(app=build_console_app(console))
    async with httpx.AsyncClient(transport=transport, base_url="https://console.bench") as client:
        form = await client.get("/signin")
        found = _CSRF.search(form.text)
        assert found is not None
        signed = await client.post("/signin", data={"csrf": found.group(1), "token": token})
        if signed.status_code != 303:
            raise RuntimeError(f"bench sign-in failed with HTTP {signed.status_code}")
        rows: list[PageRow] = []
        for name, path in page_cases(sample):
            started = time.perf_counter()
            await client.get(path(0))  # cold: first statement preparation, template compilation, caches
            cold = (time.perf_counter() - started) * 1000
            times: list[float] = []
            status = 200
            for i in range(runs):
                started = time.perf_counter()
                response = await client.get(path(i + 1))
                await response.aread()
                times.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    status = response.status_code
            rows.append(
                PageRow(
                    page=name,
                    p50_ms=statistics.median(times),
                    p99_ms=_percentile(times, 0.99),
                    cold_ms=cold,
                    runs=runs,
                    status=status,
                )
            )
        return rows


def run_console_bench(
    *, records: int, runs: int, postgres_url: str | None, say: Callable[[str], None]
) -> tuple[list[PageRow], list[str]]:
    """Build the log, sign in, measure every page case; the rows and notes for the report."""
    backend = "postgresql" if postgres_url else "sqlite"
    notes = [
        f"log: {records:,} records on {'PostgreSQL' if postgres_url else 'SQLite'}; {runs} runs per page"
    ]
    with (
        tempfile.TemporaryDirectory(prefix="custos-bench-console-") as tmp,
        _database(backend, postgres_url or "") as url,
        _console(url, Path(tmp), records, say) as (console, token, sample),
    ):
        say("pages: measuring")
        rows = asyncio.run(_measure(console, token, sample, runs))
        console.stop()
    notes.append(f"goal: every page p50 <= {GOAL_PAGE_P50_MS:.0f} ms (in-process ASGI, no TLS)")
    return rows, notes
