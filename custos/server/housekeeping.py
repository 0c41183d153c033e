"""Periodic housekeeping of the server: expired rows deleted, checkpoints signed, transcripts purged.

An expired vault row or reply is never read (``ConversationVault`` treats it as empty, a retry past
``idempotency_ttl_s`` is a new call), but it still holds sealed personal data until it is deleted; the purge
makes "forgotten after ``vault_ttl_seconds``" and "kept for ``idempotency_ttl_s``" true on disk too, within
``vault_purge_interval_s``. Signed audit checkpoints and the transcript retention purge run on timers here
too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

log = logging.getLogger("custos.housekeeping")


class VaultPurgeTask:
    """Runs ``purge`` (returns rows deleted) every ``interval_s`` seconds on ``executor``, first at start.

    ``what`` names the rows in log lines (``"vault rows"``, ``"idempotency replies"``).

    ``on_purged`` receives the count of each successful run (metrics); ``on_failure`` is called when a run
    raises. A failed run is logged by exception type only and retried at the next tick; it never stops the
    task or the server.
    """

    def __init__(
        self,
        purge: Callable[[], int],
        *,
        interval_s: float,
        executor: Executor,
        on_purged: Callable[[int], None] = lambda _count: None,
        on_failure: Callable[[], None] = lambda: None,
        what: str = "vault rows",
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._purge = purge
        self._interval_s = interval_s
        self._executor = executor
        self._on_purged = on_purged
        self._on_failure = on_failure
        self._what = what
        self._task: asyncio.Task[None] | None = None
        #: Successful runs so far (for tests and diagnostics).
        self.runs = 0

    def start(self) -> None:
        """Start the periodic task on the running event loop."""
        self._task = asyncio.create_task(self._run(), name=f"custos-purge-{self._what.replace(' ', '-')}")

    async def stop(self) -> None:
        """Stop the task; a purge already running on the executor finishes on its own."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> int | None:
        """Purge now; return rows deleted, or None when the purge failed."""
        loop = asyncio.get_running_loop()
        try:
            count = await loop.run_in_executor(self._executor, self._purge)
        except Exception as exc:  # keep serving; the next tick retries
            self._on_failure()
            fields = {"what": self._what, "error": type(exc).__name__}
            log.error("purging expired rows failed", extra={"fields": fields})
            return None
        self.runs += 1
        self._on_purged(count)
        if count:
            log.info("purged expired rows", extra={"fields": {"what": self._what, "rows": count}})
        return count

    async def _run(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self._interval_s)


async def checkpoint_timer(maybe_write: Callable[[], object], *, every_s: float, executor: Executor) -> None:
    """Call ``maybe_write`` (writes a signed checkpoint when one is due) every ``every_s`` on ``executor``."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every_s)
        try:
            await loop.run_in_executor(executor, maybe_write)
        except Exception as exc:  # keep serving; the next tick retries
            log.error("writing an audit checkpoint failed", extra={"fields": {"error": type(exc).__name__}})


async def retention_timer(purge: Callable[[], Awaitable[int]], *, every_s: float) -> None:
    """Run the transcript retention ``purge`` at start and then every ``every_s`` seconds."""
    while True:
        try:
            await purge()
        except Exception as exc:  # keep serving; the next round retries
            log.error("transcript retention purge failed", extra={"fields": {"error": type(exc).__name__}})
        await asyncio.sleep(every_s)
