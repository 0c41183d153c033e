"""The real bundled model behind the real server: a customer question in, an audited answer out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from presidio_analyzer import AnalyzerEngine

from custos.engine.local import TransformersEngine
from custos.testing.server import SpyEngine, make_server
from custos.v1 import audit_pb2, common_pb2, inference_pb2

pytestmark = pytest.mark.e2e


def test_bundled_model_answers_a_customer_question(
    tmp_path: Path, bundled_cache: Path, analyzer: AnalyzerEngine
) -> None:
    engine = SpyEngine(TransformersEngine.from_cache(bundled_cache))
    question = (
        "Hello, this is Maria Garcia, my email is maria.garcia@example.com. "
        "I ordered a blue jacket two weeks ago and it has not arrived yet. What should I do?"
    )
    with make_server(tmp_path, analyzer, engine) as server:
        reply = server.inference.Generate(
            inference_pb2.GenerateRequest(
                conversation_id="ticket-1",
                messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=question)],
                parameters=inference_pb2.GenerationParameters(max_new_tokens=48),
                reidentify=True,
            )
        )
        assert "Maria Garcia" not in engine.prompts[0] and "maria.garcia@example.com" not in engine.prompts[0]
        assert len(reply.text.split()) >= 3, reply.text
        assert sum(c.isalpha() for c in reply.text) > len(reply.text) / 2, reply.text
        assert reply.usage.completion_tokens > 0
        assert {e.entity_type for e in reply.redaction.entities} >= {"PERSON", "EMAIL_ADDRESS"}

        completion = server.audit.Query(
            audit_pb2.AuditQueryRequest(event_type="generate", page_size=1)
        ).records[0]
        payload = json.loads(completion.payload_json)
        assert completion.model == engine.info.name
        assert payload["details"]["usage"]["completion_tokens"] == reply.usage.completion_tokens
        assert payload["details"]["confidence"]["mean_logprob"] < 0
        assert server.audit.Verify(audit_pb2.AuditVerifyRequest()).ok
