"""``denied`` records of unauthenticated callers, aggregated per client address, status and interval.

Anyone who can reach the port can make a refused call, and each record is a hash-chained append: one record
per refusal would let an unauthenticated caller make the server write as fast as it can send. So the first
refusal of a quiet client address (one without a refusal in the last interval) is written at once, as
before, and the ones after it are counted and written as one record per interval, with the count, the first
and last time, and the methods and reasons seen. Tallies are flushed when their interval ends and at
shutdown, so no refusal goes uncounted (unless the database refuses the write, which is then logged).
Refusals of authenticated callers (permissions, capacity) name a principal and stay one record each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from custos.audit.events import AuditEvent
from custos.audit.store import AuditStore
from custos.security.peers import peer_host

log = logging.getLogger("custos.security")
UNAUTHENTICATED_ACTOR = "unauthenticated"
# A client address's tally is flushed early once this many addresses are waiting (bounds the memory).
MAX_PENDING_KEYS = 10_000


@dataclass
class _Tally:
    """Refusals of one (client address, status) since the interval began."""

    peer: str
    status: str
    opened: float  # on the monotonic clock
    first_at: datetime
    last_at: datetime
    count: int = 0
    methods: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, method: str, reason: str, at: datetime) -> None:
        self.count += 1
        self.last_at = at
        self.methods[method] += 1
        self.reasons[reason] += 1


def denied_event(
    *,
    peer: str,
    method: str,
    status: str,
    reason: str,
    at: datetime,
    actor: dict[str, object] | None = None,
    principal: str = UNAUTHENTICATED_ACTOR,
    permission: str | None = None,
    extra: dict[str, Any] | None = None,
    end_at: datetime | None = None,
) -> AuditEvent:
    """One ``denied`` record (a single refusal, or with ``extra`` an aggregate)."""
    details: dict[str, Any] = {
        "method": method,
        "reason": reason,
        "permission": permission,
        "actor": actor or {"principal": principal, "peer": peer},
    }
    details.update(extra or {})
    return AuditEvent(
        event_type="denied",
        phase="event",
        start_time=at,
        end_time=end_at or at,
        actor=principal,
        rpc=method.rsplit("/", 1)[-1],
        status=status,
        details=details,
    )


class DenialAggregator:
    """Writes unauthenticated refusals as the module docstring says; :meth:`start` runs the flushes."""

    def __init__(
        self,
        audit: AuditStore,
        executor: Executor,
        *,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._audit = audit
        self._executor = executor
        self._interval_s = interval_s
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        # (host, status) -> when its current interval began; present while the key is not quiet.
        self._open: dict[tuple[str, str], float] = {}
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._task: asyncio.Task[None] | None = None

    async def denied(self, *, peer: str, method: str, status: str, reason: str) -> None:
        """Audit one refusal of an unauthenticated call from ``peer``: at once, or in the interval's tally."""
        host = peer_host(peer)
        key = (host, status)
        at = self._now()
        mono = self._clock()
        with self._lock:
            opened = self._open.get(key)
            quiet = opened is None or (mono - opened >= self._interval_s and key not in self._tallies)
            if quiet:
                self._open[key] = mono
            else:
                tally = self._tallies.get(key)
                if tally is None:
                    tally = self._tallies[key] = _Tally(host, status, mono, at, at)
                tally.add(method, reason, at)
            overflow = self._take(lambda _t: True) if len(self._tallies) > MAX_PENDING_KEYS else []
        if quiet:
            await self._append(denied_event(peer=peer, method=method, status=status, reason=reason, at=at))
        for tally in overflow:
            await self._append(self._aggregate(tally))

    def _take(self, due: Callable[[_Tally], bool]) -> list[_Tally]:
        """Remove and return the tallies that are ``due``; forget addresses quiet for an interval."""
        mono = self._clock()
        taken = [t for t in self._tallies.values() if due(t)]
        for tally in taken:
            key = (tally.peer, tally.status)
            del self._tallies[key]
            self._open[key] = mono  # the next interval of a busy address is aggregated from its start
        for key, opened in list(self._open.items()):
            if key not in self._tallies and mono - opened >= self._interval_s:
                del self._open[key]
        return taken

    def _aggregate(self, tally: _Tally) -> AuditEvent:
        method = tally.methods.most_common(1)[0][0]
        return denied_event(
            peer=tally.peer,
            method=method,
            status=tally.status,
            reason=tally.reasons.most_common(1)[0][0],
            at=tally.first_at,
            end_at=tally.last_at,
            extra={
                "aggregated": True,
                "count": tally.count,
                "interval_s": self._interval_s,
                "methods": dict(sorted(tally.methods.items())),
                "reasons": dict(sorted(tally.reasons.items())),
            },
        )

    async def flush(self, *, all_tallies: bool = True) -> int:
        """Write the tallies (all of them, or those whose interval ended); returns the records written."""
        mono = self._clock()
        with self._lock:
            taken = self._take(lambda t: all_tallies or mono - t.opened >= self._interval_s)
        for tally in taken:
            await self._append(self._aggregate(tally))
        return len(taken)

    def pending(self) -> int:
        """Refusals counted and not yet written."""
        with self._lock:
            return sum(t.count for t in self._tallies.values())

    def start(self) -> None:
        """Flush tallies as their intervals end, until :meth:`stop`."""
        self._task = asyncio.create_task(self._run(), name="custos-denials")

    async def stop(self) -> None:
        """Stop the timer and write every tally still held (shutdown loses nothing)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self._interval_s / 2))
            try:
                await self.flush(all_tallies=False)
            except Exception as exc:  # the tally is lost only for this record; keep the timer running
                log.error(
                    "writing aggregated denials failed", extra={"fields": {"error": type(exc).__name__}}
                )

    async def _append(self, event: AuditEvent) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._audit.append, event)
