"""Task templates: loading, rendering with few-shot examples, versioning and the operator's override."""

from __future__ import annotations

from pathlib import Path

import pytest

from custos.engine.types import ChatTurn
from custos.tasks.templates import TemplateError, TemplateRegistry

BUNDLED = ["answer", "extract-needs", "next-best-action", "sentiment", "summarise"]


def test_bundled_templates_load_with_id_version_and_hash() -> None:
    registry = TemplateRegistry.load()
    assert registry.ids == BUNDLED
    for template_id in BUNDLED:
        template = registry.get(template_id)
        assert template.version >= 1
        assert len(template.sha256) == 64


def test_answer_renders_examples_then_the_question_with_and_without_policy() -> None:
    template = TemplateRegistry.load().get("answer")
    with_policy = template.render({"question": "Can I pay later?", "policy": "Invoices are due in 14 days."})
    assert with_policy[0].role == "system"
    # Few-shot: each example is a user turn followed by its answer, before the live question.
    assert [t.role for t in with_policy[1:]] == ["user", "assistant", "user", "assistant", "user"]
    assert with_policy[1].content.startswith("Company policy: Returns are free within 30 days")
    assert with_policy[-1] == ChatTurn(
        "user", "Company policy: Invoices are due in 14 days.\nQuestion: Can I pay later?"
    )
    without = template.render({"question": "Can I pay later?"})
    assert without[-1] == ChatTurn("user", "Question: Can I pay later?")


def test_catalogue_and_literal_dollar_signs() -> None:
    template = TemplateRegistry.load().get("next-best-action")
    turns = template.render(
        {"conversation": "Customer: I paid $5 too much, ${x}"}, catalogue=["refund", "call"]
    )
    assert "- refund\n- call" in turns[-1].content
    assert "I paid $5 too much, ${x}" in turns[-1].content  # never a second substitution


def test_variables_are_checked() -> None:
    template = TemplateRegistry.load().get("answer")
    with pytest.raises(TemplateError, match="variables\\[question\\]"):
        template.check_variables([], has_messages=True)
    with pytest.raises(TemplateError, match="unknown"):
        template.check_variables(["question", "shoe_size"], has_messages=False)
    summarise = TemplateRegistry.load().get("summarise")
    summarise.check_variables([], has_messages=True)  # the conversation comes from the messages
    with pytest.raises(TemplateError):
        summarise.check_variables([], has_messages=False)


def test_override_directory_replaces_by_id_and_changes_version_and_hash(tmp_path: Path) -> None:
    bundled = TemplateRegistry.load().get("sentiment")
    (tmp_path / "sentiment.toml").write_text(
        'id = "sentiment"\nversion = 2\nvariables = ["message"]\nprompt = "Mood of: ${message}"\n'
    )
    (tmp_path / "greet.toml").write_text(
        'id = "greet"\nversion = 1\nvariables = ["name"]\nprompt = "Hi ${name}"\n'
    )
    registry = TemplateRegistry.load(tmp_path)
    replaced = registry.get("sentiment")
    assert (replaced.version, replaced.sha256 != bundled.sha256) == (2, True)
    assert replaced.render({"message": "ok"}) == (ChatTurn("user", "Mood of: ok"),)
    assert "greet" in registry


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('id = "x"\nversion = 0\nprompt = "p"\n', "version"),
        ('id = "X Y"\nversion = 1\nprompt = "p"\n', "id"),
        ('id = "x"\nversion = 1\nprompt = "${nope}"\n', "prompt"),
        (
            'id = "x"\nversion = 1\nprompt = "p"\nvariables = ["a"]\n[[examples]]\nanswer = "y"\n',
            "examples[0]",
        ),
        ("id = ", "not valid TOML"),
    ],
)
def test_bad_template_files_name_the_field(tmp_path: Path, body: str, field: str) -> None:
    (tmp_path / "bad.toml").write_text(body)
    with pytest.raises(TemplateError, match=field.replace("[", "\\[")):
        TemplateRegistry.load(tmp_path)
