"""Tasks over a real socket: Generate with a template, Classify, Feedback and the satisfaction report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import grpc
import pytest
from presidio_analyzer import AnalyzerEngine
from typer.testing import CliRunner

from custos.cli.main import app as cli_app
from custos.tasks.templates import TemplateRegistry
from custos.testing.server import ScriptedEngine, ScriptedServer, ServerHarness, SpyEngine, make_server
from custos.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc, inference_pb2, inference_pb2_grpc

NAME = "Jonathan Whitfield"
EMAIL = "jonathan.whitfield@example.com"


@pytest.fixture
def scripted(tmp_path: Path, scripted_server: ScriptedServer) -> tuple[ServerHarness, ScriptedEngine]:
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "tone.toml").write_text(
        'id = "tone"\nversion = 2\nprompt = "Message: ${message}\\nTone:"\n'
        '[[labels]]\nname = "happy"\n[[labels]]\nname = "angry"\n'
        "[calibration]\ntemperature = 1.0\nbias = { happy = 2.0, angry = -2.0 }\n"
    )
    return scripted_server("Thanks <PERSON_1>.", chunk=5, label_sets_dir=labels, plaintext=True)


def test_generate_with_a_task_renders_the_template_and_records_its_version(
    tmp_path: Path, analyzer: AnalyzerEngine, tiny_engine: Any
) -> None:
    spy = SpyEngine(tiny_engine)
    with make_server(tmp_path, analyzer, spy, max_new_tokens_limit=8) as harness:
        response = harness.inference.Generate(
            inference_pb2.GenerateRequest(
                conversation_id="c-task",
                task="answer",
                variables={"question": f"Hi, I am {NAME}. Can I return shoes?", "policy": "30-day returns."},
                parameters=inference_pb2.GenerationParameters(max_new_tokens=4),
            )
        )
        template = TemplateRegistry.load().get("answer")
        assert (response.template.id, response.template.version, response.template.sha256) == (
            "answer",
            template.version,
            template.sha256,
        )
        turns = spy.turns[-1]
        assert turns[-1].content == (
            "Company policy: 30-day returns.\nQuestion: Hi, I am <PERSON_1>. Can I return shoes?"
        )
        assert NAME not in spy.prompts[-1]  # variables are anonymized like messages
        request = next(r for r in harness.audit_rows("generate") if r["phase"] == "request")
        details = request["payload"]["details"]
        assert details["template"] == {"id": "answer", "version": template.version, "sha256": template.sha256}
        assert details["variables"] == ["policy", "question"]
        assert NAME not in json.dumps(request["payload"])


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"task": "no-such-task", "variables": {"question": "q"}}, "task"),
        ({"task": "answer"}, "variables[question]"),
        ({"task": "answer", "variables": {"question": "q", "shoe": "42"}}, "variables"),
        ({"variables": {"question": "q"}}, "variables"),
    ],
)
def test_bad_task_requests_are_refused_and_audited(
    scripted: tuple[ServerHarness, ScriptedEngine], fields: dict[str, Any], field: str
) -> None:
    harness, _ = scripted
    messages = [] if "task" in fields else [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")]
    with pytest.raises(grpc.RpcError) as err:
        harness.inference.Generate(
            inference_pb2.GenerateRequest(conversation_id="c", messages=messages, **fields)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field)
    assert harness.audit_rows("invalid")[-1]["payload"]["details"]["field"] == field


def test_classify_returns_a_distribution_and_audits_it(
    scripted: tuple[ServerHarness, ScriptedEngine],
) -> None:
    harness, engine = scripted
    message = f"I am {NAME} ({EMAIL}) and I was charged twice, please refund me"
    request = inference_pb2.ClassifyRequest(
        conversation_id="c-cls", message=message, labels=["refund", "delivery", "login"]
    )
    first = harness.inference.Classify(request)
    second = harness.inference.Classify(request)
    assert first.label == "refund" and first.calibrated is False and first.label_set == "ad-hoc"
    assert math.isclose(sum(p.probability for p in first.distribution), 1.0, rel_tol=1e-9)
    assert [(p.label, p.probability) for p in first.distribution] == [
        (p.label, p.probability) for p in second.distribution
    ]
    assert NAME not in engine.prefixes[-1] and EMAIL not in engine.prefixes[-1]
    assert "<PERSON_1>" in engine.prefixes[-1]
    records = harness.audit_rows("classify")
    completion = [r for r in records if r["phase"] == "completion"][-1]
    classification = completion["payload"]["details"]["classification"]
    # Ad hoc labels are caller text: the record names them by keyed digests only.
    assert harness.server.flows is not None
    digest = harness.server.flows.digest
    assert classification["label"] == digest("label", "refund")
    assert set(classification["distribution"]) == {
        digest("label", n) for n in ("refund", "delivery", "login")
    }
    assert "refund" not in json.dumps([r["payload"] for r in records])
    assert completion["model"] == "scripted"
    assert NAME not in json.dumps([r["payload"] for r in records])


def test_configured_label_set_is_calibrated(scripted: tuple[ServerHarness, ScriptedEngine]) -> None:
    harness, _ = scripted
    # The scripted scores are equal for both labels; the calibration's prior (+2 / -2) decides.
    answer = harness.inference.Classify(
        inference_pb2.ClassifyRequest(conversation_id="c", message="fine", label_set="tone")
    )
    assert answer.calibrated is True and answer.label_set_version == 2
    assert answer.label == "happy"
    assert answer.distribution[0].probability == pytest.approx(1 / (1 + math.exp(-4.0)))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"message": "x"}, "label_set"),
        ({"message": "x", "label_set": "tone", "labels": ["a", "b"]}, "label_set"),
        ({"message": "x", "labels": ["only"]}, "labels"),
        ({"message": "x", "label_set": "nope"}, "label_set"),
        ({"labels": ["a", "b"]}, "message"),
    ],
)
def test_bad_classify_requests_name_the_field(
    scripted: tuple[ServerHarness, ScriptedEngine], fields: dict[str, Any], field: str
) -> None:
    harness, _ = scripted
    with pytest.raises(grpc.RpcError) as err:
        harness.inference.Classify(inference_pb2.ClassifyRequest(conversation_id="c", **fields))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field)


def test_feedback_is_linked_anonymized_and_reported(
    scripted: tuple[ServerHarness, ScriptedEngine], tmp_path: Path
) -> None:
    harness, _ = scripted
    channel = harness.channel_for("inference", principal="crm")
    inference = inference_pb2_grpc.InferenceStub(channel)
    feedback = feedback_pb2_grpc.FeedbackStub(channel)
    answered = inference.Generate(
        inference_pb2.GenerateRequest(
            conversation_id="c-fb", task="sentiment", variables={"message": "Great, thanks!"}
        )
    )
    classified = inference.Classify(
        inference_pb2.ClassifyRequest(conversation_id="c-fb", message="hello", labels=["a", "b"])
    )
    stored = feedback.Submit(
        feedback_pb2.FeedbackRequest(
            request_id=answered.request_id, rating=5, comment=f"Lovely, said {NAME}, mail me at {EMAIL}"
        )
    )
    feedback.Submit(feedback_pb2.FeedbackRequest(request_id=classified.request_id, rating=2))
    assert stored.request_id == answered.request_id
    assert NAME not in stored.comment and EMAIL not in stored.comment and "<PERSON_1>" in stored.comment
    [row] = harness.rows(f"SELECT * FROM feedback WHERE id = '{stored.feedback_id}'")
    assert (row["request_id"], row["rating"], row["task"], row["model"]) == (
        answered.request_id,
        5,
        "sentiment",
        "scripted",
    )
    assert NAME not in row["comment"]
    event = harness.audit_rows("feedback")[0]["payload"]["details"]
    assert event["linked_request_id"] == answered.request_id and event["rating"] == 5
    assert NAME not in json.dumps(event)

    # Someone else's request, an unknown id, a rating out of range.
    other = feedback_pb2_grpc.FeedbackStub(harness.channel_for("inference", principal="other"))
    for stub, request, code in (
        (
            other,
            feedback_pb2.FeedbackRequest(request_id=answered.request_id, rating=3),
            grpc.StatusCode.NOT_FOUND,
        ),
        (feedback, feedback_pb2.FeedbackRequest(request_id="nope", rating=3), grpc.StatusCode.NOT_FOUND),
        (
            feedback,
            feedback_pb2.FeedbackRequest(request_id=answered.request_id, rating=6),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stub.Submit(request)
        assert err.value.code() == code

    report = feedback_pb2_grpc.FeedbackStub(harness.channel_for("compliance")).Satisfaction(
        feedback_pb2.SatisfactionRequest(period="month")
    )
    by_task = {r.task: r for r in report.rows}
    assert set(by_task) == {"sentiment", "classify:ad-hoc"}
    assert (by_task["sentiment"].count, by_task["sentiment"].mean_rating, by_task["sentiment"].satisfied) == (
        1,
        5.0,
        1.0,
    )
    assert by_task["classify:ad-hoc"].satisfied == 0.0

    result = CliRunner().invoke(
        cli_app,
        [
            "report",
            "satisfaction",
            "--format",
            "json",
            "--server",
            harness.target,
            "--token",
            harness.create_token("compliance"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert {r["task"] for r in json.loads(result.output)} == {"sentiment", "classify:ad-hoc"}
