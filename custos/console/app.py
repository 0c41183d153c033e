"""The compliance console: server-rendered pages over the same flows the Audit RPCs use.

Sign-in takes a token holding ``audit.read`` (or the verified client certificate of a principal whose roles
hold it) through the same :class:`~custos.security.auth.AccessControl` as the APIs, under the method name
``/custos.console/SignIn``; refusals are ``denied`` records. A signed-in officer gets a session cookie
(``__Host-``, ``Secure``, ``HttpOnly``, ``SameSite=Strict``, ``console_session_minutes``), and every form
carries the session's CSRF token (the sign-in form a double-submit one). Every page view and action is an
``audit_read`` record of kind ``console``: searches, record pages and exports through
:class:`~custos.flows.audit_read.ComplianceService` (as the RPCs, with ``read`` naming which), the other pages
by this module. Transcripts go through :class:`~custos.flows.subject_access.SubjectAccess` with a reason,
for holders of ``transcript.read`` only.

Every response carries a strict Content-Security-Policy (``default-src 'self'``, no inline script or style);
the stylesheet and the script are bundled in the package.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, select_autoescape

from custos.audit.checkpoints import Checkpoint, effective_checkpoints
from custos.audit.errors import RecordNotFound
from custos.audit.events import EventType, StoredRecord
from custos.audit.incremental import VerifiedState, read_state, state_path
from custos.audit.report import ProcessingSummary, processing_summary
from custos.audit.store import AuditFilter
from custos.audit.trail import AuditTrail
from custos.console import explain
from custos.console.charts import bar_chart, line_chart
from custos.console.jobs import JobRunning, JobStatus, VerificationJobs
from custos.console.sessions import (
    SESSION_COOKIE,
    SIGNIN_CSRF_COOKIE,
    Session,
    SessionStore,
    new_secret,
    same_secret,
)
from custos.flows.audit_read import ComplianceService
from custos.flows.context import in_executor
from custos.flows.errors import InvalidArgument, PermissionDenied, RequestError, Unauthenticated
from custos.flows.events import actor_of, caller_event
from custos.flows.status import map_error
from custos.flows.subject_access import SubjectAccess
from custos.flows.types import Caller
from custos.http.tls import CLIENT_CERT_STATE, client_auth_context
from custos.privacy.keys import MasterKeyProvider, blind_index
from custos.security.auth import AccessControl
from custos.tasks.feedback import PERIODS, FeedbackStore

T = TypeVar("T")
log = logging.getLogger("custos.console")

SIGNIN_METHOD = "/custos.console/SignIn"
TRANSCRIPT_METHOD = "/custos.console/Transcript"
PAGE_SIZE = 50
#: The Art. 30 summary aggregates the whole live log: computed at most this often (the page says when).
REPORT_CACHE_S = 60.0
CHANNEL = "console"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
}
#: The search form's fields, in the order the page shows them.
SEARCH_FIELDS = (
    "since",
    "until",
    "principal",
    "event_type",
    "status",
    "purpose",
    "entity_type",
    "conversation_id",
    "subject_id",
    "request_id",
)
_MAX_FIELD_CHARS = 256


@dataclass(frozen=True)
class ConsoleDeps:
    """What the console calls, built once in the app wiring (the same objects the APIs use)."""

    access: AccessControl
    trail: AuditTrail
    subjects: SubjectAccess
    keys: MasterKeyProvider
    feedback: FeedbackStore
    executor: Executor
    session_minutes: int = 15


class _SignInNeeded(Exception):
    """No live session: GETs go to the sign-in page, form posts are refused."""


# ---- reading the request ----------------------------------------------------------------------------


def _peer(request: Request) -> str:
    """The peer in gRPC's notation (``ipv4:127.0.0.1:5000``), so audit records read alike."""
    client = request.client
    if client is None:
        return "unknown"
    host, port = client.host, client.port
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _text(values: Mapping[str, Any], name: str) -> str | None:
    value = values.get(name)
    if value is None or not isinstance(value, str):
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > _MAX_FIELD_CHARS:
        raise InvalidArgument(name, f"at most {_MAX_FIELD_CHARS} characters")
    return value


