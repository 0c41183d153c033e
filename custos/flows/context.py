"""The per-request context: one record a flow passes from step to step instead of long parameter lists.

A :class:`RequestContext` is made by the edge for each call (who, which RPC, the deadline) and filled in
by the flow as it goes (the conversation and subject references, the time each stage took).

Every call has one request id, :class:`CallIds`, bound by the edge for the whole call: the first audit
record the call writes (its request record, or its single event) takes it as its id, so the id in log lines,
error messages and the ``x-request-id`` trailer is the audit record's ``request_id``. A caller's own
``x-request-id`` is kept beside it (:func:`accept_client_request_id`), never used as it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from custos.flows.types import Caller

T = TypeVar("T")
#: A trace attribute's value, as OpenTelemetry takes them.
AttributeValue = str | bool | int | float | Sequence[str] | Sequence[int] | Sequence[float]
#: The longest ``x-request-id`` of a caller that is recorded (longer ones are ignored).
MAX_CLIENT_REQUEST_ID = 128


def new_request_id() -> str:
    """A fresh request id: a uuid4 in its 36-character form, like every audit record id."""
    return str(uuid.uuid4())


def accept_client_request_id(value: object) -> str | None:
    """The caller's ``x-request-id`` if it may be recorded: 1..128 visible ASCII characters, else None.

    The value comes from the caller and is only ever recorded beside our id; anything else (control or
    non-ASCII characters, spaces, an overlong value) is dropped rather than stored.
    """
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CLIENT_REQUEST_ID:
        return None
    if not all("!" <= ch <= "~" for ch in value):
        return None
    return value


class CallObserver(Protocol):
    """What watches a call from the edge (its trace, ``custos.telemetry.tracing``): stages and attributes.

    The flow reports the same stage timings as the audit record's ``latency_ms`` and a few safe attributes
    (ids, counts, model names); never message text.
    """

    def stage(self, name: str, start: float, end: float) -> None:
        """Stage ``name`` ran from ``start`` to ``end`` (``time.perf_counter`` seconds)."""

    def annotate(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Attributes of the call (``gen_ai.*`` names)."""


@dataclass
class CallIds:
    """The ids of one call: ours (the audit record's) and the caller's own, if it sent a valid one."""

    request_id: str = field(default_factory=new_request_id)
    client_request_id: str | None = None
    #: The call's trace id (32 hex digits) when tracing is on: log lines carry it.
    trace_id: str | None = None
    #: The call's trace when tracing is on; ``None`` (tracing off): nothing observes the call.
    observer: CallObserver | None = field(default=None, repr=False, compare=False)
    _claimed: bool = field(default=False, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def claim(self) -> str | None:
        """The request id for the call's first audit record; None for any later one (it gets its own id)."""
        with self._lock:
            if self._claimed:
                return None
            self._claimed = True
            return self.request_id

    def audit_details(self) -> dict[str, str]:
        """What every record of the call notes beside our id: the caller's own request id, if any."""
        return {} if self.client_request_id is None else {"client_request_id": self.client_request_id}


_CALL: contextvars.ContextVar[CallIds | None] = contextvars.ContextVar("custos_call_ids", default=None)


def bind_call(ids: CallIds) -> contextvars.Token[CallIds | None]:
    """Make ``ids`` the current call's ids in this context (the edge does, for each call)."""
    return _CALL.set(ids)


def unbind_call(token: contextvars.Token[CallIds | None]) -> None:
    """Undo :func:`bind_call`."""
    _CALL.reset(token)


def current_call() -> CallIds | None:
    """The ids of the call running in this context, if the edge bound them."""
    return _CALL.get()


def _call_ids() -> CallIds:
    return current_call() or CallIds()


def utc_now() -> datetime:
    """The wall clock of audit records: timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass
class Timings:
    """Seconds per stage, reported in the completion record and in metrics."""

    stages: dict[str, float] = field(default_factory=dict)
    #: Told of every stage interval (the call's trace); ``None`` when tracing is off.
    observer: CallObserver | None = field(default=None, repr=False, compare=False)

    def add(self, stage: str, seconds: float, *, start: float | None = None) -> None:
        """Add ``seconds`` to ``stage``; it started at ``start`` (``time.perf_counter``), else just ended."""
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds
        if self.observer is not None:
            end = time.perf_counter() if start is None else start + seconds
            self.observer.stage(stage, end - seconds, end)

    def as_ms(self) -> dict[str, float]:
        """Milliseconds per stage, as the audit record keeps them."""
        return {stage: round(seconds * 1000, 3) for stage, seconds in self.stages.items()}


@dataclass
class RequestContext:
    """One call on its way through a flow: caller, RPC, clock, timings and the references it touches."""

    caller: Caller
    rpc: str
    #: The caller's deadline on the monotonic clock, if it set one.
    deadline: float | None = None
    #: The call's request id (bound by the edge; a fresh one outside a call).
    ids: CallIds = field(default_factory=_call_ids)
    clock: Callable[[], datetime] = utc_now
    timings: Timings = field(default_factory=Timings)
    #: Blind indexes of the call's conversation and subject, once the flow has computed them.
    conversation_ref: str | None = None
    subject_ref: str | None = None
    #: When the call was taken (on ``clock``); the start time of its audit records.
    start_time: datetime = field(init=False)

    def __post_init__(self) -> None:
        self.start_time = self.clock()
        if self.timings.observer is None:
            self.timings.observer = self.ids.observer

    def annotate(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Tell the call's observer (its trace, if tracing is on) these attributes; ids and counts only."""
        if self.ids.observer is not None:
            self.ids.observer.annotate(attributes)

    @property
    def request_id(self) -> str:
        """The call's request id: the id of its first audit record, in its logs, errors and trailers."""
        return self.ids.request_id

    def now(self) -> datetime:
        """The current time on this request's clock."""
        return self.clock()

    def bound_refs(self) -> tuple[str, str]:
        """(conversation_ref, subject_ref); the flow binds them before its first step that needs them."""
        if self.conversation_ref is None or self.subject_ref is None:
            raise RuntimeError("the request's references are not bound yet")
        return self.conversation_ref, self.subject_ref

    def refs(self) -> dict[str, str | None]:
        """The conversation and subject references, as keyword arguments of an audit event."""
        return {"conversation_ref": self.conversation_ref, "subject_ref": self.subject_ref}


async def in_executor(executor: Executor, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking ``fn`` (analysis, database, the model) on ``executor``, never on the event loop.

    ``fn`` runs in a copy of the caller's context, so the call's ids (and log lines) follow it to the thread.
    """
    run = functools.partial(contextvars.copy_context().run, fn, *args)
    return await asyncio.get_running_loop().run_in_executor(executor, run)
