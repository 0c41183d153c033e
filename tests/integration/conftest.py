"""Fixtures: a real Custos server on port 0 over a real socket with a tiny model; the analyzer is shared."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from presidio_analyzer import AnalyzerEngine

from custos.engine.base import Engine
from custos.testing.server import ServerHarness, SpyEngine, make_server
from custos.testing.tiny_engine import build_tiny_engine


@pytest.fixture(scope="session")
def tiny_engine() -> Engine:
    return build_tiny_engine()


@pytest.fixture
def spy(tiny_engine: Engine) -> SpyEngine:
    return SpyEngine(tiny_engine)


@pytest.fixture
def tiny_server(tmp_path: Path, analyzer: AnalyzerEngine, spy: SpyEngine) -> Iterator[ServerHarness]:
    with make_server(tmp_path, analyzer, spy, max_new_tokens_limit=64, max_request_bytes=4096) as harness:
        yield harness
