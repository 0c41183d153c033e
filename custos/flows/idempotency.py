"""Idempotent Generate: a retried call with the same (principal, key) gets the first call's answer.

The first answer is kept sealed for the request's subject (``custos.privacy.replies``), never in plaintext,
and only until it expires (``idempotency_ttl_s``). The claim row names the subject from the start, so an
erasure that runs while the first call is still generating deletes the claim, and the completion, which only
fills in a claim that still exists, then stores nothing. A duplicate that arrives while the first call runs
waits for it: in this process on the first call's future, across replicas by polling the row. A key reused
for a different request is refused; a failed first call frees the key. The caller audits every replay.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, Table, delete, exc, insert, select, update

from custos.audit.db import read_only, translate_db_errors
from custos.audit.models import IdempotencyRow
from custos.flows.errors import InvalidArgument, ResourceExhausted
from custos.flows.types import Caller, GenerateOutcome
from custos.privacy.errors import SubjectKeyMissing
from custos.privacy.keys import MasterKeyProvider, blind_index
from custos.privacy.replies import open_reply, seal_reply
from custos.privacy.subject_keys import SubjectKeyStore

T = TypeVar("T")
_PENDING = object()
_TABLE: Table = IdempotencyRow.__table__  # type: ignore[assignment]


class IdempotencyConflict(InvalidArgument):
    """The key was already used by this caller for a different request."""

    def __init__(self) -> None:
        super().__init__("idempotency_key", "already used for a different request")


@dataclass(frozen=True)
class IdempotentOutcome:
    """The answer for a key, and whether it is a replay of an earlier call's answer."""

    outcome: GenerateOutcome
    replayed: bool


