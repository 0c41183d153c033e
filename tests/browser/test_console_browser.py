"""The compliance console in a real browser: Debian's headless Chromium driven by Selenium, over TLS.

Given only the request id of a Generate answered by the tiny test model, the officer signs in, searches,
opens the record and finds each finding's type, recognizer, score and offsets and the model digest on the
page; runs a verification and sees "verified through checkpoint N" on the record; opens the reports. A
screenshot of each page is kept under ``test-artifacts/console/`` (git-ignored; ``CUSTOS_TEST_ARTIFACTS``
moves it).

Chromium trusts the development CA through an SPKI pin of the server's key (``--ignore-certificate-errors-
spki-list``), which is certificate checking narrowed to that one key, not switched off. ``make install-test``
installs ``chromium`` and ``chromium-driver``; without them the test is skipped and says why.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from presidio_analyzer import AnalyzerEngine

from custos.testing.builders import generate_request
from custos.testing.server import ServerHarness, make_server
from custos.testing.tiny_engine import build_tiny_engine

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
QUESTION = "Hi, I am John Smith, my email is john.smith@example.com. Where is my parcel?"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver): "
    "make install-test installs them",
)


def _artifacts() -> Path:
    root = Path(os.environ.get("CUSTOS_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
    path = root / "console"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _spki_pin(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def served(tmp_path: Path, analyzer: AnalyzerEngine) -> Iterator[ServerHarness]:
    with make_server(
        tmp_path,
        analyzer,
        build_tiny_engine(),
        console_listen="127.0.0.1:0",
        max_new_tokens_limit=16,
        purposes={"*": ["support"]},
    ) as harness:
        yield harness


@pytest.fixture
def driver(served: ServerHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--ignore-certificate-errors-spki-list="
        + _spki_pin(served.server.settings.resolved_tls_cert_file.read_bytes()),
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    browser.set_page_load_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()


def test_officer_finds_explains_and_verifies_a_generate(served: ServerHarness, driver: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(driver, WebDriver)
    shots = _artifacts()
    request_id = served.inference.Generate(generate_request(QUESTION, purpose="support")).request_id
    token = served.create_token("compliance", principal="officer")
    base = f"https://127.0.0.1:{served.server.console_port}"
    wait = WebDriverWait(driver, 30)

    driver.get(f"{base}/search")  # no session yet: sent to the sign-in page
    wait.until(ec.presence_of_element_located((By.ID, "token")))
    driver.save_screenshot(str(shots / "1-signin.png"))
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "signin").click()
    wait.until(ec.presence_of_element_located((By.ID, "request_id")))
    assert "officer" in driver.find_element(By.ID, "who").text

    driver.find_element(By.ID, "request_id").send_keys(request_id)
    driver.find_element(By.ID, "search").click()
    link = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f'a[href="/records/{request_id}"]')))
    driver.save_screenshot(str(shots / "2-search.png"))
    link.click()
    wait.until(ec.presence_of_element_located((By.ID, "findings")))
    driver.save_screenshot(str(shots / "3-record.png"))

    request_row = next(r for r in served.audit_rows("generate") if r["id"] == request_id)
    details = request_row["payload"]["details"]
    expected = [
        (f["entity_type"], f["recognizer"], f"{f['score']:.2f}", f"{f['start']}-{f['end']}")
        for f in details["pii"]["findings"]
    ]
    assert {e[0] for e in expected} >= {"PERSON", "EMAIL_ADDRESS"}
    columns = ("f-type", "f-recognizer", "f-score", "f-offsets")
    shown = [
        tuple(row.find_element(By.CLASS_NAME, c).text for c in columns)
        for row in driver.find_elements(By.CSS_SELECTOR, "#findings tr.finding")
    ]
    assert shown == expected
    assert driver.find_element(By.ID, "model-digest").text == details["model_info"]["source_sha256"]
    assert driver.find_element(By.ID, "model-name").text == details["model_info"]["name"]
    assert "No verification recorded yet" in driver.find_element(By.ID, "chain-summary").text
    assert driver.find_elements(By.CSS_SELECTOR, "#latency svg rect.bar")  # latency by stage, drawn

    driver.find_element(By.LINK_TEXT, "Chain status").click()
    wait.until(ec.element_to_be_clickable((By.ID, "verify"))).click()
    # The bundled script polls the job and reloads the page when it is done.
    wait.until(ec.text_to_be_present_in_element((By.ID, "job-state"), "passed"))
    wait.until(ec.presence_of_element_located((By.ID, "job-result")))
    driver.save_screenshot(str(shots / "4-chain.png"))
    verified = driver.find_element(By.ID, "last-verification").text
    assert verified.startswith("Verified through checkpoint ")
    number = verified.split()[3]

    driver.get(f"{base}/records/{request_id}")
    summary = wait.until(ec.presence_of_element_located((By.ID, "chain-summary"))).text
    assert f"verified through checkpoint {number}" in summary
    driver.save_screenshot(str(shots / "5-record-verified.png"))

    driver.find_element(By.LINK_TEXT, "Reports").click()
    wait.until(ec.presence_of_element_located((By.ID, "processing")))
    assert "support" in driver.find_element(By.ID, "processing").text
    driver.save_screenshot(str(shots / "6-reports.png"))

    # Nothing was loaded from elsewhere and the CSP refused nothing (no inline script or style on any page).
    messages = [str(entry.get("message", "")) for entry in driver.get_log("browser")]
    assert not [m for m in messages if "Content Security Policy" in m], messages
    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(function (e) { return e.name; });"
    )
    assert all(str(name).startswith(base) for name in resources), resources
    for shot in ("1-signin", "2-search", "3-record", "4-chain", "5-record-verified", "6-reports"):
        assert (shots / f"{shot}.png").stat().st_size > 1000
