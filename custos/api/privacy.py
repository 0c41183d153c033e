"""custos.v1.Privacy: translate protobuf <-> domain and call the pipeline; nothing else."""

from __future__ import annotations

from typing import Any

import grpc

from custos.api import convert
from custos.api.convert import RequestLimits
from custos.api.privacy_convert import finding_to_pb, privacy_policy_from_pb
from custos.api.servicers import caller_from_context
from custos.engine.types import SamplingParams
from custos.flows.errors import InvalidArgument, RequestError, ResourceExhausted
from custos.flows.pipeline import Pipeline
from custos.flows.types import Caller, GenerateCall
from custos.v1 import common_pb2, inference_pb2, privacy_pb2

_ROLE_TO_PB = {
    "system": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
}


class PrivacyServicer:
    """custos.v1.Privacy."""

    def __init__(self, pipeline: Pipeline, limits: RequestLimits, *, max_request_bytes: int) -> None:
        self._pipeline = pipeline
        self._limits = limits
        self._max_request_bytes = max_request_bytes

    async def Anonymize(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> privacy_pb2.AnonymizeResponse:
        """The messages exactly as the model would get them, and the findings; no model runs."""
        caller = caller_from_context(context)
        call = await self._admit(raw, caller)
        outcome = await self._pipeline.anonymize(call, caller)
        return privacy_pb2.AnonymizeResponse(
            request_id=outcome.request_id,
            messages=[
                common_pb2.ChatMessage(role=_ROLE_TO_PB[turn.role], content=text)
                for turn, text in zip(call.turns, outcome.texts, strict=True)
            ],
            findings=[finding_to_pb(f) for f in outcome.findings],
            redaction=convert.redaction_to_pb(outcome.counts()),
            prompt=outcome.prompt,
        )

    async def _admit(self, raw: bytes, caller: Caller) -> GenerateCall:
        try:
            if len(raw) > self._max_request_bytes:
                raise ResourceExhausted(
                    f"request is {len(raw)} bytes, larger than the limit of {self._max_request_bytes}",
                    reason="request_too_large",
                )
            request = convert.parse_message(privacy_pb2.AnonymizeRequest, raw)
            # The same validation as Generate (ids, roles, sizes), on an equivalent GenerateRequest.
            equivalent = inference_pb2.GenerateRequest(
                conversation_id=request.conversation_id, messages=request.messages
            )
            if request.HasField("purpose"):
                equivalent.purpose = request.purpose
            if request.HasField("subject_id"):
                equivalent.subject_id = request.subject_id
            call = convert.generate_call_from_pb(equivalent, self._limits)
            mode, block = privacy_policy_from_pb(request.privacy_mode, request.block_entity_types)
            return GenerateCall(
                conversation_id=call.conversation_id,
                turns=call.turns,
                params=SamplingParams(max_new_tokens=1),
                subject_id=call.subject_id,
                purpose=call.purpose,
                privacy_mode=mode,
                block_entities=block,
            )
        except RequestError as exc:
            field = exc.field if isinstance(exc, InvalidArgument) else "request"
            problem = exc.problem if isinstance(exc, InvalidArgument) else exc.message
            await self._pipeline.record_invalid(
                caller, "Anonymize", status=exc.status, field=field, problem=problem
            )
            raise
