"""Anonymize: the privacy step alone, audited: the text the model would be given and the findings.

0 admission (purpose policy) -> 1 privacy -> the exact prompt -> 2 the ``anonymize`` record. No model runs.
"""

from __future__ import annotations

from custos.engine.types import ChatTurn
from custos.flows.context import RequestContext
from custos.flows.services import FlowServices
from custos.flows.types import AnonymizeOutcome, GenerateCall


class AnonymizeFlow:
    """The Anonymize use case."""

    def __init__(self, services: FlowServices) -> None:
        self._services = services

    async def anonymize(self, ctx: RequestContext, call: GenerateCall) -> AnonymizeOutcome:
        """Step 1 alone: the text the model would be given and the findings; audited, no model runs."""
        services = self._services
        # 0 admission: the purpose policy, as for every RPC that processes text (refusals audited).
        await services.admit(ctx, call, lambda: None)

        # 1 privacy.
        decision = await services.privacy_step(ctx, call, event_type="anonymize", record_failures=False)
        anon = decision.anon
        turns = tuple(
            ChatTurn(role=t.role, content=text) for t, text in zip(call.turns, anon.texts, strict=True)
        )
        prompt = services.engine.render_prompt(turns)

        # 2 audit: one ``anonymize`` record.
        details = {
            "messages": len(call.turns),
            "purpose": call.purpose,
            "pii": {"counts": anon.counts(), "findings": [f.to_audit() for f in anon.findings]},
            "prompt_digest": services.digest("prompt", prompt),
            "latency_ms": ctx.timings.as_ms(),
            "retention_class": services.retention_class,
            **decision.audit,
        }
        event = services.event(
            ctx, "event", status="OK", event_type="anonymize", details=details, **ctx.refs()
        )
        record = await services.events.append(event)
        services.count_findings(anon.counts())
        return AnonymizeOutcome(
            request_id=record.id, texts=list(anon.texts), findings=list(anon.findings), prompt=prompt
        )
