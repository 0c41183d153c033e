"""The upstream engine against a fake OpenAI-compatible server: streaming, faults, cancellation, limits."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from custos.engine.prompt import PLAIN_CUSTOMER_SERVICE_FORMAT
from custos.engine.types import (
    ChatTurn,
    EngineBusy,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
    EngineUnsupported,
    SamplingParams,
)
from custos.engine.upstream import UpstreamEngine, check_base_url
from custos.testing.upstream import FakeUpstream

TURNS = (ChatTurn("user", "Hi, I am <PERSON_1>. Where is my order <ORDER_ID_1>?"),)


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


def make_engine(fake: FakeUpstream, **kwargs: object) -> UpstreamEngine:
    options: dict[str, object] = {"timeout_s": 2.0, **kwargs}
    return UpstreamEngine(fake.base_url, fake.model, **options)  # type: ignore[arg-type]


@pytest.fixture
def engine(fake: FakeUpstream) -> Iterator[UpstreamEngine]:
    engine = make_engine(fake)
    yield engine
    engine.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_generate_streams_the_reply_with_logprobs_and_usage(
    engine: UpstreamEngine, fake: FakeUpstream
) -> None:
    deltas: list[str] = []
    result = engine.generate(TURNS, SamplingParams(max_new_tokens=32, seed=7), on_text=deltas.append)

    assert result.text == fake.reply == "".join(deltas)
    assert len(deltas) > 1  # streamed, not one piece
    assert result.finish_reason == "stop"
    assert result.completion_tokens == len(fake.reply.split())
    assert result.prompt_tokens > 0
    assert result.mean_logprob == pytest.approx(-0.25) and result.min_logprob == pytest.approx(-0.25)
    (body,) = fake.received
    assert body["prompt"] == PLAIN_CUSTOMER_SERVICE_FORMAT.render(TURNS)
    assert body["stream"] is True and body["logprobs"] == 1 and body["seed"] == 7
    assert body["max_tokens"] == 32 and body["model"] == fake.model
    assert set(PLAIN_CUSTOMER_SERVICE_FORMAT.stop) <= set(body["stop"])


def test_a_user_stop_sequence_cuts_the_answer(engine: UpstreamEngine, fake: FakeUpstream) -> None:
    result = engine.generate(TURNS, SamplingParams(stop=("order",)))

    assert result.text == "Hello <PERSON_1>, your"
    assert result.finish_reason == "stop_sequence"


def test_length_limit_is_the_upstreams_word(engine: UpstreamEngine) -> None:
    result = engine.generate(TURNS, SamplingParams(max_new_tokens=2))
    assert result.text == "Hello <PERSON_1>,"


def test_identity_comes_from_the_model_list(engine: UpstreamEngine, fake: FakeUpstream) -> None:
    assert engine.info.to_audit()["upstream"] == {
        "base_url": fake.base_url,
        "served_model": fake.model,
        "model_card": None,
    }
    assert engine.check_ready() is True
    audit = engine.info.to_audit()
    assert audit["weights_hashed_locally"] is False
    assert audit["source_sha256"] == "" and audit["cache_digest"] == ""
    assert audit["upstream"] == {
        "base_url": fake.base_url,
        "served_model": fake.model,
        "model_card": {
            "id": fake.model,
            "object": "model",
            "owned_by": "fake-upstream",
            "root": f"/models/{fake.model}",
            "parent": None,
            "max_model_len": 2048,
        },
    }
    assert engine.context_tokens == 2048


def test_not_ready_while_the_model_is_not_listed_or_the_server_is_down(
    engine: UpstreamEngine, fake: FakeUpstream
) -> None:
    fake.fault = "not_listed"
    assert engine.check_ready() is False
    fake.fault = None
    assert engine.check_ready() is True
    down = UpstreamEngine(f"http://127.0.0.1:{free_port()}/v1", "m", timeout_s=1.0)
    try:
        assert down.check_ready() is False
    finally:
        down.close()


@pytest.mark.parametrize(
    ("fault", "error", "reason"),
    [
        ("http_503", EngineUnavailable, "upstream_http_503"),
        ("malformed", EngineUnavailable, "upstream_malformed_stream"),
        ("cut", EngineUnavailable, "upstream_stream_cut"),
        ("slow", EngineTimeout, "upstream_timeout"),
    ],
)
def test_faults_raise_a_retryable_error_without_upstream_text(
    fake: FakeUpstream, fault: str, error: type[Exception], reason: str
) -> None:
    fake.fault = fault
    fake.slow_s = 3.0
    engine = make_engine(fake, timeout_s=0.5)
    deltas: list[str] = []
    try:
        started = time.monotonic()
        with pytest.raises(error) as caught:
            engine.generate(TURNS, SamplingParams(), on_text=deltas.append)
        assert time.monotonic() - started < 2.5
    finally:
        engine.close()
    assert getattr(caught.value, "reason", None) == reason
    assert "retry after" in str(caught.value)
    assert "overloaded" not in str(caught.value) and "PERSON" not in str(caught.value)


def test_an_unreachable_upstream_is_unavailable() -> None:
    engine = UpstreamEngine(f"http://127.0.0.1:{free_port()}/v1", "m", timeout_s=1.0)
    try:
        with pytest.raises(EngineUnavailable) as caught:
            engine.generate(TURNS, SamplingParams())
    finally:
        engine.close()
    assert caught.value.reason == "upstream_unreachable"


def test_cancellation_closes_the_upstream_stream_at_once(engine: UpstreamEngine, fake: FakeUpstream) -> None:
    fake.fault = "hang"
    cancel = threading.Event()
    deltas: list[str] = []
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    result = engine.generate(TURNS, SamplingParams(), on_text=deltas.append, cancelled=cancel.is_set)
    returned = time.monotonic()

    assert result.finish_reason == "cancelled"
    assert result.text == "Hello"  # the one word sent before the upstream went silent
    deadline = time.monotonic() + 2
    while not fake.stream_closed_at and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.stream_closed_at, "the upstream's stream was never closed"
    assert fake.stream_closed_at[0] - returned < 0.5


def test_max_in_flight_bounds_the_load_and_a_full_queue_refuses(fake: FakeUpstream) -> None:
    fake.chunk_delay_s = 0.05
    engine = make_engine(fake, max_in_flight=2, max_queue=2)
    results: list[object] = []
    try:
        threads = [
            threading.Thread(target=lambda: results.append(engine.generate(TURNS, SamplingParams())))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 2
        while engine.in_flight < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(EngineBusy):
            engine.generate(TURNS, SamplingParams())
        for t in threads:
            t.join(timeout=10)
    finally:
        engine.close()
    assert len(results) == 4
    assert fake.peak_in_flight == 2


def test_classify_scores_from_prompt_logprobs(engine: UpstreamEngine, fake: FakeUpstream) -> None:
    scores = engine.score_continuations("Label: the parcel is", [" late", " damaged goods"])

    # The fake's log-prob of a word is minus a tenth of its length; only the continuation's words count.
    assert scores.logprobs == pytest.approx((-0.4, -1.2))
    assert scores.tokens == (1, 2)
    assert scores.prefix_tokens == 4
    (body,) = fake.received
    assert body["echo"] is True and body["logprobs"] == 1 and body["max_tokens"] == 1
    assert body["prompt"] == ["Label: the parcel is late", "Label: the parcel is damaged goods"]


def test_classify_without_prompt_logprobs_is_unsupported_naming_the_setting(
    engine: UpstreamEngine, fake: FakeUpstream
) -> None:
    fake.fault = "no_echo"
    with pytest.raises(EngineUnsupported) as caught:
        engine.score_continuations("Label:", [" a", " b"])
    assert caught.value.setting == "engine_backend"
    assert "engine_backend" in str(caught.value)


def test_a_refused_request_is_an_invalid_argument_not_an_outage(engine: UpstreamEngine) -> None:
    engine.check_ready()
    error = EngineRejected(400, engine.context_tokens)
    assert "2048 tokens" in str(error) and error.reason == "upstream_http_400"


def test_the_api_key_is_sent_as_a_bearer_token(fake: FakeUpstream) -> None:
    engine = make_engine(fake, api_key="sk-test-123")
    try:
        engine.generate(TURNS, SamplingParams())
    finally:
        engine.close()
    assert fake.headers[0]["authorization"] == "Bearer sk-test-123"


def test_the_engine_restarts_after_close(engine: UpstreamEngine, fake: FakeUpstream) -> None:
    engine.generate(TURNS, SamplingParams())
    engine.close()
    assert engine.generate(TURNS, SamplingParams()).text == fake.reply


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://host/v1", "http:// or https://"),
        ("http:///v1", "http:// or https://"),
        ("http://user:secret@host/v1", "credentials"),
        ("http://host/v1?x=1", "query"),
        ("http://host:99999/v1", "port"),
    ],
)
def test_base_url_errors_name_the_field(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        check_base_url(url)
    assert "upstream_base_url" in str(caught.value)
    assert "secret" not in str(caught.value)
