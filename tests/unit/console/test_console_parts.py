"""The console's parts without a server: sessions, the search form, the charts, the verification job."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from custos.audit import AuditStore, default_sqlite_url, make_engine, migrate
from custos.audit.checkpoints import SIGNING_KEY_FILE, CheckpointSigner
from custos.audit.trail import AuditTrail
from custos.bench.audit_log import build_log
from custos.console.app import parse_search
from custos.console.charts import bar_chart, line_chart
from custos.console.explain import chain_position, findings_of, latency_stages
from custos.console.jobs import JobRunning, JobStatus, VerificationJobs, wait_finished
from custos.console.sessions import SessionStore, same_secret
from custos.flows.errors import InvalidArgument
from custos.flows.types import Caller
from custos.privacy.keys import blind_index

KEY = bytes(range(32))
CALLER = Caller(principal="officer", peer="ipv4:127.0.0.1:1", permissions=frozenset({"audit.read"}))


# ---- sessions -------------------------------------------------------------------------------------------


def test_sessions_expire_at_their_lifetime_and_end_at_sign_out() -> None:
    now = [1000.0]
    store = SessionStore(900, clock=lambda: now[0])
    cookie, session = store.open(CALLER, "token")
    assert store.get(cookie) == session and session.remaining_s(now[0]) == 900
    now[0] += 899
    assert store.get(cookie) is not None
    now[0] += 1
    assert store.get(cookie) is None and len(store) == 0  # expired: gone, never extended
    cookie, _ = store.open(CALLER, "token")
    store.close(cookie)
    assert store.get(cookie) is None
    assert store.get("") is None and store.get("not-a-session") is None


def test_session_ids_and_csrf_tokens_are_distinct_and_compared_strictly() -> None:
    store = SessionStore(60)
    first, a = store.open(CALLER, "token")
    second, b = store.open(CALLER, "token")
    assert first != second and a.csrf != b.csrf and len(first) >= 43
    assert same_secret(a.csrf, a.csrf)
    assert not same_secret(a.csrf, b.csrf)
    assert not same_secret(a.csrf, None) and not same_secret(None, None) and not same_secret("", "")


# ---- the search form ------------------------------------------------------------------------------------


def test_plain_ids_become_the_blind_indexes_the_records_carry() -> None:
    form = parse_search(
        {"principal": "svc:crm", "conversation_id": "c-1", "subject_id": "s-9", "since": "2026-01-05T10:30"},
        lambda: KEY,
    )
    assert form.where.actor == "svc:crm"
    assert form.where.conversation_ref == blind_index(KEY, "conversation", "svc:crm\x00c-1")
    assert form.where.subject_ref == blind_index(KEY, "subject", "s-9")
    assert form.where.since == datetime(2026, 1, 5, 10, 30, tzinfo=UTC)
    assert "c-1" not in str(form.where.for_audit()) and "s-9" not in str(form.where.for_audit())
    assert parse_search({}, lambda: KEY).where.given() == {}


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"conversation_id": "c-1"}, "conversation_id"),
        ({"since": "last week"}, "since"),
        ({"until": "2026-13-01T00:00"}, "until"),
        ({"principal": "x" * 300}, "principal"),
    ],
)
def test_bad_search_input_names_its_field(values: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_search(values, lambda: KEY)
    assert raised.value.field == field


# ---- charts and the explanation -------------------------------------------------------------------------


def test_bar_chart_scales_to_the_largest_value_and_escapes_labels() -> None:
    svg = str(bar_chart([("decode", 300.0), ("<b>", 150.0)], unit="ms", title="Latency"))
    assert svg.startswith("<svg") and svg.count('class="bar"') == 2
    assert 'width="330.0"' in svg and 'width="165.0"' in svg  # 520 - 110 - 80 = 330 px for the largest
    assert "<b>" not in svg and "&lt;b&gt;" in svg
    assert "style=" not in svg  # the CSP allows no inline style
    assert str(bar_chart([], unit="ms", title="none")) == ""


def test_line_chart_plots_each_series_over_the_periods() -> None:
    svg = str(
        line_chart(
            [
                ("summarise / m", [("2026-01-05", 50.0), ("2026-01-12", 100.0)]),
                ("classify / m", [("2026-01-05", 0.0)]),
            ],
            y_max=100.0,
            y_label="% satisfied",
            title="Satisfaction",
        )
    )
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 3
    assert 'points="48.0,108.0 624.0,16.0"' in svg  # 50 % half-way up, 100 % at the top
    assert "style=" not in svg


def test_findings_and_stages_are_read_without_values() -> None:
    details = {
        "pii": {
            "findings": [
                {
                    "entity_type": "PERSON",
                    "recognizer": "SpacyRecognizer",
                    "score": 0.85,
                    "start": 9,
                    "end": 19,
                    "message_index": 0,
                    "placeholder": "<PERSON_1>",
                    "explanation": {"text": "John"},
                },
            ]
        },
        "latency_ms": {"decode": 12.0, "privacy": 3.5, "zeta": 1, "flag": True},
    }
    (finding,) = findings_of(details)
    assert (finding.entity_type, finding.recognizer, finding.score, finding.start, finding.end) == (
        "PERSON", "SpacyRecognizer", 0.85, 9, 19,
    )  # fmt: skip
    assert "John" not in repr(finding)
    assert latency_stages(details) == [("privacy", 3.5), ("decode", 12.0), ("zeta", 1.0)]


# ---- the verification job -------------------------------------------------------------------------------


@pytest.fixture
def trail(tmp_path: Path) -> AuditTrail:
    engine = make_engine(default_sqlite_url(tmp_path))
    migrate(engine)
    store = AuditStore(engine)
    CheckpointSigner.create(tmp_path / SIGNING_KEY_FILE)
    build_log(engine, 3000, seed=3)
    opened = AuditTrail.open(store, tmp_path)
    opened.writer.write("restore", note="test: the built log's head")
    return opened


def test_one_job_at_a_time_then_incremental_from_the_verified_checkpoint(trail: AuditTrail) -> None:
    finished: list[JobStatus] = []
    jobs = VerificationJobs(trail, finished.append)
    first = jobs.start("officer")
    with pytest.raises(JobRunning):
        jobs.start("officer")
    done = wait_finished(jobs, 60)
    assert done is not None and done.number == first.number and done.state == "passed", done
    assert done.mode == "full" and done.checked >= 3000 and done.percent == 100
    again = jobs.start("officer")
    resumed = wait_finished(jobs, 60)
    assert resumed is not None and resumed.number == again.number
    assert resumed.state == "passed" and resumed.mode == "incremental" and resumed.checked < 3000
    assert [f.state for f in finished] == ["passed", "passed"]


def test_a_cancelled_job_stops_and_records_no_verified_state(trail: AuditTrail) -> None:
    from custos.audit.incremental import read_state, state_path

    finished: list[JobStatus] = []
    jobs = VerificationJobs(trail, finished.append)
    jobs.start("officer")
    assert jobs.cancel()
    done = wait_finished(jobs, 60)
    assert done is not None and done.state == "cancelled" and done.checked == 0
    assert read_state(state_path(trail.log), trail.public_key) is None
    assert not jobs.cancel()  # nothing runs any more
    assert [f.state for f in finished] == ["cancelled"]


def test_chain_position_names_the_verified_checkpoint(trail: AuditTrail) -> None:
    from custos.audit.checkpoints import effective_checkpoints
    from custos.audit.incremental import read_state, state_path

    checkpoints = effective_checkpoints(trail.log.read(trail.public_key))
    assert chain_position(10, checkpoints, None).verified is False
    trail.verify_recorded()
    state = read_state(state_path(trail.log), trail.public_key)
    position = chain_position(10, checkpoints, state)
    assert position.verified and position.verified_through == len(checkpoints) == position.covering_checkpoint
    beyond = chain_position(checkpoints[-1].seq + 1, checkpoints, state)
    assert not beyond.verified and beyond.covering_checkpoint is None