@dataclass(frozen=True)
class _Claim:
    """The key is ours: the row this call inserted (or took over) has this ``created_at``."""

    created_at: datetime


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
        subject_keys: SubjectKeyStore,
        executor: Executor,
        *,
        ttl_s: float,
        wait_s: float = 120.0,
        poll_s: float = 0.05,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``ttl_s``: how long a stored reply is replayed; ``wait_s``: how long a duplicate waits for it."""
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._engine = engine
        self._keys = keys
        self._subject_keys = subject_keys
        self._executor = executor
        self._ttl = timedelta(seconds=ttl_s)
        self._wait_s = wait_s
        self._poll_s = poll_s
        self._clock = clock
        self._inflight: dict[str, tuple[str, asyncio.Future[GenerateOutcome]]] = {}

    async def run(
        self,
        caller: Caller,
        key: str,
        raw_request: bytes,
        subject_ref: str,
        produce: Callable[[], Awaitable[GenerateOutcome]],
    ) -> IdempotentOutcome:
        """The stored answer for (caller, key), or ``produce()``'s, stored for ``subject_ref`` first."""
        index_key = self._keys.index_key()
        key_ref = blind_index(index_key, "idempotency", f"{caller.principal}\x00{key}")
        digest = blind_index(index_key, "idempotency-request", hashlib.sha256(raw_request).hexdigest())
        while (running := self._inflight.get(key_ref)) is not None:
            first_digest, first = running
            if first_digest != digest:
                raise IdempotencyConflict()
            try:
                return IdempotentOutcome(await asyncio.shield(first), replayed=True)
            except Exception:  # noqa: S112 - the first call failed and freed the key: try to claim it
                continue
        loop = asyncio.get_running_loop()
        future: asyncio.Future[GenerateOutcome] = loop.create_future()
        self._inflight[key_ref] = (digest, future)  # later duplicates of this process wait on the future
        claim: _Claim | None = None
        try:
            deadline = time.monotonic() + self._wait_s
            while True:
                state = await self._run(self._try_claim, key_ref, digest, subject_ref)
                if isinstance(state, _Claim):
                    claim = state
                    outcome = await produce()
                    await self._run(self._complete, key_ref, subject_ref, claim, outcome)
                    replayed = False
                    break
                if isinstance(state, GenerateOutcome):
                    outcome, replayed = state, True
                    break
                if time.monotonic() > deadline:  # another replica is still running the first call
                    raise ResourceExhausted(
                        "idempotency_key: the first call with this key is still running",
                        reason="idempotency_pending",
                        retry_after_s=1.0,
                    )
                await asyncio.sleep(self._poll_s)
        except BaseException as err:
            if claim is not None:
                await asyncio.shield(self._run(self._release, key_ref, claim))
            future.set_exception(err if isinstance(err, Exception) else RuntimeError("cancelled"))
            future.exception()  # mark retrieved: there may be no waiter
            raise
        finally:
            self._inflight.pop(key_ref, None)
        future.set_result(outcome)
        return IdempotentOutcome(outcome, replayed=replayed)

    # ---- blocking steps (executor) ----------------------------------------------------------------

    def _try_claim(self, key_ref: str, digest: str, subject_ref: str) -> object:
        """Claim the key (a :class:`_Claim`), or return the stored answer, or :data:`_PENDING`."""
        now = self._clock()
        try:
            with translate_db_errors(), self._engine.begin() as conn:
                conn.execute(
                    insert(_TABLE),
                    {
                        "key_ref": key_ref,
                        "request_digest": digest,
                        "created_at": now,
                        "subject_ref": subject_ref,
                        # A claim nobody completes is deleted by the housekeeping after this.
                        "expires_at": now + timedelta(seconds=self._wait_s) + self._ttl,
                    },
                )
            return _Claim(created_at=now)
        except exc.IntegrityError:
            pass
        with read_only(self._engine) as conn:
            row = conn.execute(select(_TABLE).where(_TABLE.c.key_ref == key_ref)).first()
        if row is None:  # released between our insert and read
            return _PENDING
        if row.request_digest != digest:
            raise IdempotencyConflict()
        if row.response is not None:
            if row.expires_at > now:
                try:
                    return _decode(
                        open_reply(
                            bytes(row.response),
                            key_ref=key_ref,
                            subject_ref=row.subject_ref,
                            keys=self._keys,
                            subject_keys=self._subject_keys,
                        )
                    )
                except SubjectKeyMissing:
                    pass  # its subject was erased: the reply is gone, this is a new call
            # Expired (or shredded): forget it, then claim the key afresh.
            self._forget(key_ref, row.response)
            return _PENDING
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
                    .values(
                        created_at=now,
                        subject_ref=subject_ref,
                        expires_at=now + timedelta(seconds=self._wait_s) + self._ttl,
                    )
                ).rowcount
            if taken == 1:
                return _Claim(created_at=now)
        return _PENDING

    def _complete(self, key_ref: str, subject_ref: str, claim: _Claim, outcome: GenerateOutcome) -> None:
        """Store the answer in our claim, sealed for the subject; nothing if the subject was erased meanwhile.

        The update only fills in the claim this call made: an erasure deletes claims by subject, so once it
        has run there is no row left to fill, and a reply written before it is deleted by it.
        """
        try:
            subject_key = self._subject_keys.get(subject_ref)
        except SubjectKeyMissing:
            self._release(key_ref, claim)
            return
        sealed = seal_reply(_encode(outcome), key_ref=key_ref, subject_key=subject_key)
        now = self._clock()
        with translate_db_errors(), self._engine.begin() as conn:
            conn.execute(
                update(_TABLE)
                .where(
                    _TABLE.c.key_ref == key_ref,
                    _TABLE.c.subject_ref == subject_ref,
                    _TABLE.c.created_at == claim.created_at,
                    _TABLE.c.response.is_(None),
                )
                .values(
                    request_id=outcome.request_id,
                    response=sealed.ciphertext,
                    format_version=sealed.format_version,
                    key_version=sealed.key_version,
                    completed_at=now,
                    expires_at=now + self._ttl,
                )
            )

    def _release(self, key_ref: str, claim: _Claim) -> None:
        with translate_db_errors(), self._engine.begin() as conn:
            conn.execute(
                delete(_TABLE).where(
                    _TABLE.c.key_ref == key_ref,
                    _TABLE.c.response.is_(None),
                    _TABLE.c.created_at == claim.created_at,
                )
            )

    def _forget(self, key_ref: str, response: bytes) -> None:
        with translate_db_errors(), self._engine.begin() as conn:
            conn.execute(delete(_TABLE).where(_TABLE.c.key_ref == key_ref, _TABLE.c.response == response))

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
