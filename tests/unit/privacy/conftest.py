"""Fixtures for the privacy unit tests: the analyzer is built once per session, under a network guard."""

from __future__ import annotations

import time

import pytest
from presidio_analyzer import AnalyzerEngine

from custos.privacy.analyzer import build_analyzer
from custos.privacy.pseudonymize import Pseudonymizer
from custos.testing.privacy import BuiltAnalyzer, no_network


@pytest.fixture(scope="session")
def built_analyzer() -> BuiltAnalyzer:
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
    return Pseudonymizer(analyzer)
