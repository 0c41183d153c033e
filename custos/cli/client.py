"""Client-side bearer-token metadata for plaintext channels (call credentials need TLS)."""

from __future__ import annotations

from typing import Any

import grpc


class BearerInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self._token}")]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Add the header."""
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Add the header."""
        return continuation(self._details(client_call_details), request)


def plaintext_channel(
    target: str, token: str | None, *, options: list[tuple[str, Any]] | None = None
) -> grpc.Channel:
    """A plaintext channel to ``target`` whose calls carry ``token`` (when given)."""
    channel = grpc.insecure_channel(target, options=options or [])
    return grpc.intercept_channel(channel, BearerInterceptor(token)) if token else channel
