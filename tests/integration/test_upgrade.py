"""Upgrade: a data directory written by the previous release is read, rewrapped and erased by today's code.

The previous release is taken from git history (``git archive`` of its commit) and run in a subprocess with
the same virtual environment (its generated protobuf modules are today's: the protos did not change). It
writes transcripts of two subjects, an idempotent reply each and a feedback comment; today's server then
reads the transcripts, replays an idempotent request, the operator rotates the master key and rewraps the
subject keys, and erasing one subject leaves nothing of theirs readable while the other's data stays.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import grpc
import pytest
from presidio_analyzer import AnalyzerEngine
from typer.testing import CliRunner

import custos.v1
from custos.cli.main import app
from custos.testing.server import ScriptedEngine, ServerHarness, make_server
from custos.v1 import admin_pb2, audit_pb2, common_pb2, inference_pb2

#: The last release commit (the previous release's code writes the database).
PREVIOUS_RELEASE = "3313b25"
REPO = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("previous_release_writer.py")
REPLY = "Hello <PERSON_1>, your parcel is on its way."
MESSAGE = "I am John Smith, where is my parcel?"
COMMENT_VALUE = "Maria Garcia"


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's ``custos`` package, from git history, with today's generated protos."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed: the previous release cannot be taken from history")
    archive = subprocess.run(
        [git, "-C", str(REPO), "archive", "--format=tar", PREVIOUS_RELEASE, "custos"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.fail(
            f"git cannot read release {PREVIOUS_RELEASE} (a shallow clone? `git fetch --unshallow`): "
            + archive.stderr.decode(errors="replace")[-500:]
        )
    tree = tmp_path_factory.mktemp("previous-release")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    shutil.copytree(Path(custos.v1.__file__).parent, tree / "custos" / "v1")
    return tree


def write_with_previous_release(tree: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOS_")}
    env["PYTHONPATH"] = str(tree)
    done = subprocess.run(
        [sys.executable, str(WRITER), str(tmp_path)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    written: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    # It really ran the old code, not today's.
    assert Path(written["custos"]).resolve().is_relative_to(tree.resolve())
    return written


def generate_bytes(subject_id: str, conversation_id: str, key: str) -> bytes:
    """The writer's Generate request, byte for byte, so sending it again is a retry of it."""
    return inference_pb2.GenerateRequest(
        conversation_id=conversation_id,
        subject_id=subject_id,
        idempotency_key=key,
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=MESSAGE)],
        parameters=inference_pb2.GenerationParameters(max_new_tokens=8),
    ).SerializeToString()


def transcript_of(harness: ServerHarness, request_id: str) -> str:
    rows = harness.rows(
        "SELECT transcript_id FROM audit_records WHERE request_id = :r AND phase = 'completion'", r=request_id
    )
    return str(rows[0]["transcript_id"])


def read_transcript(channel: grpc.Channel, transcript_id: str) -> Any:
    return channel.unary_unary(
        "/custos.v1.Audit/GetTranscript", response_deserializer=audit_pb2.Transcript.FromString
    )(
        audit_pb2.GetTranscriptRequest(
            transcript_id=transcript_id, reason="upgrade check"
        ).SerializeToString(),
        timeout=30,
    )


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_database_of_the_previous_release_is_read_rewrapped_and_erased(
    previous_release: Path, tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    written = write_with_previous_release(previous_release, tmp_path)
    data_dir = str(tmp_path / "data")

    # 1 today's server opens the old database: transcripts read, an old idempotent reply is replayed.
    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY)) as harness:
        officer = harness.channel_for("compliance-transcripts")
        id_a = transcript_of(harness, written["request_a"])
        id_b = transcript_of(harness, written["request_b"])
        for transcript_id in (id_a, id_b):
            assert read_transcript(officer, transcript_id).messages[0].content == MESSAGE
        conversations = {
            r["subject_ref"]: r["conversation_ref"]
            for r in harness.rows("SELECT subject_ref, conversation_ref FROM transcripts")
        }
        ref_a = harness.rows("SELECT subject_ref FROM transcripts WHERE id = :i", i=id_a)[0]["subject_ref"]
    assert len(conversations) == 2

    # 2 the operator rotates the master key and rewraps every subject key to it.
    cli("keys", "rotate", "--data-dir", data_dir)
    assert "2 subject keys rewrapped to master key version 2" in cli("keys", "rewrap", "--data-dir", data_dir)

    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY)) as harness:
        assert {r["master_version"] for r in harness.rows("SELECT master_version FROM subject_keys")} == {2}
        officer = harness.channel_for("compliance-transcripts")
        assert read_transcript(officer, id_a).messages[0].content == MESSAGE
        crm = harness.channel_for("inference", principal="crm")
        replay = crm.unary_unary(
            "/custos.v1.Inference/Generate", response_deserializer=inference_pb2.GenerateResponse.FromString
        )(generate_bytes("customer-b", "conv-b", "retry-b"), timeout=30)
        assert replay.request_id == written["request_b"]

        # 3 erasure of customer A: the old feedback had re-sealed A's map under the master key alone.
        result = harness.channel_for("admin").unary_unary(
            "/custos.v1.Admin/EraseSubject", response_deserializer=admin_pb2.EraseSubjectResponse.FromString
        )(admin_pb2.EraseSubjectRequest(subject_id="customer-a").SerializeToString(), timeout=30)
        assert result.subject_ref == ref_a and result.subject_key_destroyed
        assert result.transcripts_unreadable == 1 and result.vault_rows_deleted == 1
        with pytest.raises(grpc.RpcError) as info:
            read_transcript(officer, id_a)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        vault = harness.rows("SELECT conversation_ref FROM conversation_vault")
        assert vault == [{"conversation_ref": conversations[r]} for r in conversations if r != ref_a]
        feedback = harness.rows("SELECT comment FROM feedback WHERE id = :i", i=written["feedback_a"])
        assert feedback == [{"comment": None}]
        replies = harness.rows("SELECT request_id FROM idempotency_keys")
        assert [r["request_id"] for r in replies] == [written["request_b"]]
        # B is untouched, and the chain written by both releases verifies.
        assert read_transcript(officer, id_b).messages[0].content == MESSAGE
        verify = officer.unary_unary(
            "/custos.v1.Audit/Verify", response_deserializer=audit_pb2.AuditVerifyResponse.FromString
        )(audit_pb2.AuditVerifyRequest().SerializeToString(), timeout=30)
        assert verify.ok, verify.reason
        stored = "\n".join(
            bytes(r["payload"]).decode() for r in harness.rows("SELECT payload FROM audit_records")
        )
        assert COMMENT_VALUE not in stored and "John Smith" not in stored
