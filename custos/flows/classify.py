"""Classify: score every label of a label set as a continuation of one anonymized prompt, audited.

0 checks (purpose, label set) -> 1 privacy -> 2 request record -> 3 score the labels -> 4 completion record
with the distribution. The model only ever sees the anonymized message and, for an ad hoc label set, the
anonymized labels; the audit record names ad hoc labels by keyed digests (they are caller text), configured
label sets' labels by name.
"""

from __future__ import annotations

import asyncio
from typing import Any

from custos.engine.types import EngineError
from custos.flows.context import RequestContext
from custos.flows.errors import InvalidArgument
from custos.flows.services import FlowServices
from custos.flows.status import map_error
from custos.flows.types import ClassifyCall, ClassifyOutcome, LabelScore
from custos.tasks.labels import LabelSet, LabelSetRegistry, distribution
from custos.tasks.templates import TemplateError


class ClassifyFlow:
    """The Classify use case."""

    def __init__(self, services: FlowServices, *, label_sets: LabelSetRegistry) -> None:
        self._services = services
        self.label_sets = label_sets

    async def classify(self, ctx: RequestContext, call: ClassifyCall) -> ClassifyOutcome:
        """Anonymize, score every label as a continuation of one prompt, audit the distribution."""
        services = self._services
        # 0 checks: a configured purpose and a known label set (refusals audited as ``invalid``).
        await services.checked(ctx, lambda: self._check(ctx, call))
        label_set = self.resolve_label_set(call)
        request = call.request
        ad_hoc = call.label_set is None

        # 1 privacy: ad hoc labels are caller text, anonymized with the message (same values, same
        # placeholders); the model scores them anonymized.
        decision = await services.privacy_step(
            ctx, request, event_type="classify", extra_texts=call.labels if ad_hoc else ()
        )
        anon = decision.anon
        if ad_hoc:
            label_set = LabelSet.ad_hoc(call.labels, texts=anon.texts[1:])
        prefix = label_set.prefix(anon.texts[0])
        # How the audit record names each label: ad hoc ones by a keyed digest, configured ones by name.
        audited = {n: services.digest("label", n) if ad_hoc else n for n in label_set.names}
        set_audit = label_set.to_audit()
        if ad_hoc:
            set_audit["sha256"] = services.digest("label-set", "\n".join(label_set.continuations()))

        # 2 audit: the request record, before the model runs.
        details = {
            "messages": 1,
            "purpose": request.purpose,
            "pii": {"counts": anon.counts(), "findings": [f.to_audit() for f in anon.findings]},
            "model_info": services.engine.info.to_audit(),
            "label_set": {**set_audit, "labels": [audited[n] for n in label_set.names]},
            "prompt_digest": services.digest("prompt", prefix),
            "retention_class": services.retention_class,
            **decision.audit,
        }
        request_record = await services.timed(
            ctx,
            "audit",
            services.events.store.append,
            services.event(ctx, "request", status="OK", event_type="classify", details=details, **ctx.refs()),
        )

        # 3 score every label; 4 the completion record, whatever happened (shielded from cancellation).
        status = "INTERNAL"
        outcome: ClassifyOutcome | None = None
        classification: dict[str, Any] = {}
        engine_error: str | None = None
        try:
            scores = await services.timed(
                ctx, "score", services.engine.score_continuations, prefix, label_set.continuations()
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
                "label": audited[outcome.label],
                "distribution": {audited[n]: round(p, 6) for n, p, _ in ranked},
                "logprobs": {audited[n]: round(lp, 4) for n, _, lp in ranked},
                "label_tokens": {audited[n]: t for n, t in zip(label_set.names, scores.tokens, strict=True)},
                "calibrated": outcome.calibrated,
                "calibration": label_set.calibration.to_audit() if label_set.calibration else None,
            }
            status = "OK"
            usage = {"prompt_tokens": scores.prefix_tokens, "label_tokens": sum(scores.tokens)}
        except EngineError as exc:
            # The engine's own refusal or fault (a full queue, an upstream down or without prompt log-probs).
            mapped = map_error(exc, request_record.id)
            status, engine_error = mapped.status, mapped.reason
            raise
        finally:
            completion = services.event(
                ctx,
                "completion",
                status=status,
                event_type="classify",
                request_id=request_record.id,
                details={
                    "request_id": request_record.id,
                    "error": None if status == "OK" else "classification failed",
                    "classification": classification,
                    "usage": usage if status == "OK" else {},
                    "latency_ms": ctx.timings.as_ms(),
                    "retention_class": services.retention_class,
                    **({"engine_error": engine_error} if engine_error is not None else {}),
                },
                **ctx.refs(),
            )
            await asyncio.shield(asyncio.ensure_future(services.events.append(completion)))
        services.observe_stages(ctx)
        assert outcome is not None
        return outcome

    def _check(self, ctx: RequestContext, call: ClassifyCall) -> None:
        """The per-request checks: a configured purpose and a label set that exists."""
        self._services.check_purpose(ctx, call.request.purpose)
        self.resolve_label_set(call)

    def resolve_label_set(self, call: ClassifyCall) -> LabelSet:
        """The configured label set the call names, or an uncalibrated ad hoc one from its labels."""
        if call.label_set is None:
            return LabelSet.ad_hoc(call.labels)
        try:
            return self.label_sets.get(call.label_set)
        except TemplateError as exc:
            raise InvalidArgument(exc.field, exc.problem) from None
