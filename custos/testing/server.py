"""Test support shipped with the server: a spy and a scripted engine, and a server on a thread.

Used by the test suite and the benchmarks; nothing here runs in production.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.sdk.trace.export import SpanExporter
from presidio_analyzer import AnalyzerEngine

from custos.cli.client import BearerInterceptor
from custos.engine.base import Engine
from custos.engine.scoring import ContinuationScores
from custos.engine.types import ChatTurn, FinishReason, GenerationResult, ModelInfo, SamplingParams
from custos.server.app import Components, CustosServer
from custos.server.settings import load_settings
from custos.v1 import audit_pb2_grpc, inference_pb2_grpc


class SpyEngine(Engine):
    """Delegates to a real engine and records exactly what the model was given."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.info = inner.info
        self.prompts: list[str] = []
        self.turns: list[tuple[ChatTurn, ...]] = []
        self.prefixes: list[str] = []

    def render_prompt(self, turns: Sequence[ChatTurn]) -> str:
        """Delegate to the real engine."""
        return self.inner.render_prompt(turns)

    def count_tokens(self, text: str) -> int:
        """Delegate to the real engine."""
        return self.inner.count_tokens(text)

    def generate(
        self,
        turns: Sequence[ChatTurn],
        params: SamplingParams,
        *,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Record the turns and the exact prompt, then generate with the real engine."""
        self.turns.append(tuple(turns))
        self.prompts.append(self.inner.render_prompt(turns))
        return self.inner.generate(turns, params, on_text=on_text, cancelled=cancelled)

    def score_continuations(self, prefix: str, continuations: Sequence[str]) -> ContinuationScores:
        """Record the exact prefix, then score with the real engine."""
        self.prefixes.append(prefix)
        return self.inner.score_continuations(prefix, continuations)


class ScriptedEngine(Engine):
    """A fake model limited to the real interface: answers with a fixed text, a few characters at a time."""

    def __init__(self, reply: str, *, chunk: int = 3, step_delay: float = 0.0) -> None:
        self.reply = reply
        self.chunk = chunk
        self.step_delay = step_delay
        self.calls: list[tuple[ChatTurn, ...]] = []
        self.prefixes: list[str] = []
        self.info = ModelInfo(
            name="scripted",
            source_sha256="0" * 64,
            cache_digest="0" * 64,
            quantization="none",
            precision="fp32",
            device="cpu",
            prompt_format="plain-customer-service",
            prompt_format_version=1,
            prompt_format_sha256="0" * 64,
        )

    def render_prompt(self, turns: Sequence[ChatTurn]) -> str:
        """One line per turn."""
        return "\n".join(f"{t.role}: {t.content}" for t in turns)

    def count_tokens(self, text: str) -> int:
        """Whitespace-separated words."""
        return len(text.split())

    def generate(
        self,
        turns: Sequence[ChatTurn],
        params: SamplingParams,
        *,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Send the scripted reply in chunks, polling ``cancelled`` before each."""
        self.calls.append(tuple(turns))
        sent: list[str] = []
        finish: FinishReason = "stop"
        for start in range(0, len(self.reply), self.chunk):
            if cancelled is not None and cancelled():
                finish = "cancelled"
                break
            piece = self.reply[start : start + self.chunk]
            sent.append(piece)
            if on_text is not None:
                on_text(piece)
            if self.step_delay:
                time.sleep(self.step_delay)
        return GenerationResult(
            text="".join(sent),
            finish_reason=finish,
            prompt_tokens=self.count_tokens(self.render_prompt(turns)),
            completion_tokens=len(sent),
            mean_logprob=-0.5,
            min_logprob=-1.0,
            prefill_seconds=0.001,
            decode_seconds=0.002,
        )

    def score_continuations(self, prefix: str, continuations: Sequence[str]) -> ContinuationScores:
        """A deterministic stand-in for log-likelihood: -1 per continuation word absent from the prefix."""
        self.prefixes.append(prefix)
        words = set(prefix.lower().split())
        scores = tuple(-float(sum(w not in words for w in c.lower().split())) for c in continuations)
        return ContinuationScores(
            logprobs=scores,
            tokens=tuple(len(c.split()) for c in continuations),
            prefix_tokens=len(prefix.split()),
            seconds=0.0,
        )


class ServerHarness:
    """Runs a CustosServer on its own event loop in a thread; tests talk to it over a real socket.

    ``channel`` carries the bootstrap admin token (roles admin, inference, compliance) over TLS with the
    development CA; :meth:`channel_for` and :meth:`anonymous_channel` give other callers.
    """

    def __init__(self, server: CustosServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._channels: list[grpc.Channel] = []

    def __enter__(self) -> ServerHarness:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=60)
        self.admin_token = self.server.settings.admin_token_file.read_text().strip()
        self.channel = self.channel_with_token(self.admin_token)
        self.inference = inference_pb2_grpc.InferenceStub(self.channel)
        self.audit = audit_pb2_grpc.AuditStub(self.channel)
        return self

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """Rows of ``sql`` (with bound ``params``) run on the server's database, as dicts."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.server.settings.resolved_database_url)
        try:
            with engine.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(text(sql), params)]
        finally:
            engine.dispose()

    def audit_rows(self, event_type: str) -> list[dict[str, Any]]:
        """Audit records of ``event_type`` in chain order, with the payload parsed."""
        found = self.rows(
            "SELECT * FROM audit_records WHERE event_type = :event_type ORDER BY seq", event_type=event_type
        )
        for row in found:
            row["payload"] = json.loads(row["payload"])
        return found

    def create_token(self, *roles: str, principal: str | None = None) -> str:
        """A new token ``id.secret`` for a principal holding ``roles``."""
        assert self.server.tokens is not None
        token, _ = self.server.tokens.create(
            principal or "+".join(roles) or "no-roles", roles, actor="test-harness"
        )
        return token

    def channel_for(self, *roles: str, principal: str | None = None) -> grpc.Channel:
        """A channel whose calls carry a fresh token of a principal holding ``roles``."""
        return self.channel_with_token(self.create_token(*roles, principal=principal))

    def anonymous_channel(self) -> grpc.Channel:
        """A channel without credentials (TLS still, unless the server is plaintext)."""
        return self._open(None)

    def channel_with_token(self, token: str, *, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A channel whose calls carry ``token``, with grpc channel ``options`` (a service config, ...)."""
        return self._open(token, options)

    def channel_credentials(
        self, *, certificate_chain: bytes | None = None, private_key: bytes | None = None
    ) -> grpc.ChannelCredentials:
        """TLS credentials trusting the development CA (optionally with a client certificate)."""
        ca = (self.server.settings.tls_dir / "ca.pem").read_bytes()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=private_key, certificate_chain=certificate_chain
        )

    def _open(self, token: str | None, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        channel: grpc.Channel
        if self.server.settings.plaintext:
            channel = grpc.insecure_channel(self.target, options=options)
            if token is not None:
                channel = grpc.intercept_channel(channel, BearerInterceptor(token))
        else:
            credentials = self.channel_credentials()
            if token is not None:
                credentials = grpc.composite_channel_credentials(
                    credentials, grpc.access_token_call_credentials(token)
                )
            channel = grpc.secure_channel(self.target, credentials, options=options)
        self._channels.append(channel)
        return channel

    def __exit__(self, *exc: object) -> None:
        for channel in self._channels:
            channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=1.0), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    @property
    def target(self) -> str:
        """The server's address."""
        return f"127.0.0.1:{self.server.port}"

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP API (the server must have been started with ``http_listen``)."""
        assert self.server.http_port is not None, "started without http_listen"
        scheme = "http" if self.server.settings.plaintext else "https"
        return f"{scheme}://127.0.0.1:{self.server.http_port}"

    def http_tls(self) -> ssl.SSLContext | bool:
        """What an HTTP client verifies the server with: the development CA (``False`` when plaintext)."""
        if self.server.settings.plaintext:
            return False
        return ssl.create_default_context(cafile=self.server.settings.tls_dir / "ca.pem")


def make_server(
    tmp_path: Path,
    analyzer: AnalyzerEngine,
    engine: Engine,
    *,
    span_exporter: SpanExporter | None = None,
    **overrides: Any,
) -> ServerHarness:
    """A harness for a server with test settings (port 0, data under ``tmp_path``) and these components.

    ``span_exporter`` (the SDK's in-memory one) receives the spans when the settings turn tracing on.
    """
    settings = load_settings(
        data_dir=tmp_path / "data", listen="127.0.0.1:0", metrics_listen="127.0.0.1:0", **overrides
    )
    components = Components(analyzer=analyzer, engine=engine, span_exporter=span_exporter)
    return ServerHarness(CustosServer(settings, components))


#: What the suite's ``scripted_server`` fixture gives: start a server on a ScriptedEngine with this reply.
ScriptedServer = Callable[..., tuple[ServerHarness, ScriptedEngine]]
