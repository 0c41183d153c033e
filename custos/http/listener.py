"""An ASGI app served by uvicorn on a task of the server's own event loop (the HTTP edge and the console).

The listening socket is bound here (so a taken port fails the start with a clear error, and port 0 reports the
port it got); uvicorn's signal handling is off, because the Custos process owns SIGTERM and drains every
listener itself. The verified client certificate of a TLS connection is put into each request's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from custos.http.tls import CLIENT_CERT_STATE

_START_TIMEOUT_S = 30.0


class _ClientCertProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, putting the verified client certificate into each request's state."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """After the TLS handshake: keep the peer certificate (DER) for the requests of this connection."""
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            self.app_state = {**self.app_state, CLIENT_CERT_STATE: der}


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the process that embeds it decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave signals to the embedding process."""
        yield


def _bind(listen: str, name: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise OSError(f"could not bind {name} listen address {listen}: {exc.strerror}") from None
    return sock


class AsgiListener:
    """The app ``make_app`` builds, served on ``listen``; ``port`` is the bound port once started."""

    def __init__(
        self,
        make_app: Callable[[], Any],
        *,
        listen: str,
        ssl_context: ssl.SSLContext | None,
        name: str = "HTTP",
    ) -> None:
        self._make_app = make_app
        self._listen = listen
        self._ssl_context = ssl_context
        self._name = name
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self) -> int:
        """Bind and serve; returns the bound port."""
        sock = _bind(self._listen, self._name)
        options: dict[str, Any] = {}
        if self._ssl_context is not None:
            context = self._ssl_context
            options["ssl_context_factory"] = lambda config, default: context
        config = uvicorn.Config(
            self._make_app(),
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,  # Custos logs each call itself, with its request id and status
            server_header=False,
            http=_ClientCertProtocol,
            ws="none",
            **options,
        )
        server = _EmbeddedServer(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name=f"custos-{self._name.lower()}")
        deadline = asyncio.get_running_loop().time() + _START_TIMEOUT_S
        while not server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError(f"the {self._name} listener on {self._listen} stopped at start")
            if asyncio.get_running_loop().time() > deadline:
                raise OSError(f"the {self._name} listener on {self._listen} did not start")
            await asyncio.sleep(0.01)
        self.port = int(sock.getsockname()[1])
        return self.port

    async def stop(self, grace: float) -> None:
        """Stop accepting, let running calls finish up to ``grace`` seconds, then cancel the rest."""
        if self._server is None or self._task is None:
            return
        server = self._server
        server.config.timeout_graceful_shutdown = max(math.ceil(grace), 1)
        server.should_exit = True
        # Calls in flight may finish within the grace; idle keep-alive connections are not waited for (a TLS
        # close would wait for the client's reply), so once the calls are done the rest are closed at once.
        deadline = asyncio.get_running_loop().time() + grace
        while server.server_state.tasks and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        server.force_exit = True
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._server = None
        self._task = None
