"""Capacity limiter, token store and configuration audit, without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from custos.audit import AuditStore, default_sqlite_url, make_engine, migrate
from custos.flows.errors import ResourceExhausted
from custos.security.limits import CapacityLimiter
from custos.security.tokens import TokenError, TokenStore
from custos.server.bootstrap import record_config_change
from custos.server.settings import load_settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = CapacityLimiter(rate=2.0, burst=3, max_in_flight=100, clock=clock)
    for _ in range(3):
        limiter.acquire("a")()
    with pytest.raises(ResourceExhausted) as info:
        limiter.acquire("a")
    assert info.value.reason == "rate" and info.value.retry_after_s == pytest.approx(0.5)
    limiter.acquire("b")()  # buckets are per principal
    clock.now += 0.5
    limiter.acquire("a")()
    with pytest.raises(ResourceExhausted):
        limiter.acquire("a")


def test_concurrency_slot_is_released_once() -> None:
    limiter = CapacityLimiter(rate=1000.0, burst=1000, max_in_flight=2)
    first = limiter.acquire("a")
    limiter.acquire("a")
    with pytest.raises(ResourceExhausted) as info:
        limiter.acquire("a")
    assert info.value.reason == "concurrency" and info.value.retry_after_s is not None
    first()
    first()  # a second release must not free a slot it does not hold
    assert limiter.in_flight("a") == 1
    limiter.acquire("a")
    with pytest.raises(ResourceExhausted):
        limiter.acquire("a")


@pytest.fixture
def store(tmp_path: Path) -> AuditStore:
    engine = make_engine(default_sqlite_url(tmp_path))
    migrate(engine)
    return AuditStore(engine)


def test_token_expiry_and_revocation(store: AuditStore) -> None:
    tokens = TokenStore(store.engine, store)
    token, info = tokens.create("svc", ["inference"], actor="test", expires_in=timedelta(hours=1))
    assert tokens.verify(token).principal == "svc"
    with pytest.raises(TokenError, match="expired"):
        tokens.verify(token, now=datetime.now(UTC) + timedelta(hours=2))
    tokens.revoke(info.id, actor="test")
    with pytest.raises(TokenError, match="revoked"):
        tokens.verify(token)
    with pytest.raises(ValueError, match="unknown role"):
        tokens.create("svc", ["root"], actor="test")


KEY = bytes(range(32))  # the blind-index key the config digests are keyed with


def test_config_change_recorded_only_when_settings_change(store: AuditStore, tmp_path: Path) -> None:
    first = load_settings(data_dir=tmp_path, max_messages=10)
    assert record_config_change(store, first, index_key=KEY)
    assert not record_config_change(store, load_settings(data_dir=tmp_path, max_messages=10), index_key=KEY)
    assert record_config_change(store, load_settings(data_dir=tmp_path, max_messages=20), index_key=KEY)
    records, _ = store.query(event_type="config_change")
    assert len(records) == 2
    assert records[0].details["changed"] == ["max_messages"]
    assert str(tmp_path) not in records[0].payload_json  # digests only, never values
