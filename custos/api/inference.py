"""custos.v1.Inference: Generate, GenerateStream and Classify; protobuf <-> domain and one flow call each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from custos.api import convert, convert_tasks
from custos.api.admit import Admission, Context, caller_from_context, deadline_from_context
from custos.api.convert import RequestLimits
from custos.flows.classify import ClassifyFlow
from custos.flows.context import RequestContext
from custos.flows.generate import GenerateFlow
from custos.v1 import inference_pb2


class InferenceServicer:
    """custos.v1.Inference."""

    def __init__(
        self,
        *,
        generate: GenerateFlow,
        classify: ClassifyFlow,
        admission: Admission,
        limits: RequestLimits,
    ) -> None:
        self._generate = generate
        self._classify = classify
        self._admission = admission
        self._limits = limits

    async def Generate(self, raw: bytes, context: Context) -> inference_pb2.GenerateResponse:
        """Answer a conversation, or a task's template filled with its variables, in one response."""
        caller = caller_from_context(context)
        call = await self._admission.admit(
            raw, caller, "Generate", inference_pb2.GenerateRequest, self._generate_call
        )
        ctx = RequestContext(caller, "Generate", deadline=deadline_from_context(context))
        outcome = await self._generate.generate(ctx, call, request_bytes=raw)
        return convert.generate_outcome_to_pb(outcome)

    async def GenerateStream(
        self, raw: bytes, context: Context
    ) -> AsyncIterator[inference_pb2.GenerateStreamResponse]:
        """Answer a conversation as a stream of events."""
        caller = caller_from_context(context)
        call = await self._admission.admit(
            raw, caller, "GenerateStream", inference_pb2.GenerateRequest, self._generate_call
        )
        ctx = RequestContext(caller, "GenerateStream", deadline=deadline_from_context(context))
        events = await self._generate.generate_stream(ctx, call)
        async with aclosing(events):
            async for event in events:
                yield convert.stream_event_to_pb(event)

    async def Classify(self, raw: bytes, context: Context) -> inference_pb2.ClassifyResponse:
        """Score every label of a label set and return the distribution."""
        caller = caller_from_context(context)
        call = await self._admission.admit(
            raw,
            caller,
            "Classify",
            inference_pb2.ClassifyRequest,
            lambda request: convert_tasks.classify_call_from_pb(request, self._limits),
        )
        ctx = RequestContext(caller, "Classify", deadline=deadline_from_context(context))
        outcome = await self._classify.classify(ctx, call)
        return convert_tasks.classify_outcome_to_pb(outcome)

    def _generate_call(self, request: inference_pb2.GenerateRequest) -> convert.GenerateCall:
        return convert.generate_call_from_pb(request, self._limits)
