"""Capacity limits per principal and the limit on failed authentication attempts.

Per principal: a token bucket for the request rate and a cap on calls in flight. Per client address and
per presented token id: a token bucket of failed authentication attempts.

A refused call gets RESOURCE_EXHAUSTED at once (never a wait) with a retry hint.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from custos.flows.errors import ResourceExhausted


@dataclass
class _Bucket:
    tokens: float
    updated: float
    in_flight: int = 0


class CapacityLimiter:
    """Per-principal rate (``rate`` calls/s with bursts of ``burst``) and concurrency (``max_in_flight``)."""

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        max_in_flight: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, principal: str) -> Callable[[], None]:
        """Admit one call of ``principal`` or raise :class:`ResourceExhausted`; returns its release."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.setdefault(principal, _Bucket(tokens=self._burst, updated=now))
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
            if bucket.in_flight >= self._max_in_flight:
                raise ResourceExhausted(
                    f"too many calls in flight for this principal (limit {self._max_in_flight})",
                    reason="concurrency",
                    retry_after_s=round(max(0.05, 1.0 / self._rate), 3),
                )
            if bucket.tokens < 1.0:
                wait = (1.0 - bucket.tokens) / self._rate
                raise ResourceExhausted(
                    f"request rate above the limit of {self._rate:g}/s for this principal",
                    reason="rate",
                    retry_after_s=round(max(0.001, wait), 3),
                )
            bucket.tokens -= 1.0
            bucket.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            with self._lock:
                bucket.in_flight -= 1

        return release

    def in_flight(self, principal: str) -> int:
        """Calls of ``principal`` admitted and not yet released."""
        with self._lock:
            bucket = self._buckets.get(principal)
            return bucket.in_flight if bucket else 0


class FailureLimiter:
    """Failed authentication attempts per key (client address, presented token id): a token bucket each.

    Only failures take from a bucket; a key whose bucket is empty is refused before its credentials are
    looked up, so guessing costs the server no database read and the audit log no record per attempt.
    The table holds at most ``max_keys`` keys (the least recently failed go first), so a caller inventing
    token ids cannot grow it without bound.
    """

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _refilled(self, key: str, now: float) -> _Bucket | None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
        return bucket

    def check(self, keys: Sequence[str]) -> None:
        """Raise :class:`ResourceExhausted` (``auth_failures``) if any of ``keys`` has no attempt left."""
        now = self._clock()
        with self._lock:
            for key in keys:
                bucket = self._refilled(key, now)
                if bucket is not None and bucket.tokens < 1.0:
                    wait = (1.0 - bucket.tokens) / self._rate
                    raise ResourceExhausted(
                        "too many failed authentication attempts; retry later",
                        reason="auth_failures",
                        retry_after_s=round(max(0.001, wait), 3),
                    )

    def failed(self, keys: Sequence[str]) -> None:
        """Count one failed attempt against each of ``keys``."""
        now = self._clock()
        with self._lock:
            for key in keys:
                bucket = self._refilled(key, now)
                if bucket is None:
                    bucket = self._buckets[key] = _Bucket(tokens=self._burst, updated=now)
                    while len(self._buckets) > self._max_keys:
                        self._buckets.popitem(last=False)
                self._buckets.move_to_end(key)
                bucket.tokens = max(0.0, bucket.tokens - 1.0)
