"""The compliance console over real TLS (the development CA) with httpx: sign-in, pages, refusals, audit.

A server on port 0 with ``console_listen``; Generate calls go through gRPC, the console is read with httpx as
a browser would (cookies, forms with their CSRF token). Client-certificate sign-in is tested here too.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from presidio_analyzer import AnalyzerEngine

from custos.audit.export import verify_export
from custos.security.tls import issue_cert, make_ca
from custos.testing.builders import generate_request
from custos.testing.server import ScriptedEngine, ScriptedServer, ServerHarness, make_server
from custos.v1 import feedback_pb2

NAME = "John Smith"
EMAIL = "john.smith@example.com"
QUESTION = f"Hi, I am {NAME}. My email is {EMAIL}. Where is my parcel?"
REPLY = "Hello <PERSON_1>, your parcel is on its way."
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def console(scripted_server: ScriptedServer) -> ServerHarness:
    harness, _ = scripted_server(REPLY, console_listen="127.0.0.1:0", purposes={"*": ["support"]})
    return harness


def url(harness: ServerHarness) -> str:
    assert harness.server.console_port is not None
    return f"https://127.0.0.1:{harness.server.console_port}"


def browser(harness: ServerHarness, verify: ssl.SSLContext | None = None) -> httpx.Client:
    context = verify or harness.http_tls()
    return httpx.Client(base_url=url(harness), verify=context, follow_redirects=False, timeout=30)


def csrf_of(page: str) -> str:
    found = _CSRF.search(page)
    assert found, "the page has no CSRF token"
    return html.unescape(found.group(1))


def sign_in(client: httpx.Client, token: str) -> httpx.Response:
    form = client.get("/signin")
    assert form.status_code == 200
    return client.post("/signin", data={"csrf": csrf_of(form.text), "token": token})


@contextlib.contextmanager
def signed_in(harness: ServerHarness, *roles: str, principal: str | None = None) -> Iterator[httpx.Client]:
    with browser(harness) as client:
        response = sign_in(client, harness.create_token(*roles, principal=principal))
        assert response.status_code == 303 and response.headers["location"] == "/search", response.text
        yield client


def generate(harness: ServerHarness, **fields: Any) -> str:
    response = harness.inference.Generate(generate_request(QUESTION, purpose="support", **fields))
    return str(response.request_id)


def console_reads(harness: ServerHarness) -> list[dict[str, Any]]:
    return [
        r["payload"]["details"]
        for r in harness.audit_rows("audit_read")
        if r["payload"]["details"].get("kind") == "console"
    ]


def denied(harness: ServerHarness) -> list[dict[str, Any]]:
    return [r for r in harness.audit_rows("denied") if r["rpc"] in ("SignIn", "Transcript")]


def wait_job(client: httpx.Client, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get("/chain/job").json()["job"]
        if job is not None and job["state"] != "running":
            return dict(job)
        time.sleep(0.05)
    pytest.fail("the verification job did not finish")


# ---- sign-in, session cookie, headers ------------------------------------------------------------------


def test_sign_in_sets_a_strict_short_lived_session_cookie(console: ServerHarness) -> None:
    with browser(console) as client:
        response = sign_in(client, console.create_token("compliance", principal="officer"))
        assert response.status_code == 303
        cookie = next(v for k, v in response.headers.multi_items() if k == "set-cookie" and "__Host-" in v)
        attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
        assert cookie.startswith("__Host-custos-console=")
        assert {"secure", "httponly", "path"} <= set(attributes)
        assert attributes["samesite"].lower() == "samesite=strict"
        assert attributes["max-age"] == "Max-Age=900"  # console_session_minutes = 15
        page = client.get("/search")
        assert page.status_code == 200 and "officer" in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert "'unsafe-inline'" not in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
        # No inline script anywhere: the only script is the bundled file.
        assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/static/console.js" defer>']
        for asset in ("/static/console.css", "/static/console.js"):
            served = client.get(asset)
            assert served.status_code == 200 and served.content
            assert served.headers["content-security-policy"].startswith("default-src 'self'")
        out = client.post("/signout", data={"csrf": csrf_of(page.text)})
        assert out.status_code == 303 and out.headers["location"] == "/signin"
        assert client.get("/search").headers.get("location") == "/signin"  # the session is gone
    actions = [d.get("action") for d in console_reads(console)]
    assert actions[:1] == ["sign_in"] and actions[-1] == "sign_out"


def test_pages_need_a_session(console: ServerHarness) -> None:
    with browser(console) as client:
        for path in ("/search", "/chain", "/reports", "/records/x"):
            response = client.get(path)
            assert response.status_code == 303 and response.headers["location"] == "/signin", path
        refused = client.post("/chain/verify", data={"csrf": "x"})
        assert refused.status_code == 401 and "session:" in refused.text
        assert client.get("/chain/job").status_code == 401


@pytest.mark.parametrize(
    ("token", "status", "reason"),
    [("", 401, "missing"), ("0123456789abcdef.wrong", 401, None), ("inference", 403, "rpc")],
)
def test_missing_wrong_or_insufficient_token_is_refused_and_audited(
    console: ServerHarness, token: str, status: int, reason: str | None
) -> None:
    value = console.create_token("inference") if token == "inference" else token
    with browser(console) as client:
        response = sign_in(client, value)
        assert response.status_code == status
        assert "token:" in response.text  # the message names the field
        assert "__Host-custos-console=" not in response.headers.get("set-cookie", "")
        assert client.get("/search").status_code == 303
    refusal = denied(console)[-1]
    assert refusal["rpc"] == "SignIn"
    if reason is not None:
        assert refusal["payload"]["details"]["reason"] == reason
    if token == "inference":
        assert refusal["payload"]["details"]["permission"] == "audit.read"
    assert "wrong" not in json.dumps(refusal["payload"])  # the secret tried is never recorded


def test_forged_csrf_tokens_are_refused(console: ServerHarness) -> None:
    with browser(console) as client:
        form = client.get("/signin")
        forged = client.post("/signin", data={"csrf": "forged", "token": console.admin_token})
        assert forged.status_code == 403 and "csrf:" in forged.text
        client.cookies.clear()  # a forged form from another site carries no double-submit cookie
        assert client.post("/signin", data={"csrf": csrf_of(form.text), "token": "x"}).status_code == 403
    with signed_in(console, "compliance") as client:
        for path in ("/chain/verify", "/signout", "/export"):
            response = client.post(path, data={"csrf": "not-the-session-token"})
            assert response.status_code == 403 and "csrf:" in response.text, path
        assert client.get("/chain/job").json()["job"] is None  # no job was started
        assert client.get("/search").status_code == 200  # nor was the session ended


# ---- search, record, export ----------------------------------------------------------------------------


def test_search_by_request_id_opens_the_explained_record(console: ServerHarness) -> None:
    request_id = generate(console)
    with signed_in(console, "compliance", principal="officer") as client:
        results = client.get("/search", params={"request_id": request_id})
        assert results.status_code == 200
        assert f'href="/records/{request_id}"' in results.text
        page = client.get(f"/records/{request_id}")
        assert page.status_code == 200
    text = page.text
    request_row = next(r for r in console.audit_rows("generate") if r["id"] == request_id)
    findings = request_row["payload"]["details"]["pii"]["findings"]
    assert {f["entity_type"] for f in findings} >= {"PERSON", "EMAIL_ADDRESS"}
    for finding in findings:
        assert f'<td class="f-type">{finding["entity_type"]}</td>' in text
        assert f'<td class="f-recognizer">{finding["recognizer"]}</td>' in text
        assert f'<td class="f-score">{finding["score"]:.2f}</td>' in text
        assert f'<td class="f-offsets">{finding["start"]}-{finding["end"]}</td>' in text
    model = request_row["payload"]["details"]["model_info"]
    assert f'id="model-digest">{model["source_sha256"]}<' in text
    assert 'class="chart bars"' in text  # latency by stage, from the completion record
    assert "No verification recorded yet" in text
    assert NAME not in text and EMAIL not in text  # only what the RPCs show: no raw value
    reads = console_reads(console)
    assert [d.get("read") for d in reads if d.get("read")][-2:] == ["query", "get"]
    assert reads[-1]["record_id"] == request_id and reads[-1]["actor"]["principal"] == "officer"


def test_search_by_plain_conversation_and_subject_ids_uses_the_blind_index(console: ServerHarness) -> None:
    generate(console, conversation_id="conv-77", subject_id="customer-42")
    rows = console.audit_rows("generate")
    principal = rows[-1]["actor"]  # the bootstrap admin's principal: conversations are scoped to it
    with signed_in(console, "compliance") as client:
        found = client.get("/search", params={"principal": principal, "conversation_id": "conv-77"})
        assert found.status_code == 200 and found.text.count('class="record-link"') == 2
        other = client.get("/search", params={"principal": principal, "conversation_id": "conv-78"})
        assert 'id="no-results"' in other.text
        subject = client.get("/search", params={"subject_id": "customer-42"})
        assert subject.text.count('class="record-link"') == 2
        missing = client.get("/search", params={"conversation_id": "conv-77"})
        assert missing.status_code == 400 and "conversation_id:" in missing.text
        bad_time = client.get("/search", params={"since": "yesterday"})
        assert bad_time.status_code == 400 and "since:" in bad_time.text
    recorded = json.dumps(console_reads(console))
    assert "conv-77" not in recorded and "customer-42" not in recorded
    assert rows[-1]["conversation_ref"] in recorded  # the blind index is what the read records


def test_export_of_the_current_search_is_the_verifiable_bundle(console: ServerHarness) -> None:
    request_id = generate(console)
    with signed_in(console, "compliance") as client:
        page = client.get("/search", params={"request_id": request_id})
        response = client.post("/export", data={"csrf": csrf_of(page.text), "request_id": request_id})
    assert response.status_code == 200
    assert response.headers["content-disposition"].startswith("attachment;")
    lines = response.content.splitlines()
    report = verify_export(lines)
    assert report.ok, report
    rows = [json.loads(line) for line in lines]
    assert {r.get("id") for r in rows if r.get("type") == "record"} >= {request_id}
    assert console_reads(console)[-1]["read"] == "export"


# ---- verification job ---------------------------------------------------------------------------------


def test_verification_job_runs_once_at_a_time_and_the_record_shows_it(console: ServerHarness) -> None:
    request_id = generate(console)
    with signed_in(console, "compliance") as client:
        chain = client.get("/chain")
        assert chain.status_code == 200 and "No passed verification is recorded" in chain.text
        started = client.post("/chain/verify", data={"csrf": csrf_of(chain.text)})
        assert started.status_code == 303
        job = wait_job(client)
        assert job["state"] == "passed", job
        assert job["checked"] > 0 and job["checkpoints"] >= 1
        chain = client.get("/chain")
        through = re.search(r"Verified through checkpoint (\d+)", chain.text)
        assert through, chain.text
        record = client.get(f"/records/{request_id}")
        assert f"Chain verified through checkpoint {through.group(1)}" in record.text
        # A second run continues from the verified checkpoint.
        client.post("/chain/verify", data={"csrf": csrf_of(chain.text)})
        assert wait_job(client)["mode"] == "incremental"
    verifies = [d for d in console_reads(console) if d.get("read") == "verify"]
    assert [v["state"] for v in verifies] == ["passed", "passed"]


# ---- reports and transcripts --------------------------------------------------------------------------


def test_reports_page_shows_processing_and_satisfaction(console: ServerHarness) -> None:
    request_id = generate(console)
    with signed_in(console, "compliance") as client:
        page = client.get("/reports")
        assert page.status_code == 200
        assert "Records of processing" in page.text and "support" in page.text and "PERSON" in page.text
        assert 'id="entity-chart"' in page.text and "<svg" in page.text
        assert "No feedback has been submitted yet" in page.text
        submit = console.channel.unary_unary(
            "/custos.v1.Feedback/Submit", response_deserializer=feedback_pb2.FeedbackResponse.FromString
        )
        submit(feedback_pb2.FeedbackRequest(request_id=request_id, rating=5).SerializeToString(), timeout=30)
        page = client.get("/reports", params={"period": "week"})
        chart = re.search(r'<div class="chart-box" id="satisfaction-chart">(.*?)</div>', page.text, re.S)
        assert chart and "<polyline" in chart.group(1) and "scripted" in chart.group(1)
        assert ">100%</td>" in page.text  # the one rating is a satisfied one
        refused = client.get("/reports", params={"period": "year"})
        assert refused.status_code == 400 and "period:" in refused.text
    reads = console_reads(console)
    assert [r["page"] for r in reads if r.get("page") == "reports"] == ["reports", "reports"]


def test_transcript_needs_its_permission_and_a_reason(console: ServerHarness) -> None:
    generate(console)
    completion = console.audit_rows("generate")[-1]
    transcript_id = completion["transcript_id"]
    with signed_in(console, "compliance") as client:
        refused = client.get(f"/transcripts/{transcript_id}")
        assert refused.status_code == 403 and "Transcript" in refused.text
        page = client.get("/search")
        posted = client.post(
            f"/transcripts/{transcript_id}", data={"csrf": csrf_of(page.text), "reason": "x"}
        )
        assert posted.status_code == 403 and NAME not in posted.text
    refusals = [d for d in denied(console) if d["rpc"] == "Transcript"]
    assert len(refusals) == 2 and refusals[0]["payload"]["details"]["permission"] == "transcript.read"
    assert console.audit_rows("transcript_read") == []
    with signed_in(console, "compliance-transcripts") as client:
        form = client.get(f"/transcripts/{transcript_id}")
        assert form.status_code == 200 and 'name="reason"' in form.text
        empty = client.post(f"/transcripts/{transcript_id}", data={"csrf": csrf_of(form.text), "reason": " "})
        assert empty.status_code == 400 and "reason:" in empty.text
        shown = client.post(
            f"/transcripts/{transcript_id}", data={"csrf": csrf_of(form.text), "reason": "complaint 17"}
        )
        assert shown.status_code == 200 and NAME in shown.text
    read = console.audit_rows("transcript_read")
    assert [r["payload"]["details"]["reason"] for r in read if r["status"] == "OK"] == ["complaint 17"]


# ---- client certificates ------------------------------------------------------------------------------


def test_client_certificate_sign_in(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    client_ca, client_ca_key = make_ca("clients")
    (tmp_path / "clients.pem").write_bytes(client_ca)
    for name in ("officer", "stranger"):
        cert, key = issue_cert(client_ca, client_ca_key, name, client=True)
        (tmp_path / f"{name}.pem").write_bytes(cert)
        (tmp_path / f"{name}-key.pem").write_bytes(key)
    with make_server(
        tmp_path,
        analyzer,
        ScriptedEngine(REPLY),
        console_listen="127.0.0.1:0",
        tls_client_ca_file=tmp_path / "clients.pem",
        client_cert_roles={"officer": ["compliance"]},
    ) as harness:

        def with_cert(name: str) -> httpx.Client:
            context = harness.http_tls()
            assert isinstance(context, ssl.SSLContext)
            context.load_cert_chain(tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem")
            return browser(harness, context)

        with with_cert("officer") as client:
            form = client.get("/signin")
            assert 'id="signin-certificate"' in form.text
            response = client.post("/signin/certificate", data={"csrf": csrf_of(form.text)})
            assert response.status_code == 303, response.text
            assert "officer" in client.get("/search").text
        with with_cert("stranger") as client:
            form = client.get("/signin")
            response = client.post("/signin/certificate", data={"csrf": csrf_of(form.text)})
            assert response.status_code == 403 and "certificate:" in response.text
        with browser(harness) as client:  # no certificate: the console still answers, a token signs in
            form = client.get("/signin")
            assert 'id="signin-certificate"' not in form.text
            no_cert = client.post("/signin/certificate", data={"csrf": csrf_of(form.text)})
            assert no_cert.status_code == 401
            assert sign_in(client, harness.create_token("compliance")).status_code == 303
        sign_ins = [d for d in console_reads(harness) if d.get("action") == "sign_in"]
        assert [(d["method"], d["actor"]["principal"]) for d in sign_ins[:1]] == [("mtls", "officer")]
        assert denied(harness)[-1]["actor"] == "stranger"


def test_off_by_default_and_refused_without_tls(tmp_path: Path, analyzer: AnalyzerEngine) -> None:
    from custos.server.settings import SettingsError, load_settings

    with make_server(tmp_path, analyzer, ScriptedEngine(REPLY)) as harness:
        assert harness.server.console is None and harness.server.console_port is None
    with pytest.raises(SettingsError, match="console_listen"):
        load_settings(data_dir=tmp_path, plaintext=True, console_listen="127.0.0.1:0")
