"""The request flow of ARCHITECTURE.md in one place: detect -> audit -> generate -> guard -> encrypt -> audit.

Blocking work (analysis, database, the model) runs on the executor, never on the gRPC event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from custos.audit.errors import AuditUnavailable
from custos.audit.events import AuditEvent, StoredRecord
from custos.audit.store import AuditStore, SealedTranscript
from custos.engine.base import Engine
from custos.engine.types import ChatTurn, EngineBusy, GenerationResult
from custos.flows.errors import InvalidArgument, NotFound, RequestError
from custos.flows.privacy_step import AnonymizeOutcome, PrivacyDecision, PrivacyRefusal, PrivacyStage
from custos.flows.types import (
    Caller,
    ClassifyCall,
    ClassifyOutcome,
    FeedbackCall,
    FeedbackOutcome,
    GenerateCall,
    GenerateOutcome,
    LabelScore,
    StreamDelta,
    StreamEvent,
    StreamFinished,
    StreamStarted,
)
from custos.privacy.envelope import read_header
from custos.privacy.keys import MasterKeyProvider, blind_index
from custos.privacy.pseudonymize import Pseudonymized, Pseudonymizer
from custos.privacy.subject_keys import SubjectKeyStore
from custos.privacy.transcripts import TRANSCRIPT_FORMAT, seal_transcript, transcript_aad
from custos.server.metrics import Metrics
from custos.tasks.feedback import FeedbackEntry, FeedbackStore, task_of
from custos.tasks.labels import LabelSet, LabelSetRegistry, distribution
from custos.tasks.templates import (
    CONVERSATION,
    TaskTemplate,
    TemplateError,
    TemplateRegistry,
    conversation_text,
)

T = TypeVar("T")
_DEADLINE_SLACK_S = 0.05  # the caller's and our clock reading of one deadline differ by the call's transit
__all__ = ["Pipeline", "transcript_aad"]


@dataclass
class _Timings:
    """Seconds per stage, reported in the completion record and in metrics."""

    stages: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    def as_ms(self) -> dict[str, float]:
        return {stage: round(seconds * 1000, 3) for stage, seconds in self.stages.items()}


class Pipeline:
    """The one core service behind the servicers."""

    def __init__(
        self,
        *,
        pseudonymizer: Pseudonymizer,
        engine: Engine,
        audit: AuditStore,
        keys: MasterKeyProvider,
        subject_keys: SubjectKeyStore,
        executor: Executor,
        metrics: Metrics,
        retention_class: str,
        privacy: PrivacyStage | None = None,
        templates: TemplateRegistry | None = None,
        label_sets: LabelSetRegistry | None = None,
        feedback: FeedbackStore | None = None,
    ) -> None:
        self._pseudonymizer = pseudonymizer
        self._privacy = privacy if privacy is not None else PrivacyStage(pseudonymizer)
        self._engine = engine
        self._audit = audit
        self._keys = keys
        self._subject_keys = subject_keys
        self._executor = executor
        self._metrics = metrics
        self._retention_class = retention_class
        self.templates = templates if templates is not None else TemplateRegistry.load()
        self.label_sets = label_sets if label_sets is not None else LabelSetRegistry.load()
        self._feedback = feedback if feedback is not None else FeedbackStore(audit.engine)
        # spaCy pipelines are not documented as thread-safe; analysis is serialised until it moves to a pool.
        self._privacy_lock = threading.Lock()

    # ---- the flow -------------------------------------------------------------------------------

    async def generate(
        self, call: GenerateCall, caller: Caller, *, rpc: str = "Generate", deadline: float | None = None
    ) -> GenerateOutcome:
        """Run a unary Generate; the answer is returned only after its completion record is committed."""
        parts: list[str] = []
        started: StreamStarted | None = None
        finished: StreamFinished | None = None
        async for event in self.generate_stream(call, caller, rpc=rpc, deadline=deadline):
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

    async def generate_stream(
        self,
        call: GenerateCall,
        caller: Caller,
        *,
        rpc: str = "GenerateStream",
        deadline: float | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Run Generate as a stream of events; every path out of it leaves a completion record."""
        start_time = datetime.now(UTC)
        timings = _Timings()
        conversation_ref = self._conversation_ref(caller, call.conversation_id)
        subject_ref = self._subject_ref(caller, call)

        # 1 privacy: detect, apply the request's policy, pseudonymize with the conversation's vault.
        try:
            decision = await self._privacy_step(
                call, caller, rpc, start_time, timings, conversation_ref, subject_ref
            )
        except (RequestError, AuditUnavailable):
            raise  # refusals are audited by the privacy step; an unreachable database records nothing
        except Exception as exc:
            # No request record exists yet: the failure gets a record of its own (if the database allows).
            await self._record_failure(caller, rpc, start_time, stage="privacy", error=exc)
            raise
        anon = decision.anon
        for entity_type, count in anon.counts().items():
            self._metrics.pii_entities.labels(entity_type=entity_type).inc(count)

        # 2 audit: the request record is durable before any model output exists.
        request_record = await self._timed(
            timings,
            "audit",
            self._audit.append,
            self._event(
                "request",
                caller,
                rpc,
                start_time,
                status="OK",
                conversation_ref=conversation_ref,
                subject_ref=subject_ref,
                details={**self._request_details(call, anon), **decision.audit},
            ),
        )
        request_id = request_record.id
        yield StreamStarted(request_id=request_id, redaction=anon.counts())

        # 3 generate from the anonymized conversation; 4 guard: restore placeholders only when asked.
        anon_turns = self._model_turns(call, anon)
        restorer = self._privacy.restorer(anon.mapping, reidentify=call.reidentify)
        run = _EngineRun(self._engine, self._executor, anon_turns, call, deadline)
        sent: list[str] = []
        status = "INTERNAL"
        try:
            async for delta in run.deltas():
                safe = await self._run(restorer.feed, delta)
                if safe:
                    sent.append(safe)
                    yield StreamDelta(safe)
            tail = await self._run(restorer.flush)
            if tail:
                sent.append(tail)
                yield StreamDelta(tail)
            status = run.status()
        except EngineBusy:
            status = "RESOURCE_EXHAUSTED"
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # gRPC cancels the handler when the caller's deadline passes; the record says which it was.
            expired = deadline is not None and time.monotonic() >= deadline - _DEADLINE_SLACK_S
            status = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
            raise
        finally:
            if status != "OK":
                run.cancel.set()
            # 5 transcript (raw + anonymized) sealed; 6 completion record. Shielded: a caller that goes away
            # cannot skip its own audit record.
            completion = asyncio.ensure_future(
                self._complete(
                    call,
                    caller,
                    rpc,
                    request_id,
                    start_time,
                    timings,
                    anon,
                    run,
                    "".join(sent),
                    status,
                    conversation_ref,
                    subject_ref,
                    guard=restorer.report.to_audit(),
                )
            )
            await asyncio.shield(completion)
        result = run.result()
        yield StreamFinished(
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )

    async def anonymize(
        self, call: GenerateCall, caller: Caller, *, rpc: str = "Anonymize"
    ) -> AnonymizeOutcome:
        """Step 1 alone: the text the model would be given and the findings; audited, no model runs."""
        start_time = datetime.now(UTC)
        timings = _Timings()
        conversation_ref = self._conversation_ref(caller, call.conversation_id)
        subject_ref = self._subject_ref(caller, call)
        decision = await self._privacy_step(
            call, caller, rpc, start_time, timings, conversation_ref, subject_ref, event_type="anonymize"
        )
        anon = decision.anon
        turns = tuple(
            ChatTurn(role=t.role, content=text) for t, text in zip(call.turns, anon.texts, strict=True)
        )
        prompt = self._engine.render_prompt(turns)
        details = {
            "messages": len(call.turns),
            "purpose": call.purpose,
            "pii": {"counts": anon.counts(), "findings": [f.to_audit() for f in anon.findings]},
            "prompt_digest": blind_index(self._keys.index_key(), "prompt", prompt),
            "latency_ms": timings.as_ms(),
            "retention_class": self._retention_class,
            **decision.audit,
        }
        event = self._event(
            "event",
            caller,
            rpc,
            start_time,
            status="OK",
            event_type="anonymize",
            conversation_ref=conversation_ref,
            subject_ref=subject_ref,
            details=details,
        )
        record = await self._run(self._audit.append, event)
        for entity_type, count in anon.counts().items():
            self._metrics.pii_entities.labels(entity_type=entity_type).inc(count)
        return AnonymizeOutcome(
            request_id=record.id, texts=list(anon.texts), findings=list(anon.findings), prompt=prompt
        )

    async def _record_failure(
        self, caller: Caller, rpc: str, start_time: datetime, *, stage: str, error: BaseException
    ) -> None:
        """Audit a request that failed before its request record existed; the error's text is never kept."""
        event = self._event(
            "event",
            caller,
            rpc,
            start_time,
            status="INTERNAL",
            details={"failed_stage": stage, "error_type": type(error).__name__},
        )
        with contextlib.suppress(AuditUnavailable):  # the caller gets an error either way
            await self._run(self._audit.append, event)

    async def record_invalid(
        self, caller: Caller, rpc: str, *, status: str, field: str, problem: str
    ) -> StoredRecord:
        """Audit a refused request (bad input or capacity); ``problem`` is our text, never the caller's."""
        now = datetime.now(UTC)
        event = self._event(
            "event",
            caller,
            rpc,
            now,
            status=status,
            event_type="invalid",
            details={"field": field, "problem": problem},
        )
        return await self._run(self._audit.append, event)

    # ---- tasks, Classify and feedback ---------------------------------------------------------------

    def check_task(self, call: GenerateCall) -> TaskTemplate | None:
        """The call's template after checking its variables; InvalidArgument naming the field otherwise."""
        if call.task is None:
            return None
        try:
            template = self.templates.get(call.task)
            template.check_variables([n for n, _ in call.variables], has_messages=bool(call.turns))
        except TemplateError as exc:
            raise InvalidArgument(exc.field, exc.problem) from None
        return template

    def resolve_label_set(self, call: ClassifyCall) -> LabelSet:
        """The configured label set the call names, or an uncalibrated ad hoc one from its labels."""
        if call.label_set is None:
            return LabelSet.ad_hoc(call.labels)
        try:
            return self.label_sets.get(call.label_set)
        except TemplateError as exc:
            raise InvalidArgument(exc.field, exc.problem) from None

    def _model_turns(self, call: GenerateCall, anon: Pseudonymized) -> tuple[ChatTurn, ...]:
        """What the engine gets: the anonymized messages, or the task's template filled with them."""
        count = len(call.turns)
        turns = tuple(
            ChatTurn(role=t.role, content=text)
            for t, text in zip(call.turns, anon.texts[:count], strict=True)
        )
        template = self.check_task(call)
        if template is None:
            return turns
        values = dict(zip([n for n, _ in call.variables], anon.texts[count:], strict=True))
        if CONVERSATION in template.required and CONVERSATION not in values:
            values[CONVERSATION] = conversation_text(turns)
        catalogue: list[str] = []
        if template.catalogue is not None:
            catalogue = self.label_sets.get(template.catalogue).names
        return template.render(values, catalogue=catalogue)

    def _task_details(self, call: GenerateCall) -> dict[str, Any]:
        template = self.check_task(call)
        if template is None:
            return {}
        return {"template": template.to_audit(), "variables": [n for n, _ in call.variables]}

    async def classify(self, call: ClassifyCall, caller: Caller, *, rpc: str = "Classify") -> ClassifyOutcome:
        """Anonymize, score every label as a continuation of one prompt, audit the distribution."""
        start_time = datetime.now(UTC)
        timings = _Timings()
        label_set = self.resolve_label_set(call)
        request = call.request
        conversation_ref = self._conversation_ref(caller, request.conversation_id)
        subject_ref = self._subject_ref(caller, request)
        try:
            decision = await self._privacy_step(
                request,
                caller,
                rpc,
                start_time,
                timings,
                conversation_ref,
                subject_ref,
                event_type="classify",
            )
        except (RequestError, AuditUnavailable):
            raise
        except Exception as exc:
            await self._record_failure(caller, rpc, start_time, stage="privacy", error=exc)
            raise
        anon = decision.anon
        prefix = label_set.prefix(anon.texts[0])
        details = {
            "messages": 1,
            "purpose": request.purpose,
            "pii": {"counts": anon.counts(), "findings": [f.to_audit() for f in anon.findings]},
            "model_info": self._engine.info.to_audit(),
            "label_set": {**label_set.to_audit(), "labels": label_set.names},
            "prompt_digest": blind_index(self._keys.index_key(), "prompt", prefix),
            "retention_class": self._retention_class,
            **decision.audit,
        }
        request_record = await self._timed(
            timings,
            "audit",
            self._audit.append,
            self._event(
                "request",
                caller,
                rpc,
                start_time,
                status="OK",
                event_type="classify",
                conversation_ref=conversation_ref,
                subject_ref=subject_ref,
                details=details,
            ),
        )
        status = "INTERNAL"
        outcome: ClassifyOutcome | None = None
        classification: dict[str, Any] = {}
        try:
            scores = await self._timed(
                timings, "score", self._engine.score_continuations, prefix, label_set.continuations()
            )
            probabilities = distribution(scores.logprobs, label_set.names, label_set.calibration)
            ranked = sorted(
                zip(label_set.names, probabilities, scores.logprobs, strict=True), key=lambda r: -r[1]
            )
            outcome = ClassifyOutcome(
                request_id=request_record.id,
                label=ranked[0][0],
                distribution=tuple(LabelScore(n, p, lp) for n, p, lp in ranked),
                calibrated=label_set.calibration is not None,
                label_set=label_set.id,
                label_set_version=label_set.version,
                redaction=anon.counts(),
            )
            classification = {
                "label": outcome.label,
                "distribution": {n: round(p, 6) for n, p, _ in ranked},
                "logprobs": {n: round(lp, 4) for n, _, lp in ranked},
                "label_tokens": dict(zip(label_set.names, scores.tokens, strict=True)),
                "calibrated": outcome.calibrated,
                "calibration": label_set.calibration.to_audit() if label_set.calibration else None,
            }
            status = "OK"
            usage = {"prompt_tokens": scores.prefix_tokens, "label_tokens": sum(scores.tokens)}
        except EngineBusy:
            status = "RESOURCE_EXHAUSTED"
            raise
        finally:
            completion = self._event(
                "completion",
                caller,
                rpc,
                start_time,
                status=status,
                event_type="classify",
                request_id=request_record.id,
                conversation_ref=conversation_ref,
                subject_ref=subject_ref,
                details={
                    "request_id": request_record.id,
                    "error": None if status == "OK" else "classification failed",
                    "classification": classification,
                    "usage": usage if status == "OK" else {},
                    "latency_ms": timings.as_ms(),
                    "retention_class": self._retention_class,
                },
            )
            await asyncio.shield(asyncio.ensure_future(self._run(self._audit.append, completion)))
        for stage, seconds in timings.stages.items():
            self._metrics.stage_latency.labels(stage=stage).observe(seconds)
        assert outcome is not None
        return outcome

    async def submit_feedback(
        self, call: FeedbackCall, caller: Caller, *, rpc: str = "Submit"
    ) -> FeedbackOutcome:
        """Link a rating (and the anonymized comment) to the caller's own request record, audited."""
        start_time = datetime.now(UTC)
        record = await self._run(self._feedback.request_record, self._audit, call.request_id)
        if record is None or record.actor != caller.principal:
            # Someone else's request is reported as missing: the caller learns nothing about it.
            raise NotFound("request_id: no Generate or Classify request with this id from this caller")
        comment: str | None = None
        findings: list[dict[str, object]] = []
        if call.comment is not None:
            conversation_ref = record.conversation_ref or self._conversation_ref(caller, call.request_id)
            try:
                decision = await self._run(
                    lambda: self._privacy.run([call.comment or ""], conversation_ref, mode="mask")
                )
            except PrivacyRefusal as refusal:
                raise refusal.error from None
            comment = decision.anon.texts[0]
            findings = [f.to_audit() for f in decision.anon.findings]
        entry = FeedbackEntry.new(
            request_id=record.id,
            rating=call.rating,
            comment=comment,
            task=task_of(record),
            model=record.model,
            actor=caller.principal,
        )
        event = self._event(
            "event",
            caller,
            rpc,
            start_time,
            status="OK",
            event_type="feedback",
            conversation_ref=record.conversation_ref,
            subject_ref=record.subject_ref,
            details={
                "feedback_id": entry.id,
                "linked_request_id": record.id,
                "rating": call.rating,
                "task": entry.task,
                "comment_digest": blind_index(self._keys.index_key(), "feedback", comment)
                if comment
                else None,
                "pii": {"findings": findings},
            },
        )
        # The audit record first: feedback exists only once its record is durable.
        await self._run(self._audit.append, event)
        await self._run(self._feedback.add, entry)
        return FeedbackOutcome(feedback_id=entry.id, request_id=record.id, comment=comment)

    # ---- steps ----------------------------------------------------------------------------------

    async def _privacy_step(
        self,
        call: GenerateCall,
        caller: Caller,
        rpc: str,
        start_time: datetime,
        timings: _Timings,
        conversation_ref: str,
        subject_ref: str,
        *,
        event_type: str = "generate",
    ) -> PrivacyDecision:
        """Run step 1; a refusal (permission, blocked types, language) is audited before it is raised."""
        try:
            self._privacy.check_reidentify(caller, call.reidentify)
            return await self._timed(
                timings,
                "privacy",
                lambda: self._privacy.run(
                    call.privacy_texts(),
                    conversation_ref,
                    mode="block" if call.privacy_mode == "block" else "mask",
                    block_entities=call.block_entities,
                    reidentify=call.reidentify,
                    subject_ref=subject_ref,
                ),
            )
        except PrivacyRefusal as refusal:
            event = self._event(
                "event",
                caller,
                rpc,
                start_time,
                status=refusal.error.status,
                event_type=event_type if refusal.event_type == "generate" else refusal.event_type,
                conversation_ref=conversation_ref,
                subject_ref=subject_ref,
                details={**refusal.details, "reason": refusal.error.message},
            )
            await self._run(self._audit.append, event)
            raise refusal.error from None

    async def _complete(
        self,
        call: GenerateCall,
        caller: Caller,
        rpc: str,
        request_id: str,
        start_time: datetime,
        timings: _Timings,
        anon: Pseudonymized,
        run: _EngineRun,
        answer: str,
        status: str,
        conversation_ref: str,
        subject_ref: str,
        *,
        guard: dict[str, Any] | None = None,
    ) -> StoredRecord:
        result = await run.settled()
        timings.add("queue", run.queued_seconds)
        timings.add("prefill", result.prefill_seconds)
        timings.add("decode", result.decode_seconds)
        transcript_id = str(uuid.uuid4())
        transcript = await self._timed(
            timings,
            "transcript",
            self._seal_transcript,
            transcript_id,
            call,
            anon,
            result.text,
            answer,
            conversation_ref,
            subject_ref,
        )
        details = {
            "request_id": request_id,
            "error": None if status in ("OK", "CANCELLED", "DEADLINE_EXCEEDED") else "generation failed",
            "finish_reason": result.finish_reason,
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens},
            "confidence": {"mean_logprob": result.mean_logprob, "min_logprob": result.min_logprob},
            "answer_digest": blind_index(self._keys.index_key(), "answer", result.text),
            "reidentified": call.reidentify,
            "output_guard": guard or {},
            "transcript": {
                "id": transcript_id,
                "key_version": transcript.key_version,
                "format": transcript.format_version,
            },
            "latency_ms": timings.as_ms(),
            "retention_class": self._retention_class,
        }
        event = self._event(
            "completion",
            caller,
            rpc,
            start_time,
            status=status,
            request_id=request_id,
            conversation_ref=conversation_ref,
            subject_ref=subject_ref,
            transcript_id=transcript_id,
            details=details,
        )
        # The transcript row and the completion record commit together or not at all.
        started = time.perf_counter()
        record = await self._run(lambda: self._audit.append_with(event, transcript=transcript))
        timings.add("audit", time.perf_counter() - started)
        for stage, seconds in timings.stages.items():
            self._metrics.stage_latency.labels(stage=stage).observe(seconds)
        self._metrics.generated_tokens.inc(result.completion_tokens)
        return record

    def _seal_transcript(
        self,
        transcript_id: str,
        call: GenerateCall,
        anon: Pseudonymized,
        model_text: str,
        answer: str,
        conversation_ref: str,
        subject_ref: str,
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

    # ---- helpers --------------------------------------------------------------------------------

    def _request_details(self, call: GenerateCall, anon: Pseudonymized) -> dict[str, Any]:
        params = call.params
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
            "model_info": self._engine.info.to_audit(),
            "retention_class": self._retention_class,
            **self._task_details(call),
        }

    def _event(
        self,
        phase: str,
        caller: Caller,
        rpc: str,
        start_time: datetime,
        *,
        status: str,
        event_type: str = "generate",
        request_id: str | None = None,
        conversation_ref: str | None = None,
        subject_ref: str | None = None,
        transcript_id: str | None = None,
        details: Mapping[str, Any],
    ) -> AuditEvent:
        return AuditEvent(
            event_type=event_type,
            phase=phase,
            request_id=request_id,
            start_time=start_time,
            end_time=datetime.now(UTC),
            actor=caller.principal,
            rpc=rpc,
            status=status,
            model=self._engine.info.name if event_type in ("generate", "classify") else None,
            conversation_ref=conversation_ref,
            subject_ref=subject_ref,
            transcript_id=transcript_id,
            details={
                **details,
                "actor": {
                    "principal": caller.principal,
                    "role": caller.role,
                    "peer": caller.peer,
                    "fingerprint": caller.fingerprint,
                },
            },
        )

    def _conversation_ref(self, caller: Caller, conversation_id: str) -> str:
        return blind_index(self._keys.index_key(), "conversation", f"{caller.principal}\x00{conversation_id}")

    def _subject_ref(self, caller: Caller, call: GenerateCall) -> str:
        if call.subject_id is not None:
            return blind_index(self._keys.index_key(), "subject", call.subject_id)
        # No subject given: an anonymous subject scoped to the conversation, so erasure works the same way.
        return blind_index(
            self._keys.index_key(), "subject", f"anonymous\x00{caller.principal}\x00{call.conversation_id}"
        )

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _timed(self, timings: _Timings, stage: str, fn: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            return await self._run(fn, *args)
        finally:
            timings.add(stage, time.perf_counter() - started)


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
        self.queued_seconds = 0.0  # submitted to the executor until the engine started

    def _cancelled(self) -> bool:
        return self.cancel.is_set() or (self._deadline is not None and time.monotonic() > self._deadline)

    async def deltas(self) -> AsyncIterator[str]:
        """Yield text deltas as the engine produces them; the result is available afterwards."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def relay(delta: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        submitted = time.perf_counter()

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
