"""Protobuf <-> domain conversion of the Privacy service, with validation that names the field."""

from __future__ import annotations

from custos.api.convert import (
    RequestLimits,
    chat_message_to_pb,
    generate_call_from_pb,
    privacy_policy_from_pb,
    redaction_to_pb,
)
from custos.engine.types import SamplingParams
from custos.flows.types import AnonymizeOutcome, GenerateCall
from custos.privacy.pseudonymize import Finding
from custos.v1 import inference_pb2, privacy_pb2


def anonymize_call_from_pb(request: privacy_pb2.AnonymizeRequest, limits: RequestLimits) -> GenerateCall:
    """Validate an AnonymizeRequest like Generate's messages (ids, roles, sizes) and its privacy policy."""
    equivalent = inference_pb2.GenerateRequest(
        conversation_id=request.conversation_id, messages=request.messages
    )
    if request.HasField("purpose"):
        equivalent.purpose = request.purpose
    if request.HasField("subject_id"):
        equivalent.subject_id = request.subject_id
    call = generate_call_from_pb(equivalent, limits)
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


def anonymize_outcome_to_pb(call: GenerateCall, outcome: AnonymizeOutcome) -> privacy_pb2.AnonymizeResponse:
    """The messages exactly as the model would get them, the findings and the prompt."""
    return privacy_pb2.AnonymizeResponse(
        request_id=outcome.request_id,
        messages=[
            chat_message_to_pb(turn.role, text) for turn, text in zip(call.turns, outcome.texts, strict=True)
        ],
        findings=[finding_to_pb(f) for f in outcome.findings],
        redaction=redaction_to_pb(outcome.counts()),
        prompt=outcome.prompt,
    )


def finding_to_pb(finding: Finding) -> privacy_pb2.PiiFinding:
    """A finding without its value."""
    return privacy_pb2.PiiFinding(
        message_index=finding.message_index,
        entity_type=finding.entity_type,
        start=finding.start,
        end=finding.end,
        score=finding.score,
        recognizer=finding.recognizer,
        placeholder=finding.placeholder,
    )
