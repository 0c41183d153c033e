"""A small OpenAI-compatible server for tests of the upstream engine, with faults on demand.

It serves ``/v1/models``, a streamed ``/v1/completions`` (SSE, with log-probs and usage) answering a fixed
reply word by word, and the non-streamed ``echo`` + ``logprobs`` form Classify uses (one "token" per
whitespace-separated word, its log-prob minus its length in tenths). Every request body it receives is
kept in :attr:`FakeUpstream.received`, so a test can read exactly what left Custos.

:attr:`FakeUpstream.fault` switches a fault on: ``http_503``, ``slow`` (nothing sent for ``slow_s``),
``malformed`` (a chunk that is not JSON), ``cut`` (the connection drops mid-stream), ``hang`` (one
chunk, then silence until the client goes away), ``no_echo`` (prompt log-probs refused with HTTP 400),
``not_listed`` (``/v1/models`` lists another model).

:class:`FaultProxy` puts the same faults and the same request log in front of a real server (vLLM).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Self

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

FAULTS = ("http_503", "slow", "malformed", "cut", "hang", "no_echo", "not_listed")


class _ServedApp:
    """A FastAPI app served by uvicorn on a thread (127.0.0.1, a free port); use as a context manager."""

    app: FastAPI
    port: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Self:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-upstream", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake upstream did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=10)


class FakeUpstream(_ServedApp):
    """The fake server; see the module docstring."""

    def __init__(
        self, reply: str = "Hello <PERSON_1>, your order has shipped.", *, model: str = "fake-model"
    ):
        self.reply = reply
        self.model = model
        self.fault: str | None = None
        self.slow_s = 5.0
        self.chunk_delay_s = 0.0
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.stream_closed_at: list[float] = []
        self._lock = threading.Lock()
        self.app = self._build()

    # ---- the app --------------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            name = "another-model" if self.fault == "not_listed" else self.model
            return {
                "object": "list",
                "data": [
                    {
                        "id": name,
                        "object": "model",
                        "owned_by": "fake-upstream",
                        "root": f"/models/{name}",
                        "parent": None,
                        "max_model_len": 2048,
                    }
                ],
            }

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            body = await request.json()
            with self._lock:
                self.received.append(body)
                self.headers.append(dict(request.headers))
            if self.fault == "http_503":
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            if body.get("echo"):
                if self.fault == "no_echo":
                    return JSONResponse({"error": {"message": "echo is not supported"}}, status_code=400)
                return JSONResponse(self._echo(body))
            if self.fault == "slow":
                await asyncio.sleep(self.slow_s)
            return StreamingResponse(self._stream(body), media_type="text/event-stream")

        return app

    def _echo(self, body: dict[str, Any]) -> dict[str, Any]:
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices = []
        for index, prompt in enumerate(prompts):
            tokens: list[str] = []
            offsets: list[int] = []
            values: list[float | None] = []
            for match in re.finditer(r"\s*\S+", prompt):
                tokens.append(match.group())
                offsets.append(match.start())
                values.append(-0.1 * len(match.group().strip()))
            values[0] = None  # the first prompt token has no log-prob
            tokens.append("\n")  # the one generated token
            offsets.append(len(prompt))
            values.append(-0.5)
            choices.append(
                {
                    "index": index,
                    "text": prompt + "\n",
                    "logprobs": {"tokens": tokens, "token_logprobs": values, "text_offset": offsets},
                    "finish_reason": "length",
                }
            )
        return {"object": "text_completion", "model": self.model, "choices": choices}

    async def _stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        words = re.findall(r"\s*\S+", " " + self.reply)[: body.get("max_tokens", 16)]
        try:
            for i, word in enumerate(words):
                if i == 2 and self.fault == "malformed":
                    yield b"data: {this is not json\n\n"
                    return
                if i == 2 and self.fault == "cut":
                    raise ConnectionResetError("the fake upstream drops the connection")
                if i == 1 and self.fault == "hang":
                    await asyncio.sleep(3600)
                last = i == len(words) - 1
                chunk = {
                    "object": "text_completion",
                    "model": self.model,
                    "choices": [
                        {
                            "index": 0,
                            "text": word,
                            "logprobs": {"tokens": [word], "token_logprobs": [-0.25]},
                            "finish_reason": "stop" if last else None,
                            "stop_reason": None,
                        }
                    ],
                }
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                if self.chunk_delay_s:
                    await asyncio.sleep(self.chunk_delay_s)
            usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": len(words)}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"
        finally:
            with self._lock:
                self.in_flight -= 1
                self.stream_closed_at.append(time.monotonic())


class FaultProxy(_ServedApp):
    """Forwards ``/v1/models`` and ``/v1/completions`` to ``target`` (a base URL ending in ``/v1``).

    Keeps every completion request body in :attr:`received`; :attr:`fault` injects the faults of
    :class:`FakeUpstream` into the relayed stream (``slow``: nothing sent for ``slow_s``; ``cut``,
    ``malformed``, ``hang``: after the first event).
    """

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.fault: str | None = None
        self.slow_s = 5.0
        self.received: list[dict[str, Any]] = []
        self.stream_closed_at: list[float] = []
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> Response:
            async with httpx.AsyncClient(trust_env=False) as client:
                upstream = await client.get(f"{self.target}/models")
            body = upstream.json()
            if self.fault == "not_listed":
                body["data"] = []
            return JSONResponse(body, status_code=upstream.status_code)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            body = await request.json()
            self.received.append(body)
            if self.fault == "http_503":
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            if self.fault == "slow":
                await asyncio.sleep(self.slow_s)
            if not body.get("stream"):
                async with httpx.AsyncClient(trust_env=False, timeout=120) as client:
                    upstream = await client.post(f"{self.target}/completions", json=body)
                return JSONResponse(upstream.json(), status_code=upstream.status_code)
            return StreamingResponse(self._relay(body), media_type="text/event-stream")

        return app

    async def _relay(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        sent = 0
        try:
            async with (
                httpx.AsyncClient(trust_env=False, timeout=120) as client,
                client.stream("POST", f"{self.target}/completions", json=body) as upstream,
            ):
                async for line in upstream.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    if sent == 1 and self.fault == "malformed":
                        yield b"data: {this is not json\n\n"
                        return
                    if sent == 1 and self.fault == "cut":
                        raise ConnectionResetError("the proxy drops the connection")
                    if sent == 1 and self.fault == "hang":
                        await asyncio.sleep(3600)
                    yield f"{line}\n\n".encode()
                    sent += 1
        finally:
            self.stream_closed_at.append(time.monotonic())
