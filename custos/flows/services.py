"""The parts every flow calls, built once in app wiring, and the steps the flows share.

The steps here are the ones more than one flow takes: references of a call, admission (the purpose policy and
the per-request checks), the privacy step, each with its audited refusals, the request's audit events, digests
and metrics.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from custos.audit.errors import AuditUnavailable
from custos.audit.events import AuditEvent
from custos.engine.base import Engine
from custos.flows.context import RequestContext, in_executor
from custos.flows.errors import RequestError
from custos.flows.events import AuditEvents, call_event
from custos.flows.privacy_step import PrivacyDecision, PrivacyRefusal, PrivacyStage
from custos.flows.purposes import PurposePolicy
from custos.flows.types import Caller, GenerateCall
from custos.privacy.keys import MasterKeyProvider, blind_index
from custos.server.metrics import Metrics

T = TypeVar("T")
# Records of these event types name the model that served them.
_MODEL_EVENTS = frozenset({"generate", "classify"})


@dataclass(frozen=True)
class FlowServices:
    """Privacy step, engine, audit, keys, executor, metrics and the request policies, shared by the flows."""

    privacy: PrivacyStage
    engine: Engine
    events: AuditEvents
    keys: MasterKeyProvider
    executor: Executor
    metrics: Metrics
    retention_class: str
    purposes: PurposePolicy = field(default_factory=lambda: PurposePolicy({}))

    # ---- running blocking work ------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn`` on the executor."""
        return await in_executor(self.executor, fn, *args)

    async def timed(self, ctx: RequestContext, stage: str, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn`` on the executor and add its time to ``stage``."""
        started = time.perf_counter()
        try:
            return await self.run(fn, *args)
        finally:
            ctx.timings.add(stage, time.perf_counter() - started)

    # ---- step 0: per-request checks ------------------------------------------------------------

    async def admit(self, ctx: RequestContext, call: GenerateCall, check: Callable[[], T]) -> T:
        """Step 0 of every flow that processes text: the purpose policy, then the flow's own ``check``.

        The one admission path: the privacy step refuses a context that has not passed here, so no RPC can
        process text without the caller's purpose being checked. A refusal is audited as ``invalid``.
        """
        try:
            self.purposes.check(ctx.caller.principal, call.purpose)
            result = check()
        except RequestError as exc:
            await self.events.record_invalid(ctx.caller, ctx.rpc, exc)
            raise
        ctx.admitted = True
        return result

    # ---- step 1: privacy ------------------------------------------------------------------------

    def conversation_ref(self, caller: Caller, conversation_id: str) -> str:
        """The conversation's reference: scoped to the caller, so nothing is shared across callers."""
        return blind_index(self.keys.index_key(), "conversation", f"{caller.principal}\x00{conversation_id}")

    def subject_ref(self, caller: Caller, call: GenerateCall) -> str:
        """The subject's reference; without a subject id, an anonymous subject scoped to the conversation."""
        if call.subject_id is not None:
            return blind_index(self.keys.index_key(), "subject", call.subject_id)
        # No subject given: an anonymous subject scoped to the conversation, so erasure works the same way.
        return blind_index(
            self.keys.index_key(), "subject", f"anonymous\x00{caller.principal}\x00{call.conversation_id}"
        )

    def bind_refs(self, ctx: RequestContext, call: GenerateCall) -> None:
        """Set the context's conversation and subject references (blind indexes) for ``call``."""
        ctx.conversation_ref = self.conversation_ref(ctx.caller, call.conversation_id)
        ctx.subject_ref = self.subject_ref(ctx.caller, call)

    async def privacy_step(
        self,
        ctx: RequestContext,
        call: GenerateCall,
        *,
        event_type: str,
        record_failures: bool = True,
        extra_texts: Sequence[str] = (),
    ) -> PrivacyDecision:
        """Detect, apply the call's policy, pseudonymize with the conversation's vault.

        Binds the context's references first. A refusal (permission, blocked types, language, another
        subject's conversation) is audited before it is raised; any other failure gets a record of its own
        when ``record_failures`` (no request record exists yet). ``extra_texts`` (caller text beyond the
        call's messages and variables: ad hoc Classify labels) are pseudonymized with them, after them in
        ``anon.texts``.
        """
        if not ctx.admitted:
            raise RuntimeError("the privacy step runs only after admission (FlowServices.admit)")
        self.bind_refs(ctx, call)
        try:
            return await self._privacy(ctx, call, event_type, extra_texts)
        except (RequestError, AuditUnavailable):
            raise  # refusals are audited by the privacy step; an unreachable database records nothing
        except Exception as exc:
            if record_failures:
                await self.record_failure(ctx, stage="privacy", error=exc)
            raise

    async def _privacy(
        self, ctx: RequestContext, call: GenerateCall, event_type: str, extra_texts: Sequence[str]
    ) -> PrivacyDecision:
        conversation_ref, subject_ref = ctx.bound_refs()
        try:
            self.privacy.check_reidentify(ctx.caller, call.reidentify)
            return await self.timed(
                ctx,
                "privacy",
                lambda: self.privacy.run(
                    [*call.privacy_texts(), *extra_texts],
                    conversation_ref,
                    mode="block" if call.privacy_mode == "block" else "mask",
                    block_entities=call.block_entities,
                    reidentify=call.reidentify,
                    subject_ref=subject_ref,
                    deadline=ctx.deadline,
                ),
            )
        except PrivacyRefusal as refusal:
            event = self.event(
                ctx,
                "event",
                status=refusal.error.status,
                event_type=event_type if refusal.event_type == "generate" else refusal.event_type,
                details={**refusal.details, "reason": refusal.error.message},
                **ctx.refs(),
            )
            await self.events.append(event)
            raise refusal.error from None

    async def record_failure(self, ctx: RequestContext, *, stage: str, error: BaseException) -> None:
        """Audit a request that failed before its request record existed; the error's text is never kept."""
        event = self.event(
            ctx,
            "event",
            status="INTERNAL",
            event_type="generate",
            details={"failed_stage": stage, "error_type": type(error).__name__},
        )
        with contextlib.suppress(AuditUnavailable):  # the caller gets an error either way
            await self.events.append(event)

    # ---- audit records, digests, metrics --------------------------------------------------------

    def event(
        self,
        ctx: RequestContext,
        phase: str,
        *,
        status: str,
        event_type: str,
        details: Mapping[str, Any],
        request_id: str | None = None,
        conversation_ref: str | None = None,
        subject_ref: str | None = None,
        transcript_id: str | None = None,
    ) -> AuditEvent:
        """A record of the call in ``ctx``; Generate and Classify records name the model."""
        return call_event(
            ctx,
            phase,
            status=status,
            event_type=event_type,
            details=details,
            model=self.engine.info.name if event_type in _MODEL_EVENTS else None,
            request_id=request_id,
            conversation_ref=conversation_ref,
            subject_ref=subject_ref,
            transcript_id=transcript_id,
        )

    def digest(self, kind: str, text: str) -> str:
        """A keyed digest of ``text`` for the audit record (prompts, answers, comments): never the text."""
        return blind_index(self.keys.index_key(), kind, text)

    def count_findings(self, counts: Mapping[str, int]) -> None:
        """Count the entity types found, in metrics."""
        for entity_type, count in counts.items():
            self.metrics.pii_entities.labels(entity_type=entity_type).inc(count)

    def observe_stages(self, ctx: RequestContext) -> None:
        """Report the request's stage latencies in metrics."""
        for stage, seconds in ctx.timings.stages.items():
            self.metrics.stage_latency.labels(stage=stage).observe(seconds)