def _time(values: Mapping[str, Any], name: str) -> datetime | None:
    value = _text(values, name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(name, "must be a date and time, YYYY-MM-DDTHH:MM (UTC)") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class SearchForm:
    """The search form as typed (for re-display and paging) and the filter it means."""

    values: dict[str, str]
    where: AuditFilter

    def query_string(self) -> list[tuple[str, str]]:
        """The typed values, for the next-page link and the export form."""
        return [(k, v) for k, v in self.values.items() if v]


def parse_search(values: Mapping[str, Any], index_key: Callable[[], bytes]) -> SearchForm:
    """The filter of the search form; plain conversation and subject ids become their blind indexes."""
    typed = {name: _text(values, name) or "" for name in SEARCH_FIELDS}
    principal = typed["principal"] or None
    conversation_ref = subject_ref = None
    if typed["conversation_id"]:
        if principal is None:
            raise InvalidArgument(
                "conversation_id", "needs the principal too: a conversation is referenced per caller"
            )
        conversation_ref = blind_index(
            index_key(), "conversation", f"{principal}\x00{typed['conversation_id']}"
        )
    if typed["subject_id"]:
        subject_ref = blind_index(index_key(), "subject", typed["subject_id"])
    where = AuditFilter(
        since=_time(values, "since"),
        until=_time(values, "until"),
        event_type=typed["event_type"] or None,
        actor=principal,
        status=typed["status"] or None,
        purpose=typed["purpose"] or None,
        entity_type=typed["entity_type"] or None,
        conversation_ref=conversation_ref,
        subject_ref=subject_ref,
        request_id=typed["request_id"] or None,
    )
    return SearchForm(values=typed, where=where)


# ---- the checkpoint file, read once per change -------------------------------------------------------


class _CheckpointCache:
    """The effective checkpoints and the verified state, re-read only when their files change."""

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = trail
        self._lock = threading.Lock()
        self._stamp: tuple[object, ...] | None = None
        self._value: tuple[list[Checkpoint], VerifiedState | None] = ([], None)

    @staticmethod
    def _stat(path: Path) -> tuple[int, int] | None:
        try:
            s = path.stat()
        except FileNotFoundError:
            return None
        return (s.st_mtime_ns, s.st_size)

    def read(self) -> tuple[list[Checkpoint], VerifiedState | None]:
        trail = self._trail
        stamp = (self._stat(trail.log.path), self._stat(state_path(trail.log)))
        with self._lock:
            if stamp != self._stamp:
                checkpoints = effective_checkpoints(trail.log.read(trail.public_key))
                state = read_state(state_path(trail.log), trail.public_key)
                self._value = (checkpoints, state)
                self._stamp = stamp
            return self._value


# ---- the app --------------------------------------------------------------------------------------


class ConsoleApp:
    """The pages over one :class:`ConsoleDeps`."""

    def __init__(self, deps: ConsoleDeps) -> None:
        self.deps = deps
        self.sessions = SessionStore(deps.session_minutes * 60)
        self.compliance = ComplianceService(deps.trail, deps.executor, channel=CHANNEL)
        self.checkpoints = _CheckpointCache(deps.trail)
        self.jobs = VerificationJobs(deps.trail, self._job_finished)
        self._jobs_started_by: dict[int, Caller] = {}
        self._summary: tuple[float, datetime, ProcessingSummary] | None = None
        self._summary_lock = asyncio.Lock()
        env = Environment(
            loader=PackageLoader("custos.console", "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates = Jinja2Templates(env=env)

    # ---- plumbing ----

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await in_executor(self.deps.executor, fn, *args)

    def _session(self, request: Request) -> tuple[Session, Caller]:
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise _SignInNeeded()
        return session, dataclasses.replace(session.caller, peer=_peer(request))

    async def _form(self, request: Request, session: Session) -> Mapping[str, Any]:
        """The posted form, once its CSRF token matches the session's."""
        form = await request.form()
        token = form.get("csrf")
        if not same_secret(session.csrf, token if isinstance(token, str) else None):
            raise PermissionDenied("csrf: the form's token does not match this session; reload the page")
        return form

    async def _audit(self, caller: Caller, rpc: str, details: dict[str, Any], *, status: str = "OK") -> None:
        """An ``audit_read`` record of kind ``console`` for a page or action outside the compliance flow."""
        event = caller_event(
            caller,
            rpc,
            event_type="audit_read",
            status=status,
            details={"kind": CHANNEL, **details},
            actor=actor_of(caller, fingerprint=False),
        )
        await self._run(self.deps.trail.store.append, event)

    def render(
        self, request: Request, name: str, context: dict[str, Any], *, status_code: int = 200
    ) -> Response:
        """Render template ``name`` with the session's principal, CSRF token and time left."""
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        base = {
            "session": session,
            "principal": session.caller.principal if session else None,
            "csrf": session.csrf if session else "",
            "remaining_min": (session.remaining_s(time.monotonic()) + 59) // 60 if session else 0,
        }
        return self.templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)

    def error_page(self, request: Request, exc: BaseException) -> Response:
        """The error page of ``exc``: its status and safe message (unknown errors: a fixed one, logged)."""
        mapped = map_error(exc, "")
        if mapped.status == "INTERNAL":
            log.error("console page failed", exc_info=exc)
        return self.render(
            request,
            "error.html",
            {"status": mapped.status, "message": mapped.message, "field": mapped.field},
            status_code=mapped.http_status,
        )

    async def page(
        self, request: Request, handler: Callable[[Session, Caller], Awaitable[Response]]
    ) -> Response:
        """Run a signed-in page: no session -> sign-in; known errors -> an error page with their status."""
        try:
            session, caller = self._session(request)
            return await handler(session, caller)
        except _SignInNeeded:
            if request.method == "GET":
                return RedirectResponse("/signin", status_code=303)
            return self.error_page(request, Unauthenticated("session: signed out or expired; sign in again"))
        except (RequestError, RecordNotFound) as exc:
            return self.error_page(request, exc)
        except Exception as exc:
            return self.error_page(request, exc)

    # ---- sign-in and sign-out ----

    async def signin_page(self, request: Request) -> Response:
        """The sign-in form, with a fresh double-submit token."""
        return self._signin_form(request)

    def _signin_form(self, request: Request, *, error: str | None = None, status_code: int = 200) -> Response:
        token = new_secret()
        has_cert = bool(getattr(request.state, CLIENT_CERT_STATE, None))
        response = self.templates.TemplateResponse(
            request,
            "signin.html",
            {"session": None, "principal": None, "csrf": token, "error": error, "has_cert": has_cert},
            status_code=status_code,
        )
        response.set_cookie(
            SIGNIN_CSRF_COOKIE, token, max_age=600, path="/", secure=True, httponly=True, samesite="strict"
        )
        return response

    async def signin(self, request: Request) -> Response:
        """Sign in with a token (form field ``token``)."""
        form = await request.form()
        if not self._signin_csrf_ok(request, form):
            return self._signin_form(request, error="csrf: the form expired; try again", status_code=403)
        token = form.get("token")
        token = token.strip() if isinstance(token, str) else ""
        metadata = [("authorization", f"Bearer {token}")] if token else []
        return await self._admit(request, metadata, {}, field="token")

    async def signin_certificate(self, request: Request) -> Response:
        """Sign in with the client certificate this connection presented."""
        form = await request.form()
        if not self._signin_csrf_ok(request, form):
            return self._signin_form(request, error="csrf: the form expired; try again", status_code=403)
        der = getattr(request.state, CLIENT_CERT_STATE, None)
        if not der:
            return self._signin_form(
                request, error="certificate: this connection presented no client certificate", status_code=401
            )
        return await self._admit(request, [], client_auth_context(der), field="certificate")

    def _signin_csrf_ok(self, request: Request, form: Mapping[str, Any]) -> bool:
        given = form.get("csrf")
        return same_secret(request.cookies.get(SIGNIN_CSRF_COOKIE), given if isinstance(given, str) else None)

    async def _admit(
        self,
        request: Request,
        metadata: Sequence[tuple[str, str | bytes]],
        auth_context: Mapping[str, Any],
        *,
        field: str,
    ) -> Response:
        try:
            caller, release = await self.deps.access.admit(
                method=SIGNIN_METHOD,
                peer=_peer(request),
                metadata=metadata,
                auth_context=auth_context,
                fields_set=list,
            )
        except Unauthenticated:
            return self._signin_form(
                request, error=f"{field}: missing or invalid credentials", status_code=401
            )
        except PermissionDenied:
            return self._signin_form(
                request,
                error=f"{field}: these credentials do not hold the audit.read permission",
                status_code=403,
            )
        except RequestError as exc:
            return self._signin_form(request, error=exc.message, status_code=map_error(exc, "").http_status)
        release()
        method = "mtls" if field == "certificate" else "token"
        await self._audit(caller, "SignIn", {"action": "sign_in", "method": method})
        session_id, _ = self.sessions.open(caller, method)
        response = RedirectResponse("/search", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=self.sessions.lifetime_s,
            path="/",
            secure=True,
            httponly=True,
            samesite="strict",
        )
        response.delete_cookie(SIGNIN_CSRF_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return response

    async def signout(self, request: Request) -> Response:
        """``POST /signout``: the session is forgotten and its cookie removed."""

        async def handler(session: Session, caller: Caller) -> Response:
            await self._form(request, session)
            self.sessions.close(request.cookies.get(SESSION_COOKIE))
            await self._audit(caller, "SignOut", {"action": "sign_out"})
            response = RedirectResponse("/signin", status_code=303)
            response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
            return response

        return await self.page(request, handler)

    # ---- search, record, export ----

    async def search(self, request: Request) -> Response:
        """``GET /search``: the search form and a page of matching records (newest first)."""

        async def handler(session: Session, caller: Caller) -> Response:
            params = dict(request.query_params)
            form = parse_search(params, self.deps.keys.index_key)
            searched = any(form.values.values())
            records: list[StoredRecord] = []
            next_token: str | None = None
            if searched or params.get("all"):
                page_token = _text(params, "page_token")
                records, next_token = await self.compliance.query(
                    caller, form.where, page_size=PAGE_SIZE, page_token=page_token
                )
            return self.render(
                request,
                "search.html",
                {
                    "form": form.values,
                    "event_types": sorted(e.value for e in EventType),
                    "records": records,
                    "searched": searched or bool(params.get("all")),
                    "next_query": [*form.query_string(), ("page_token", next_token)] if next_token else None,
                    "export_fields": form.query_string(),
                },
            )

        return await self.page(request, handler)

    async def export(self, request: Request) -> Response:
        """``POST /export``: the current search as the verifiable JSONL bundle of ``custos audit export``."""

        async def handler(session: Session, caller: Caller) -> Response:
            form = await self._form(request, session)
            search = parse_search(form, self.deps.keys.index_key)
            chunks = self.compliance.export(caller, search.where, "jsonl")
            # Its audit record is written before the first byte: start it here, so a refusal is a page.
            first = await anext(aiter(chunks), b"")

            async def body() -> AsyncIterator[bytes]:
                async with aclosing(chunks):
                    if first:
                        yield first
                    async for chunk in chunks:
                        yield chunk

            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            return StreamingResponse(
                body(),
                media_type="application/x-ndjson",
                headers={"content-disposition": f'attachment; filename="custos-audit-{stamp}.jsonl"'},
            )

        return await self.page(request, handler)

    async def record(self, request: Request, record_id: str) -> Response:
        """``GET /records/{id}``: the record and the others of its request, explained."""

        async def handler(session: Session, caller: Caller) -> Response:
            record = await self.compliance.get(caller, record_id)
            related_id = record.request_id or record.id
            related, _ = await self._run(
                lambda: self.deps.trail.store.query(AuditFilter(request_id=related_id), page_size=20)
            )
            checkpoints, state = await self._run(self.checkpoints.read)
            records = sorted([r for r in related if r.id != record.id] + [record], key=lambda r: r.seq)
            return self.render(
                request,
                "record.html",
                {
                    "record": record,
                    "records": records,
                    "views": {r.id: explain.explanation(r) for r in records},
                    "chain": {r.id: explain.chain_position(r.seq, checkpoints, state) for r in records},
                    "last": explain.chain_position(max(r.seq for r in records), checkpoints, state),
                    "can_read_transcripts": "transcript.read" in caller.permissions,
                },
            )

        return await self.page(request, handler)

    # ---- chain status and the verification job ----

    def _chain_context(
        self, checkpoints: list[Checkpoint], state: VerifiedState | None, job: JobStatus | None
    ) -> dict[str, Any]:
        through = None
        if state is not None:
            through = next((n for n, c in enumerate(checkpoints, start=1) if c.seq == state.seq), None)
        return {
            "checkpoints": list(enumerate(checkpoints, start=1))[-10:][::-1],
            "checkpoint_count": len(checkpoints),
            "state": state,
            "verified_through": through,
            "job": job,
        }

    async def chain(self, request: Request) -> Response:
        """``GET /chain``: last verification, signed checkpoints, the verification job."""

        async def handler(session: Session, caller: Caller) -> Response:
            # The job first: a job seen finished has already recorded its verified state, which is read
            # next; the other order could show a passed job beside "no passed verification".
            job = self.jobs.status()
            checkpoints, state = await self._run(self.checkpoints.read)
            head = await self._run(self.deps.trail.store.head)
            await self._audit(caller, "Chain", {"page": "chain", "checkpoints": len(checkpoints)})
            return self.render(
                request, "chain.html", {**self._chain_context(checkpoints, state, job), "head_seq": head.seq}
            )

        return await self.page(request, handler)

    async def job_status(self, request: Request) -> Response:
        """``GET /chain/job``: the job's progress as JSON (counts and states only), for the page's script."""
        try:
            self._session(request)
        except _SignInNeeded:
            return JSONResponse({"error": "session: signed out or expired"}, status_code=401)
        status = self.jobs.status()
        return JSONResponse({"job": status.to_json() if status is not None else None})

    async def verify_start(self, request: Request) -> Response:
        """``POST /chain/verify``: start the (one) verification job."""

        async def handler(session: Session, caller: Caller) -> Response:
            await self._form(request, session)
            try:
                status = self.jobs.start(caller.principal)
            except JobRunning:
                raise _JobAlreadyRunning() from None
            self._jobs_started_by[status.number] = caller
            await self._audit(caller, "Verify", {"action": "verify_start", "job": status.number})
            return RedirectResponse("/chain", status_code=303)

        return await self.page(request, handler)

    async def verify_cancel(self, request: Request) -> Response:
        """``POST /chain/cancel``: ask the running job to stop."""

        async def handler(session: Session, caller: Caller) -> Response:
            await self._form(request, session)
            cancelled = self.jobs.cancel()
            await self._audit(caller, "Verify", {"action": "verify_cancel", "running": cancelled})
            return RedirectResponse("/chain", status_code=303)

        return await self.page(request, handler)

    def _job_finished(self, status: JobStatus) -> None:
        """On the job's thread: the verification's ``audit_read`` record, under the officer who started it."""
        caller = self._jobs_started_by.pop(status.number, None)
        if caller is None:
            return
        event = caller_event(
            caller,
            "Verify",
            event_type="audit_read",
            status="OK",
            details={
                "kind": CHANNEL,
                "read": "verify",
                "job": status.number,
                "state": status.state,
                "mode": status.mode,
                "ok": status.state == "passed",
                "count": status.checked,
                "first_bad_seq": status.first_bad_seq,
                "checkpoints": status.checkpoints,
            },
            actor=actor_of(caller, fingerprint=False),
        )
        self.deps.trail.store.append(event)

    # ---- reports ----

    async def reports(self, request: Request) -> Response:
        """``GET /reports``: records of processing and, with ``feedback.read``, satisfaction over time."""

        async def handler(session: Session, caller: Caller) -> Response:
            period = request.query_params.get("period", "day")
            if period not in PERIODS:
                raise InvalidArgument("period", f"must be one of {', '.join(PERIODS)}")
            summary, computed_at = await self._processing_summary()
            satisfaction = None
            if "feedback.read" in caller.permissions:
                rows = await self._run(lambda: self.deps.feedback.satisfaction(period=period))
                satisfaction = rows
            await self._audit(
                caller,
                "Reports",
                {"page": "reports", "report": "processing", "satisfaction": satisfaction is not None},
            )
            series: dict[str, list[tuple[str, float]]] = {}
            for row in satisfaction or []:
                series.setdefault(f"{row.task} / {row.model}", []).append((row.period, row.satisfied * 100))
            chart = line_chart(
                sorted(series.items()), y_max=100.0, y_label="% satisfied", title="Customer satisfaction"
            )
            return self.render(
                request,
                "reports.html",
                {
                    "summary": summary,
                    "computed_at": computed_at,
                    "cache_s": int(REPORT_CACHE_S),
                    "satisfaction": satisfaction,
                    "chart": chart,
                    "entity_chart": bar_chart(
                        list(summary.entity_types.items()), unit="", title="Categories of personal data"
                    ),
                    "purpose_chart": bar_chart(list(summary.purposes.items()), unit="", title="Purposes"),
                    "period": period,
                    "periods": PERIODS,
                },
            )

        return await self.page(request, handler)

    async def _processing_summary(self) -> tuple[ProcessingSummary, datetime]:
        """The Art. 30 summary, recomputed once older than :data:`REPORT_CACHE_S`, one at a time."""
        async with self._summary_lock:
            cached = self._summary
            if cached is None or time.monotonic() - cached[0] > REPORT_CACHE_S:
                summary = await self._run(processing_summary, self.deps.trail.store)
                cached = (time.monotonic(), datetime.now(UTC), summary)
                self._summary = cached
            return cached[2], cached[1]

    # ---- transcripts ----

    async def transcript_form(self, request: Request, transcript_id: str) -> Response:
        """``GET /transcripts/{id}``: the form asking why (``transcript.read`` only)."""

        async def handler(session: Session, caller: Caller) -> Response:
            await self.deps.access.authorize(caller, method=TRANSCRIPT_METHOD, peer=caller.peer)
            return self.render(request, "transcript.html", {"transcript_id": transcript_id, "view": None})

        return await self.page(request, handler)

    async def transcript(self, request: Request, transcript_id: str) -> Response:
        """``POST /transcripts/{id}``: the decrypted transcript, read for the stated reason (audited)."""

        async def handler(session: Session, caller: Caller) -> Response:
            form = await self._form(request, session)
            await self.deps.access.authorize(caller, method=TRANSCRIPT_METHOD, peer=caller.peer)
            reason = form.get("reason")
            view = await self.deps.subjects.get_transcript(
                caller, transcript_id, reason if isinstance(reason, str) else ""
            )
            return self.render(request, "transcript.html", {"transcript_id": transcript_id, "view": view})

        return await self.page(request, handler)

    def stop(self) -> None:
        """Cancel a running verification (at shutdown)."""
        self.jobs.stop()


class _JobAlreadyRunning(RequestError):
    status = "FAILED_PRECONDITION"

    def __init__(self) -> None:
        super().__init__("a verification is already running: wait for it or cancel it")


def build_console_app(console: ConsoleApp) -> FastAPI:
    """The FastAPI app of ``console`` (no docs pages, no OpenAPI: pages only)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(packages=[("custos.console", "static")]), name="static")

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    async def home(request: Request) -> Response:
        return RedirectResponse("/search", status_code=303)

    app.add_api_route("/", home, methods=["GET"], include_in_schema=False)
    app.add_api_route("/signin", console.signin_page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/signin", console.signin, methods=["POST"], include_in_schema=False)
    app.add_api_route(
        "/signin/certificate", console.signin_certificate, methods=["POST"], include_in_schema=False
    )
    app.add_api_route("/signout", console.signout, methods=["POST"], include_in_schema=False)
    app.add_api_route("/search", console.search, methods=["GET"], include_in_schema=False)
    app.add_api_route("/export", console.export, methods=["POST"], include_in_schema=False)
    app.add_api_route("/records/{record_id}", console.record, methods=["GET"], include_in_schema=False)
    app.add_api_route("/chain", console.chain, methods=["GET"], include_in_schema=False)
    app.add_api_route("/chain/job", console.job_status, methods=["GET"], include_in_schema=False)
    app.add_api_route("/chain/verify", console.verify_start, methods=["POST"], include_in_schema=False)
    app.add_api_route("/chain/cancel", console.verify_cancel, methods=["POST"], include_in_schema=False)
    app.add_api_route("/reports", console.reports, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        "/transcripts/{transcript_id}", console.transcript_form, methods=["GET"], include_in_schema=False
    )
    app.add_api_route(
        "/transcripts/{transcript_id}", console.transcript, methods=["POST"], include_in_schema=False
    )
    return app


__all__ = ["ConsoleApp", "ConsoleDeps", "build_console_app", "parse_search"]
