"""Generate and GenerateStream: the request flow of docs/architecture.md in one function.

0 checks (purpose, task) -> 1 privacy -> 2 request record -> 3 generate -> 4 output guard -> 5 transcript ->
6 completion record. :meth:`GenerateFlow._stream` shows every step; the unary call collects the stream.
Blocking work (analysis, database, the model) runs on the executor, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import Executor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from custos.audit.events import StoredRecord
from custos.audit.store import SealedTranscript
from custos.engine.base import Engine
from custos.engine.types import ChatTurn, EngineError, GenerationResult
from custos.flows.context import RequestContext
from custos.flows.errors import InvalidArgument
from custos.flows.idempotency import IdempotencyConflict, IdempotencyStore
from custos.flows.services import FlowServices
from custos.flows.status import map_error
from custos.flows.types import (
    GenerateCall,
    GenerateOutcome,
    StreamDelta,
    StreamEvent,
    StreamFinished,
    StreamStarted,
    TemplateRef,
)
from custos.privacy.envelope import read_header
from custos.privacy.pseudonymize import Pseudonymized
from custos.privacy.subject_keys import SubjectKeyStore
from custos.privacy.transcripts import TRANSCRIPT_FORMAT, seal_transcript
from custos.tasks.labels import LabelSetRegistry
from custos.tasks.templates import (
    CONVERSATION,
    TaskTemplate,
    TemplateError,
    TemplateRegistry,
    conversation_text,
)

_DEADLINE_SLACK_S = 0.05  # the caller's and our clock reading of one deadline differ by the call's transit
_STREAM_RPC = "GenerateStream"


def cache_scope(key: bytes, principal: str, conversation_id: str) -> str:
    """A keyed digest of caller and conversation: the engine reuses a prompt's cache only within it.

    Neither identifier can be read back from it, and without the key no one can compute another caller's.
    """
    message = f"{len(principal)}:{principal}\x00{conversation_id}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class GenerateFlow:
    """Answer a conversation, or a task's template filled with its variables; audited and fail-closed."""

    def __init__(
        self,
        services: FlowServices,
        *,
        subject_keys: SubjectKeyStore,
        templates: TemplateRegistry,
        label_sets: LabelSetRegistry,
        idempotency: IdempotencyStore | None = None,
    ) -> None:
        self._services = services
        self._subject_keys = subject_keys
        self.templates = templates
        self._label_sets = label_sets
        self._idempotency = idempotency
        # Keys the engine's prompt cache per caller and conversation; random per process, as the cache is.
        self._cache_scope_key = secrets.token_bytes(32)

    def cache_scope(self, ctx: RequestContext, call: GenerateCall) -> str:
        """The engine's prompt-cache scope of this caller's conversation (see :func:`cache_scope`)."""
        return cache_scope(self._cache_scope_key, ctx.caller.principal, call.conversation_id)

    async def generate(
        self, ctx: RequestContext, call: GenerateCall, *, request_bytes: bytes = b""
    ) -> GenerateOutcome:
        """Run a unary Generate; the answer is returned only after its completion record is committed.

        With an idempotency key, a retry of the same request (``request_bytes`` as received) gets the first
        call's answer, after a ``replay`` record naming the first call's request is committed; a key reused
        for a different request is refused and audited.
        """
        template = await self._services.admit(ctx, call, lambda: self._check(ctx, call))
        if call.idempotency_key is not None and self._idempotency is not None:
            # The subject is known before the key is claimed: the claim row names it, so erasure finds it.
            self._services.bind_refs(ctx, call)
            _, subject_ref = ctx.bound_refs()
            try:
                result = await self._idempotency.run(
                    ctx.caller,
                    call.idempotency_key,
                    request_bytes,
                    subject_ref,
                    lambda: self._collect(ctx, call),
                )
            except IdempotencyConflict as exc:
                await self._services.events.record_invalid(ctx.caller, ctx.rpc, exc)
                raise
            outcome = result.outcome
            if result.replayed:
                await self._record_replay(ctx, call, outcome)
        else:
            outcome = await self._collect(ctx, call)
        if template is None:
            return outcome
        return replace(outcome, template=TemplateRef(template.id, template.version, template.sha256))

    async def generate_stream(
        self, ctx: RequestContext, call: GenerateCall
    ) -> AsyncGenerator[StreamEvent, None]:
        """Check the call, then return its stream of events; every way out leaves a completion record."""
        await self._services.admit(ctx, call, lambda: self._check(ctx, call))
        return self._stream(ctx, call)

    async def _record_replay(self, ctx: RequestContext, call: GenerateCall, outcome: GenerateOutcome) -> None:
        """Audit a replay before its answer leaves: who got which earlier request's stored answer."""
        services = self._services
        event = services.event(
            ctx,
            "event",
            status="OK",
            event_type="replay",
            details={
                "original_request_id": outcome.request_id,
                "reidentified": call.reidentify,
                "retention_class": services.retention_class,
            },
            **ctx.refs(),
        )
        await services.timed(ctx, "audit", services.events.store.append, event)

    # ---- step 0 ---------------------------------------------------------------------------------

    def _check(self, ctx: RequestContext, call: GenerateCall) -> TaskTemplate | None:
        """Checks after the purpose policy: no key on streams, a known task and its variables."""
        if ctx.rpc == _STREAM_RPC and call.idempotency_key is not None:
            raise InvalidArgument("idempotency_key", "only Generate accepts an idempotency key")
        return self.task_of(call)

    def task_of(self, call: GenerateCall) -> TaskTemplate | None:
        """The call's template after checking its variables; InvalidArgument naming the field otherwise."""
        if call.task is None:
            return None
        try:
            template = self.templates.get(call.task)
            template.check_variables([n for n, _ in call.variables], has_messages=bool(call.turns))
        except TemplateError as exc:
            raise InvalidArgument(exc.field, exc.problem) from None
        return template

    # ---- the flow -------------------------------------------------------------------------------

    async def _collect(self, ctx: RequestContext, call: GenerateCall) -> GenerateOutcome:
        parts: list[str] = []
        started: StreamStarted | None = None
        finished: StreamFinished | None = None
        async for event in self._stream(ctx, call):
            if isinstance(event, StreamStarted):
                started = event
            elif isinstance(event, StreamDelta):
                parts.append(event.text)
            else:
                finished = event
        assert started is not None and finished is not None  # the stream always starts and ends
        return GenerateOutcome(
            request_id=started.request_id,
            text="".join(parts),
            finish_reason=finished.finish_reason,
            prompt_tokens=finished.prompt_tokens,
            completion_tokens=finished.completion_tokens,
            redaction=started.redaction,
        )

    async def _stream(self, ctx: RequestContext, call: GenerateCall) -> AsyncGenerator[StreamEvent, None]:
        services = self._services
        # 1 privacy: detect, apply the request's policy, pseudonymize with the conversation's vault.
        decision = await services.privacy_step(ctx, call, event_type="generate")
        anon = decision.anon
        services.count_findings(anon.counts())
        ctx.annotate(self._trace_attributes(ctx, call))

        # 2 audit: the request record is durable before any model output exists.
        request_record = await services.timed(
            ctx,
            "audit",
            services.events.store.append,
            services.event(
                ctx,
                "request",
                status="OK",
                event_type="generate",
                details={**self._request_details(call, anon), **decision.audit},
                **ctx.refs(),
            ),
        )
        request_id = request_record.id
        yield StreamStarted(request_id=request_id, redaction=anon.counts())

        # 3 generate from the anonymized conversation; 4 guard: restore placeholders only when asked.
        anon_turns = self._model_turns(call, anon)
        restorer = services.privacy.restorer(
            anon.mapping, reidentify=call.reidentify, language=decision.audit["privacy_policy"]["language"]
        )
        scoped = replace(call, params=replace(call.params, cache_scope=self.cache_scope(ctx, call)))
        run = _EngineRun(services.engine, services.executor, anon_turns, scoped, ctx.deadline)
        sent: list[str] = []
        status = "INTERNAL"
        engine_error: str | None = None
        try:
            async for delta in run.deltas():
                safe = await services.run(restorer.feed, delta)
                if safe:
                    sent.append(safe)
                    yield StreamDelta(safe)
            tail = await services.run(restorer.flush)
            if tail:
                sent.append(tail)
                yield StreamDelta(tail)
            status = run.status()
        except EngineError as exc:
            # The engine's own refusal or fault (a full queue, an upstream down, slow or broken).
            mapped = map_error(exc, request_id)
            status, engine_error = mapped.status, mapped.reason
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # gRPC cancels the handler when the caller's deadline passes; the record says which it was.
            expired = ctx.deadline is not None and time.monotonic() >= ctx.deadline - _DEADLINE_SLACK_S
            status = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
            raise
        finally:
            if status != "OK":
                run.cancel.set()
            # 5 transcript (raw + anonymized) sealed; 6 completion record. Shielded: a caller that goes away
            # cannot skip its own audit record.
            guard = restorer.report.to_audit()
            completion = asyncio.ensure_future(
                self._complete(ctx, call, request_id, anon, run, "".join(sent), status, guard, engine_error)
            )
            await asyncio.shield(completion)
        result = run.result()
        yield StreamFinished(
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )

    # ---- steps ----------------------------------------------------------------------------------

    def _model_turns(self, call: GenerateCall, anon: Pseudonymized) -> tuple[ChatTurn, ...]:
        """What the engine gets: the anonymized messages, or the task's template filled with them."""
        count = len(call.turns)
        turns = tuple(
            ChatTurn(role=t.role, content=text)
            for t, text in zip(call.turns, anon.texts[:count], strict=True)
        )
        template = self.task_of(call)
        if template is None:
            return turns
        values = dict(zip([n for n, _ in call.variables], anon.texts[count:], strict=True))
        if CONVERSATION in template.required and CONVERSATION not in values:
            values[CONVERSATION] = conversation_text(turns)
        catalogue: list[str] = []
        if template.catalogue is not None:
            catalogue = self._label_sets.get(template.catalogue).names
        return template.render(values, catalogue=catalogue)

    async def _complete(
        self,
        ctx: RequestContext,
        call: GenerateCall,
        request_id: str,
        anon: Pseudonymized,
        run: _EngineRun,
        answer: str,
        status: str,
        guard: dict[str, Any],
        engine_error: str | None = None,
    ) -> StoredRecord:
        """Steps 5 and 6: seal the transcript and commit it with the completion record."""
        services = self._services
        result = await run.settled()
        # The engine's stages follow one another from the moment the run was submitted.
        ctx.timings.add("queue", run.queued_seconds, start=run.submitted)
        prefill_start = run.submitted + run.queued_seconds
        ctx.timings.add("prefill", result.prefill_seconds, start=prefill_start)
        ctx.timings.add("decode", result.decode_seconds, start=prefill_start + result.prefill_seconds)
        ctx.annotate(
            {
                "gen_ai.response.model": services.engine.info.name,
                "gen_ai.response.finish_reasons": [result.finish_reason],
                "gen_ai.usage.input_tokens": result.prompt_tokens,
                "gen_ai.usage.output_tokens": result.completion_tokens,
            }
        )
        transcript_id = str(uuid.uuid4())
        transcript = await services.timed(
            ctx, "transcript", self._seal_transcript, ctx, transcript_id, call, anon, result.text, answer
        )
        details = {
            "request_id": request_id,
            "error": None if status in ("OK", "CANCELLED", "DEADLINE_EXCEEDED") else "generation failed",
            "finish_reason": result.finish_reason,
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens},
            "confidence": {"mean_logprob": result.mean_logprob, "min_logprob": result.min_logprob},
            "answer_digest": services.digest("answer", result.text),
            "reidentified": call.reidentify,
            "output_guard": guard or {},
            "transcript": {
                "id": transcript_id,
                "key_version": transcript.key_version,
                "format": transcript.format_version,
            },
            "latency_ms": ctx.timings.as_ms(),
            "retention_class": services.retention_class,
        }
        if engine_error is not None:
            details["engine_error"] = engine_error  # a fixed reason token, e.g. upstream_stream_cut
        event = services.event(
            ctx,
            "completion",
            status=status,
            event_type="generate",
            request_id=request_id,
            transcript_id=transcript_id,
            details=details,
            **ctx.refs(),
        )
        # The transcript row and the completion record commit together or not at all.
        started = time.perf_counter()
        record = await services.events.append_with(event, transcript)
        ctx.timings.add("audit", time.perf_counter() - started)
        services.observe_stages(ctx)
        services.metrics.count_generation(
            services.engine.info.name,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            finish_reason=result.finish_reason,
            status=status,
        )
        return record

    def _seal_transcript(
        self,
        ctx: RequestContext,
        transcript_id: str,
        call: GenerateCall,
        anon: Pseudonymized,
        model_text: str,
        answer: str,
    ) -> SealedTranscript:
        plaintext = json.dumps(
            {
                "format": TRANSCRIPT_FORMAT,
                "messages": [{"role": t.role, "content": t.content} for t in call.turns],
                "anonymized_messages": [
                    {"role": t.role, "content": text}
                    for t, text in zip(call.turns, anon.texts[: len(call.turns)], strict=True)
                ],
                "task": call.task,
                "variables": dict(call.variables),
                "anonymized_variables": dict(
                    zip([n for n, _ in call.variables], anon.texts[len(call.turns) :], strict=True)
                ),
                "anonymized_answer": model_text,
                "answer": answer,
            },
            ensure_ascii=False,
        ).encode()
        # 5 encrypt: a fresh data key, wrapped by the subject's key, bound to this row and subject.
        conversation_ref, subject_ref = ctx.bound_refs()
        subject_key = self._subject_keys.get_or_create(subject_ref)
        blob = seal_transcript(plaintext, transcript_id=transcript_id, subject_key=subject_key)
        header = read_header(blob)
        return SealedTranscript(
            id=transcript_id,
            created_at=datetime.now(UTC),
            conversation_ref=conversation_ref,
            subject_ref=subject_ref,
            key_version=header.key_version,
            format_version=header.format_version,
            ciphertext=blob,
        )

    def _trace_attributes(self, ctx: RequestContext, call: GenerateCall) -> dict[str, Any]:
        """The ``gen_ai.*`` trace attributes: names and numbers; the conversation by its blind index."""
        params = call.params
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": self._services.engine.info.name,
            "gen_ai.request.max_tokens": params.max_new_tokens,
            "gen_ai.request.temperature": params.temperature,
            "gen_ai.request.top_p": params.top_p,
        }
        if ctx.conversation_ref is not None:
            attributes["gen_ai.conversation.id"] = ctx.conversation_ref
        return attributes

    def _request_details(self, call: GenerateCall, anon: Pseudonymized) -> dict[str, Any]:
        params = call.params
        template = self.task_of(call)
        task: dict[str, Any] = {}
        if template is not None:
            task = {"template": template.to_audit(), "variables": [n for n, _ in call.variables]}
        return {
            "messages": len(call.turns),
            "roles": [t.role for t in call.turns],
            "purpose": call.purpose,
            "parameters": {
                "max_new_tokens": params.max_new_tokens,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "seed": params.seed,
                "stop_sequences": len(params.stop),
            },
            "reidentify_requested": call.reidentify,
            "pii": {"counts": anon.counts(), "findings": [f.to_audit() for f in anon.findings]},
            "model_info": self._services.engine.info.to_audit(),
            "retention_class": self._services.retention_class,
            **task,
        }


