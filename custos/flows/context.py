"""The per-request context: one record a flow passes from step to step instead of long parameter lists.

A :class:`RequestContext` is made by the edge for each call (who, which RPC, the deadline) and filled in
by the flow as it goes (the conversation and subject references, the time each stage took).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from custos.flows.types import Caller

T = TypeVar("T")


def utc_now() -> datetime:
    """The wall clock of audit records: timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass
class Timings:
    """Seconds per stage, reported in the completion record and in metrics."""

    stages: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to ``stage``."""
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

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
    clock: Callable[[], datetime] = utc_now
    timings: Timings = field(default_factory=Timings)
    #: Blind indexes of the call's conversation and subject, once the flow has computed them.
    conversation_ref: str | None = None
    subject_ref: str | None = None
    #: When the call was taken (on ``clock``); the start time of its audit records.
    start_time: datetime = field(init=False)

    def __post_init__(self) -> None:
        self.start_time = self.clock()

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
    """Run blocking ``fn`` (analysis, database, the model) on ``executor``, never on the event loop."""
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
