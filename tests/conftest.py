"""Fixtures the whole suite shares: the analyzer, the network guard and servers on a scripted engine.

The analyzer is built once per session, under the network guard (what happened while it was built is kept
for the test that checks it). Heavy modules are imported inside the fixtures, so collecting tests that use
none of them stays fast.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

    from custos.privacy.pseudonymize import Pseudonymizer
    from custos.testing.privacy import BuiltAnalyzer
    from custos.testing.server import ScriptedEngine, ScriptedServer, ServerHarness


@pytest.fixture(scope="session")
def built_analyzer() -> BuiltAnalyzer:
    from custos.privacy.analyzer import build_analyzer
    from custos.testing.privacy import BuiltAnalyzer, no_network

    attempts: list[str] = []
    with no_network(attempts):
        start = time.perf_counter()
        analyzer = build_analyzer()
        elapsed = time.perf_counter() - start
    return BuiltAnalyzer(analyzer=analyzer, network_attempts=attempts, build_seconds=elapsed)


@pytest.fixture(scope="session")
def analyzer(built_analyzer: BuiltAnalyzer) -> AnalyzerEngine:
    return built_analyzer.analyzer


@pytest.fixture(scope="session")
def pseudonymizer(analyzer: AnalyzerEngine) -> Pseudonymizer:
    from custos.privacy.pseudonymize import Pseudonymizer

    return Pseudonymizer(analyzer)


@pytest.fixture
def network_guard() -> Iterator[list[str]]:
    """Refuse every non-loopback lookup or connection during the test, and fail the test if one was tried."""
    from custos.testing.privacy import no_network

    with no_network([]) as attempts:
        yield attempts
    if attempts:
        pytest.fail(f"network access attempted: {attempts}")


@pytest.fixture
def scripted_server(tmp_path: Path, analyzer: AnalyzerEngine) -> Iterator[ScriptedServer]:
    """Start servers on ``tmp_path`` whose engine streams a fixed reply; they stop after the test.

    Call it with the reply, the engine's ``chunk`` and ``step_delay``, and any settings overrides.
    """
    from custos.testing.server import ScriptedEngine, make_server

    with contextlib.ExitStack() as running:

        def start(
            reply: str, *, chunk: int = 3, step_delay: float = 0.0, **overrides: Any
        ) -> tuple[ServerHarness, ScriptedEngine]:
            engine = ScriptedEngine(reply, chunk=chunk, step_delay=step_delay)
            harness = running.enter_context(make_server(tmp_path, analyzer, engine, **overrides))
            return harness, engine

        yield start
