"""Writes a data directory with the previous release's code; run by test_upgrade.py in a subprocess.

The subprocess imports ``custos`` from a ``git archive`` of the release (``PYTHONPATH``), so only names that
release had are used here. It serves over a real socket like the test suite of that release did: a Generate
with a subject and an idempotency key, a feedback comment on it, and a second subject's Generate. It prints
one JSON line: where ``custos`` came from and the request ids.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from custos.server.testing import ScriptedEngine, make_server

import custos
from custos.privacy.analyzer import build_analyzer
from custos.v1 import common_pb2, feedback_pb2, inference_pb2

REPLY = "Hello <PERSON_1>, your parcel is on its way."
MESSAGE = "I am John Smith, where is my parcel?"
COMMENT = "Maria Garcia from the depot never called me back"


def generate_request(subject_id: str, conversation_id: str, key: str) -> bytes:
    """The Generate request the upgrade test also sends (byte for byte) to replay it."""
    return inference_pb2.GenerateRequest(
        conversation_id=conversation_id,
        subject_id=subject_id,
        idempotency_key=key,
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=MESSAGE)],
        parameters=inference_pb2.GenerationParameters(max_new_tokens=8),
    ).SerializeToString()


def main(tmp_path: Path) -> None:
    """Serve the old release on ``tmp_path`` and write the data the upgrade test reads."""
    with make_server(tmp_path, build_analyzer(), ScriptedEngine(REPLY)) as harness:
        crm = harness.channel_for("inference", principal="crm")
        generate = crm.unary_unary(
            "/custos.v1.Inference/Generate", response_deserializer=inference_pb2.GenerateResponse.FromString
        )
        first = generate(generate_request("customer-a", "conv-a", "retry-a"), timeout=60)
        second = generate(generate_request("customer-b", "conv-b", "retry-b"), timeout=60)
        feedback = crm.unary_unary(
            "/custos.v1.Feedback/Submit", response_deserializer=feedback_pb2.FeedbackResponse.FromString
        )(
            feedback_pb2.FeedbackRequest(
                request_id=first.request_id, rating=2, comment=COMMENT
            ).SerializeToString(),
            timeout=60,
        )
    print(
        json.dumps(
            {
                "custos": custos.__file__,
                "request_a": first.request_id,
                "request_b": second.request_id,
                "feedback_a": feedback.feedback_id,
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
