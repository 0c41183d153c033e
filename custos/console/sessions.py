"""Console sign-ins: short-lived sessions held in memory, each with its own CSRF token.

The cookie carries a 256-bit random session id; the store keeps only its SHA-256, so the ids are not in
memory in a form that could be replayed. A session ends when it expires (``console_session_minutes`` after
sign-in, never extended), at sign-out, or when the process stops: signing in again is the only way on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from custos.flows.types import Caller

#: ``__Host-``: the browser keeps the cookie only if it is Secure, has Path=/ and no Domain.
SESSION_COOKIE = "__Host-custos-console"
#: The sign-in form's double-submit token (there is no session yet to bind it to).
SIGNIN_CSRF_COOKIE = "__Host-custos-console-signin"
MAX_SESSIONS = 10_000


def new_secret() -> str:
    """A fresh 256-bit secret, URL-safe."""
    return secrets.token_urlsafe(32)


def same_secret(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; a missing value on either side never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    """One signed-in officer: who, how (``token:<id>`` or ``mtls``), the form token, and until when."""

    caller: Caller
    method: str
    csrf: str
    expires_at: float

    def remaining_s(self, now: float) -> int:
        """Whole seconds left."""
        return max(0, int(self.expires_at - now))


class SessionStore:
    """Sessions by id (hashed), expiring ``lifetime_s`` after sign-in."""

    def __init__(self, lifetime_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @property
    def lifetime_s(self) -> int:
        """The lifetime of a session, in seconds (the cookie's Max-Age)."""
        return int(self._lifetime_s)

    def open(self, caller: Caller, method: str) -> tuple[str, Session]:
        """A new session for ``caller``: the cookie value and the session."""
        session_id = new_secret()
        now = self._clock()
        session = Session(caller=caller, method=method, csrf=new_secret(), expires_at=now + self._lifetime_s)
        with self._lock:
            self._expire(now)
            if len(self._sessions) >= MAX_SESSIONS:  # the oldest sign-in makes room
                oldest = min(self._sessions, key=lambda k: self._sessions[k].expires_at)
                del self._sessions[oldest]
            self._sessions[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of this cookie value, or ``None`` (unknown, expired or signed out)."""
        if not session_id:
            return None
        key = _key(session_id)
        now = self._clock()
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if session.expires_at <= now:
                del self._sessions[key]
                return None
            return session

    def close(self, session_id: str | None) -> None:
        """Sign out: the session is forgotten."""
        if session_id:
            with self._lock:
                self._sessions.pop(_key(session_id), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]
