"""End-to-end fixtures: the real bundled model, prepared once per test session.

Set ``CUSTOS_TEST_MODEL_CACHE`` to a directory to keep the prepared cache between sessions (the first
prepare takes about a minute; later sessions verify it and reuse it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from custos.engine.cache import prepare_model
from custos.engine.local import TransformersEngine
from custos.testing.privacy import no_network


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Refuse, and fail on, any connection to a non-loopback address (nothing may come from a hub)."""
    with no_network([]) as attempts:
        yield
    assert attempts == [], f"network access attempted: {attempts}"


@pytest.fixture(scope="session")
def bundled_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled Gemma 3 270M prepared in bf16 (under CUSTOS_TEST_MODEL_CACHE or pytest's basetemp)."""
    configured = os.environ.get("CUSTOS_TEST_MODEL_CACHE")
    root = Path(configured) if configured else tmp_path_factory.mktemp("model-cache")
    with offline():
        return prepare_model(source="bundled", cache_root=root, precision="bf16")


@pytest.fixture(scope="session")
def bundled_engine(bundled_cache: Path) -> TransformersEngine:
    """The bundled model loaded from its verified cache."""
    with offline():
        return TransformersEngine.from_cache(bundled_cache)


@pytest.fixture(autouse=True)
def _guard_network() -> Iterator[None]:
    with offline():
        yield
