"""``custos anonymize``: text or JSONL in, JSONL out; placeholders scoped per conversation; audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from custos.cli.main import app
from custos.cli.privacy import InputError, parse_jsonl


def test_anonymize_jsonl_and_text(tmp_path: Path) -> None:
    data = tmp_path / "data"
    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(
            [
                json.dumps({"conversation_id": "c1", "text": "I am John Smith, card 4111 1111 1111 1111."}),
                json.dumps(
                    {
                        "conversation_id": "c1",
                        "messages": [
                            {"role": "user", "content": "Maria Garcia and John Smith here."},
                            {"role": "assistant", "content": "Hello!"},
                        ],
                    }
                ),
                json.dumps({"conversation_id": "c2", "text": "Maria Garcia speaking."}),
            ]
        )
    )
    runner = CliRunner()
    result = runner.invoke(app, ["anonymize", "--file", str(source), "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [m["content"] for m in lines[0]["messages"]] == ["I am <PERSON_1>, card <CREDIT_CARD_1>."]
    assert lines[1]["messages"][0]["content"] == "<PERSON_2> and <PERSON_1> here."
    assert lines[2]["messages"][0]["content"] == "<PERSON_1> speaking."
    assert {f["entity_type"] for f in lines[0]["findings"]} == {"PERSON", "CREDIT_CARD"}
    assert "Smith" not in json.dumps([line["findings"] for line in lines])

    single = runner.invoke(app, ["anonymize", "Mail jane@example.com", "--data-dir", str(data)])
    assert single.exit_code == 0, single.output
    assert "<EMAIL_ADDRESS_1>" in single.stdout

    engine = create_engine(f"sqlite:///{data / 'custos.db'}")
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT actor, payload FROM audit_records WHERE event_type='anonymize'")
        ).all()
    engine.dispose()
    assert len(rows) == 4
    assert all(actor.startswith("os:") for actor, _ in rows)
    assert not any(b"Smith" in payload or b"4111" in payload for _, payload in rows)

    # The maps are sealed for each conversation's anonymous subject (never under the master key alone),
    # so erasing that subject removes them.
    actor = rows[0][0]
    erased = runner.invoke(
        app, ["subjects", "erase", "--principal", actor, "--conversation", "c1", "--data-dir", str(data)]
    )
    assert erased.exit_code == 0, erased.output
    summary = json.loads(erased.stdout.strip().splitlines()[-1])
    assert summary["subject_key_destroyed"] is True and summary["vault_rows_deleted"] == 1
    engine = create_engine(f"sqlite:///{data / 'custos.db'}")
    with engine.connect() as conn:
        left = conn.execute(text("SELECT subject_ref FROM conversation_vault")).scalars().all()
    engine.dispose()
    assert len(left) == 2 and None not in left  # c2 and the single text's conversation


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not json", "line 1: not JSON"),
        ('{"messages": []}', "line 1: needs 'text'"),
        ('{"messages": [{"role": "boss", "content": "x"}]}', "line 1: messages[0]"),
        ('{"text": 5}', "line 1: text must be a string"),
    ],
)
def test_bad_input_lines_are_named(line: str, problem: str) -> None:
    with pytest.raises(InputError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        list(parse_jsonl([line]))
