"""The HTTP listener: the OpenAI-compatible edge's app on an :class:`~custos.http.listener.AsgiListener`."""

from __future__ import annotations

import logging
import ssl

from custos.http.app import HttpEdge, build_app
from custos.http.listener import AsgiListener
from custos.http.tls import ReloadingSSLContext
from custos.server.settings import Settings

log = logging.getLogger("custos.http")


class HttpServer(AsgiListener):
    """The OpenAI-compatible API on ``listen``; ``port`` is the bound port once started."""

    def __init__(self, edge: HttpEdge, *, listen: str, ssl_context: ssl.SSLContext | None) -> None:
        super().__init__(lambda: build_app(edge), listen=listen, ssl_context=ssl_context, name="HTTP")
        self._edge = edge


def build_http_server(settings: Settings, edge: HttpEdge) -> HttpServer:
    """The listener on ``http_listen`` with the gRPC listener's TLS files (plaintext only when it is too)."""
    assert settings.http_listen is not None
    if settings.plaintext:
        log.warning("serving PLAINTEXT HTTP: no transport security (setting plaintext = true)")
        return HttpServer(edge, listen=settings.http_listen, ssl_context=None)
    tls = ReloadingSSLContext(
        settings.resolved_tls_cert_file, settings.resolved_tls_key_file, settings.tls_client_ca_file
    )
    return HttpServer(edge, listen=settings.http_listen, ssl_context=tls.context)
