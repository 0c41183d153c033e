"""The console's verification job: one at a time, incremental from the last verified checkpoint, cancellable.

A job first signs a checkpoint of the current head (as an export does), so that everything recorded up to the
click is covered, then runs :meth:`AuditTrail.verify_recorded` with ``incremental=True`` on a thread of its
own (a long verification must not hold a worker of the request executor). Progress is the number of records
checked; cancelling stops it at the next progress report (every thousand records). Each finished job is
handed to ``on_finish`` (the console audits it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from custos.audit.incremental import read_state, state_path
from custos.audit.trail import AuditTrail

log = logging.getLogger("custos.console")


class JobRunning(Exception):
    """A verification is already running."""


class _Cancelled(Exception):
    pass


@dataclass(frozen=True)
class JobStatus:
    """Where a verification job stands (``running``, ``passed``, ``failed``, ``cancelled`` or ``error``)."""

    number: int
    state: str
    started_by: str
    started_at: datetime
    done: int = 0
    total: int = 0
    finished_at: datetime | None = None
    mode: str = ""
    checked: int = 0
    checkpoints: int = 0
    incomplete: int = 0
    first_bad_seq: int | None = None
    reason: str = ""
    note: str = ""

    @property
    def running(self) -> bool:
        """Still going."""
        return self.state == "running"

    @property
    def percent(self) -> int:
        """Progress in whole percent (100 once finished)."""
        if not self.running:
            return 100
        if self.total <= 0:
            return 0
        return min(99, int(100 * self.done / self.total))

    def to_json(self) -> dict[str, object]:
        """What the progress endpoint returns (no record content: counts and states only)."""
        return {
            "number": self.number,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "percent": self.percent,
            "mode": self.mode,
            "checked": self.checked,
            "checkpoints": self.checkpoints,
            "incomplete": self.incomplete,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
        }


class VerificationJobs:
    """At most one verification at a time over ``trail``; the latest job's status is kept."""

    def __init__(self, trail: AuditTrail, on_finish: Callable[[JobStatus], None]) -> None:
        self._trail = trail
        self._on_finish = on_finish
        self._lock = threading.Lock()
        self._status: JobStatus | None = None
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._count = 0

    def status(self) -> JobStatus | None:
        """The running or the last job."""
        with self._lock:
            return self._status

    def start(self, principal: str) -> JobStatus:
        """Start a job; raises :class:`JobRunning` while one runs."""
        with self._lock:
            if self._status is not None and self._status.running:
                raise JobRunning()
            self._count += 1
            self._cancel.clear()
            self._status = JobStatus(
                number=self._count, state="running", started_by=principal, started_at=datetime.now(UTC)
            )
            status = self._status
            self._thread = threading.Thread(target=self._run, name="custos-console-verify", daemon=True)
            self._thread.start()
        return status

    def cancel(self) -> bool:
        """Ask the running job to stop; ``False`` when none runs."""
        with self._lock:
            if self._status is None or not self._status.running:
                return False
        self._cancel.set()
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel and wait for the running job (at shutdown)."""
        self.cancel()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _update(self, **changes: object) -> JobStatus:
        with self._lock:
            assert self._status is not None
            self._status = replace(self._status, **changes)  # type: ignore[arg-type]
            return self._status

    def _progress(self, done: int) -> None:
        if self._cancel.is_set():
            raise _Cancelled()
        self._update(done=done)

    def _run(self) -> None:
        trail = self._trail
        try:
            trail.writer.maybe_write(force=True)
            head = trail.store.head().seq
            state = read_state(state_path(trail.log), trail.public_key)
            self._update(total=max(0, head - (state.seq if state is not None else 0)))
            if self._cancel.is_set():
                raise _Cancelled()
            result = trail.verify_recorded(incremental=True, progress=self._progress)
        except _Cancelled:
            final = self._update(state="cancelled", finished_at=datetime.now(UTC))
        except Exception as exc:  # the job must report, whatever went wrong; logged by type only
            log.error("console verification failed: %s", type(exc).__name__)
            final = self._update(state="error", reason=type(exc).__name__, finished_at=datetime.now(UTC))
        else:
            report = result.report
            final = self._update(
                state="passed" if report.ok else "failed",
                finished_at=datetime.now(UTC),
                mode=result.mode,
                checked=report.count,
                done=report.count,
                total=report.count,  # records appended while it ran are checked too
                checkpoints=result.checkpoints,
                incomplete=report.incomplete,
                first_bad_seq=report.first_bad_seq,
                reason=report.reason,
                note=result.note,
            )
        try:
            self._on_finish(final)
        except Exception as exc:
            log.error("could not record the console verification: %s", type(exc).__name__)


def wait_finished(jobs: VerificationJobs, timeout: float) -> JobStatus | None:
    """Poll until no job runs (tests and the benchmark); the last status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs.status()
        if status is None or not status.running:
            return status
        time.sleep(0.02)
    return jobs.status()
