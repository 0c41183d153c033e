"""Idempotent Generate: a retried call with the same (principal, key) gets the first call's answer.

The first answer is kept sealed (envelope encryption bound to its row), never in plaintext. A duplicate that
arrives while the first call runs waits for it: in this process on the first call's future, across replicas
by polling the row. A key reused for a different request is refused; a failed first call frees the key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, Table, delete, exc, insert, select, update

from custos.audit.db import translate_db_errors
from custos.audit.models import IdempotencyRow
from custos.flows.errors import InvalidArgument, ResourceExhausted
from custos.flows.types import Caller, GenerateOutcome
from custos.privacy.envelope import open_sealed, seal
from custos.privacy.keys import MasterKeyProvider, blind_index

T = TypeVar("T")
_CLAIMED = object()
_PENDING = object()
_TABLE: Table = IdempotencyRow.__table__  # type: ignore[assignment]


class IdempotencyConflict(InvalidArgument):
    """The key was already used by this caller for a different request."""

    def __init__(self) -> None:
        super().__init__("idempotency_key", "already used for a different request")


def _aad(key_ref: str) -> bytes:
    return f"custos:idempotency_keys:v1:{key_ref}".encode()


def _encode(outcome: GenerateOutcome) -> bytes:
    return json.dumps(
        {
            "request_id": outcome.request_id,
            "text": outcome.text,
            "finish_reason": outcome.finish_reason,
            "prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": outcome.completion_tokens,
            "redaction": dict(outcome.redaction),
        },
        ensure_ascii=False,
    ).encode()


def _decode(data: bytes) -> GenerateOutcome:
    fields = json.loads(data)
    return GenerateOutcome(**fields)


class IdempotencyStore:
    """Claims, completes and replays idempotency keys in the ``idempotency_keys`` table."""

    def __init__(
        self,
        engine: Engine,
        keys: MasterKeyProvider,
        executor: Executor,
        *,
        wait_s: float = 120.0,
        poll_s: float = 0.05,
    ) -> None:
        self._engine = engine
        self._keys = keys
        self._executor = executor
        self._wait_s = wait_s
        self._poll_s = poll_s
        self._inflight: dict[str, tuple[str, asyncio.Future[GenerateOutcome]]] = {}

    async def run(
        self,
        caller: Caller,
        key: str,
        raw_request: bytes,
        produce: Callable[[], Awaitable[GenerateOutcome]],
    ) -> GenerateOutcome:
        """The stored answer for (caller, key), or ``produce()``'s, stored before it is returned."""
        index_key = self._keys.index_key()
        key_ref = blind_index(index_key, "idempotency", f"{caller.principal}\x00{key}")
        digest = blind_index(index_key, "idempotency-request", hashlib.sha256(raw_request).hexdigest())
        while (running := self._inflight.get(key_ref)) is not None:
            first_digest, first = running
            if first_digest != digest:
                raise IdempotencyConflict()
            try:
                return await asyncio.shield(first)
            except Exception:  # noqa: S112 - the first call failed and freed the key: try to claim it
                continue
        loop = asyncio.get_running_loop()
        future: asyncio.Future[GenerateOutcome] = loop.create_future()
        self._inflight[key_ref] = (digest, future)  # later duplicates of this process wait on the future
        claimed = False
        try:
            deadline = time.monotonic() + self._wait_s
            while True:
                state = await self._run(self._try_claim, key_ref, digest)
                if state is _CLAIMED:
                    claimed = True
                    outcome = await produce()
                    await self._run(self._complete, key_ref, outcome)
                    break
                if isinstance(state, GenerateOutcome):
                    outcome = state
                    break
                if time.monotonic() > deadline:  # another replica is still running the first call
                    raise ResourceExhausted(
                        "idempotency_key: the first call with this key is still running",
                        reason="idempotency_pending",
                        retry_after_s=1.0,
                    )
                await asyncio.sleep(self._poll_s)
        except BaseException as err:
            if claimed:
                await asyncio.shield(self._run(self._release, key_ref))
            future.set_exception(err if isinstance(err, Exception) else RuntimeError("cancelled"))
            future.exception()  # mark retrieved: there may be no waiter
            raise
        finally:
            self._inflight.pop(key_ref, None)
        future.set_result(outcome)
        return outcome

    # ---- blocking steps (executor) ----------------------------------------------------------------

    def _try_claim(self, key_ref: str, digest: str) -> object:
        """Claim the key (:data:`_CLAIMED`), or return the stored answer, or :data:`_PENDING`."""
        now = datetime.now(UTC)
        try:
            with translate_db_errors(), self._engine.begin() as conn:
                conn.execute(
                    insert(_TABLE), {"key_ref": key_ref, "request_digest": digest, "created_at": now}
                )
            return _CLAIMED
        except exc.IntegrityError:
            pass
        with translate_db_errors(), self._engine.connect() as conn:
            row = conn.execute(select(_TABLE).where(_TABLE.c.key_ref == key_ref)).first()
        if row is None:  # released between our insert and read
            return _PENDING
        if row.request_digest != digest:
            raise IdempotencyConflict()
        if row.response is not None:
            return _decode(open_sealed(row.response, aad=_aad(key_ref), keys=self._keys))
        if row.created_at < now - timedelta(seconds=self._wait_s):
            # Abandoned by a process that died mid-call: take it over.
            with translate_db_errors(), self._engine.begin() as conn:
                taken = conn.execute(
                    update(_TABLE)
                    .where(
                        _TABLE.c.key_ref == key_ref,
                        _TABLE.c.response.is_(None),
                        _TABLE.c.created_at == row.created_at,
                    )
                    .values(created_at=now)
                ).rowcount
            if taken == 1:
                return _CLAIMED
        return _PENDING

    def _complete(self, key_ref: str, outcome: GenerateOutcome) -> None:
        sealed = seal(_encode(outcome), aad=_aad(key_ref), keys=self._keys)
        with translate_db_errors(), self._engine.begin() as conn:
            conn.execute(
                update(_TABLE)
                .where(_TABLE.c.key_ref == key_ref)
                .values(request_id=outcome.request_id, response=sealed, completed_at=datetime.now(UTC))
            )

    def _release(self, key_ref: str) -> None:
        with translate_db_errors(), self._engine.begin() as conn:
            conn.execute(delete(_TABLE).where(_TABLE.c.key_ref == key_ref, _TABLE.c.response.is_(None)))

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
