"""Fixtures for the engine's unit tests: a tiny random engine and a guard against any network use."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from custos.engine.local import TransformersEngine
from custos.engine.types import ChatTurn
from custos.testing.tiny_engine import build_tiny_engine


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any test that tries to open a network connection (nothing may be fetched from a hub)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


@pytest.fixture
def engine() -> TransformersEngine:
    """The tiny random engine with the plain customer-service format (builds in milliseconds)."""
    return build_tiny_engine(seed=0)


@pytest.fixture
def turns() -> tuple[ChatTurn, ...]:
    """A short anonymized customer question."""
    return (ChatTurn("user", "Hi, I am <PERSON_1>. Where is my order <ORDER_ID_1>?"),)
