"""The console's listener: its own address (``console_listen``), the API's TLS files, an optional client cert.

Its own listener so that operators can expose the console to compliance staff without exposing inference.
Plaintext is refused by the settings: the session cookie is ``Secure``.
"""

from __future__ import annotations

import asyncio

from custos.console.app import ConsoleApp, ConsoleDeps, build_console_app
from custos.http.listener import AsgiListener
from custos.http.tls import ReloadingSSLContext
from custos.server.settings import Settings


class ConsoleServer(AsgiListener):
    """The console's pages on ``listen``; ``port`` is the bound port once started."""

    def __init__(self, console: ConsoleApp, *, listen: str, tls: ReloadingSSLContext) -> None:
        super().__init__(
            lambda: build_console_app(console), listen=listen, ssl_context=tls.context, name="console"
        )
        self.console = console
        self.tls = tls

    async def stop(self, grace: float) -> None:
        """Cancel a running verification (waited for off the event loop), then stop the listener."""
        await asyncio.get_running_loop().run_in_executor(None, self.console.stop)
        await super().stop(grace)


def build_console_server(settings: Settings, deps: ConsoleDeps) -> ConsoleServer:
    """The console on ``console_listen`` with the API's certificate; a client certificate is optional."""
    assert settings.console_listen is not None
    tls = ReloadingSSLContext(
        settings.resolved_tls_cert_file,
        settings.resolved_tls_key_file,
        settings.tls_client_ca_file,
        client_cert_optional=True,
    )
    return ConsoleServer(ConsoleApp(deps), listen=settings.console_listen, tls=tls)
