"""custos.v1.Privacy: Anonymize; protobuf <-> domain and one flow call."""

from __future__ import annotations

from custos.api import convert_privacy
from custos.api.admit import Admission, Context, caller_from_context, deadline_from_context
from custos.api.convert import RequestLimits
from custos.flows.anonymize import AnonymizeFlow
from custos.flows.context import RequestContext
from custos.v1 import privacy_pb2


class PrivacyServicer:
    """custos.v1.Privacy."""

    def __init__(self, *, anonymize: AnonymizeFlow, admission: Admission, limits: RequestLimits) -> None:
        self._anonymize = anonymize
        self._admission = admission
        self._limits = limits

    async def Anonymize(self, raw: bytes, context: Context) -> privacy_pb2.AnonymizeResponse:
        """The messages exactly as the model would get them, and the findings; no model runs."""
        caller = caller_from_context(context)
        call = await self._admission.admit(
            raw,
            caller,
            "Anonymize",
            privacy_pb2.AnonymizeRequest,
            lambda request: convert_privacy.anonymize_call_from_pb(request, self._limits),
        )
        ctx = RequestContext(caller, "Anonymize", deadline=deadline_from_context(context))
        outcome = await self._anonymize.anonymize(ctx, call)
        return convert_privacy.anonymize_outcome_to_pb(call, outcome)
