"""Fixtures for the engine's unit tests: a tiny random engine, and every test under the network guard."""

from __future__ import annotations

import pytest

from custos.engine.local import TransformersEngine
from custos.engine.types import ChatTurn
from custos.testing.tiny_engine import build_tiny_engine


@pytest.fixture(autouse=True)
def no_network(network_guard: list[str]) -> list[str]:
    """Fail any test that tries to open a network connection (nothing may be fetched from a hub)."""
    return network_guard


@pytest.fixture
def engine() -> TransformersEngine:
    """The tiny random engine with the plain customer-service format (builds in milliseconds)."""
    return build_tiny_engine(seed=0)


@pytest.fixture
def turns() -> tuple[ChatTurn, ...]:
    """A short anonymized customer question."""
    return (ChatTurn("user", "Hi, I am <PERSON_1>. Where is my order <ORDER_ID_1>?"),)