class _EngineRun:
    """One generation on the executor, relaying the engine's text deltas to the event loop."""

    def __init__(
        self,
        engine: Engine,
        executor: Executor,
        turns: tuple[ChatTurn, ...],
        call: GenerateCall,
        deadline: float | None,
    ) -> None:
        self._engine = engine
        self._executor = executor
        self._turns = turns
        self._call = call
        self._deadline = deadline
        self.cancel = threading.Event()
        self._future: asyncio.Future[GenerationResult] | None = None
        self.submitted = time.perf_counter()  # reset when the run is handed to the executor
        self.queued_seconds = 0.0  # submitted to the executor until the engine started

    def _cancelled(self) -> bool:
        return self.cancel.is_set() or (self._deadline is not None and time.monotonic() > self._deadline)

    async def deltas(self) -> AsyncIterator[str]:
        """Yield text deltas as the engine produces them; the result is available afterwards."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def relay(delta: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        self.submitted = submitted = time.perf_counter()

        def work() -> GenerationResult:
            self.queued_seconds = time.perf_counter() - submitted
            try:
                return self._engine.generate(
                    self._turns,
                    self._call.params,
                    on_text=relay,
                    cancelled=self._cancelled,
                )
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        self._future = loop.run_in_executor(self._executor, work)
        while (delta := await queue.get()) is not None:
            yield delta
        await self._future

    def status(self) -> str:
        """The audit status of a generation that ran to its end."""
        if self.result().finish_reason != "cancelled":
            return "OK"
        deadline_passed = self._deadline is not None and time.monotonic() > self._deadline
        return "DEADLINE_EXCEEDED" if deadline_passed else "CANCELLED"

    def result(self) -> GenerationResult:
        """The finished generation (only after ``deltas`` ran to its end)."""
        assert self._future is not None and self._future.done()
        return self._future.result()

    async def settled(self) -> GenerationResult:
        """Wait for the engine to stop (it polls cancellation every step) and return what it produced."""
        if self._future is not None:
            await asyncio.wait([self._future])
            if not self._future.cancelled() and self._future.exception() is None:
                return self._future.result()
        return GenerationResult(
            text="",
            finish_reason="cancelled",
            prompt_tokens=0,
            completion_tokens=0,
            mean_logprob=None,
            min_logprob=None,
            prefill_seconds=0.0,
            decode_seconds=0.0,
        )
