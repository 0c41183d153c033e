"""A realistic audit log built fast, and the compliance console's queries measured on it.

:func:`realistic_records` yields the rows a busy server writes, in chain order with correct hashes: request
and completion records of ``generate`` and ``classify`` calls interleaved as concurrent calls interleave,
``anonymize`` events, denials, invalid requests, audit reads by compliance officers, feedback and rare
admin events; a few dozen service principals with a skewed load, statuses, purposes, models, retention
classes, PII entity types (0-4 per request, with findings and Presidio-style explanations), conversations
of several calls, subjects. Payloads are the canonical JSON the store would write for those fields
(:func:`~custos.audit.chain.is_canonical_payload`'s fast encoder where it is exact, canonical.py's
otherwise), so the built log verifies like a written one.

:func:`build_log` loads them with ``COPY`` on PostgreSQL (indexes and unique constraints dropped first and
built again afterwards, as a bulk load does) or batched inserts on SQLite. :func:`measure_queries` runs
every query filter alone and the console's combinations, newest first, first page and a deep page (keyset
pagination by seq), and ``Get`` by id, and reports p50/p99 latency.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from custos.audit.chain import GENESIS_HASH, RAW_COLUMNS, SCHEMA_VERSION, orjson_may_differ
from custos.audit.models import AuditRecordRow
from custos.audit.store import AuditFilter, AuditStore, _encode_page_token

__all__ = [
    "LogSample",
    "QueryRow",
    "build_log",
    "measure_queries",
    "realistic_records",
    "sample_from_log",
]

T0 = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
RATE_PER_S = 200.0
"""Records per second of the simulated server (100 requests/s, a request and a completion record each)."""

_SERVICES = [("svc:crm", 45), ("svc:ticketing", 25), ("svc:chatbot", 15), ("svc:email-triage", 8)] + [
    (f"svc:team-{i:02d}", 7 / 40) for i in range(40)
]
_OFFICERS = [f"officer:{i:02d}" for i in range(10)]
_PURPOSES = [
    ("support", 55),
    ("billing", 20),
    ("sales", 10),
    ("fraud-prevention", 5),
    ("quality", 5),
    (None, 5),
]
_MODELS = [("gemma-3-270m", 85), ("upstream:llama-3.1-8b", 15)]
_ENTITIES = [
    ("PERSON", 40),
    ("EMAIL_ADDRESS", 25),
    ("PHONE_NUMBER", 20),
    ("CUSTOMER_ID", 15),
    ("LOCATION", 10),
    ("ORDER_ID", 10),
    ("DATE_TIME", 10),
    ("TICKET_ID", 8),
    ("IBAN_CODE", 3),
    ("CREDIT_CARD", 2),
]
_COMPLETION_STATUS = [
    ("OK", 96),
    ("RESOURCE_EXHAUSTED", 1),
    ("CANCELLED", 1.5),
    ("DEADLINE_EXCEEDED", 1),
    ("INTERNAL", 0.5),
]
_KINDS = [
    ("generate", 70),
    ("classify", 10),
    ("anonymize", 7),
    ("invalid", 3),
    ("denied", 2),
    ("audit_read", 4),
    ("feedback", 2),
    ("transcript_read", 0.5),
    ("admin", 0.5),
]
_ADMIN_EVENTS = ["key_rotate", "token_change", "config_change", "erase_subject", "transcript_purge"]
_RPC = {
    "generate": "/custos.v1.Inference/GenerateStream",
    "classify": "/custos.v1.Inference/Classify",
    "anonymize": "/custos.v1.Privacy/Anonymize",
    "audit_read": "/custos.v1.Audit/Query",
    "feedback": "/custos.v1.Feedback/Submit",
    "transcript_read": "/custos.v1.Audit/ReadTranscript",
}


def _picker(rng: random.Random, weighted: Sequence[tuple[Any, float]]) -> Callable[[], Any]:
    values = [v for v, _ in weighted]
    cumulative: list[float] = []
    total = 0.0
    for _, weight in weighted:
        total += weight
        cumulative.append(total)

    def pick() -> Any:
        return rng.choices(values, cum_weights=cumulative)[0]

    return pick


@dataclass
class LogSample:
    """Values seen while building, to query for: a reservoir of each kind, and the log's time span."""

    size: int = 200
    ids: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    conversation_refs: list[str] = field(default_factory=list)
    subject_refs: list[str] = field(default_factory=list)
    transcript_ids: list[str] = field(default_factory=list)
    first_time: datetime = T0
    last_time: datetime = T0
    records: int = 0

    def keep(self, pool: list[str], value: str | None, seen: int, rng: random.Random) -> None:
        """Reservoir sampling: every value seen has the same chance to be kept."""
        if value is None:
            return
        if len(pool) < self.size:
            pool.append(value)
        elif (slot := rng.randrange(seen)) < self.size:
            pool[slot] = value


class _Clock:
    """Canonical timestamp text of a microsecond offset from :data:`T0`, without strftime per record."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def text(self, micros: int) -> str:
        second, fraction = divmod(micros, 1_000_000)
        if second != self._second:
            self._second = second
            self._prefix = (T0 + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{fraction:06d}Z"


def _payload(body: dict[str, Any]) -> bytes:
    """canonical.py's bytes for a body of plain JSON types (the same as json.dumps with its options)."""
    fast = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    if not orjson_may_differ(fast):
        return fast
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def realistic_records(n: int, *, seed: int = 0, sample: LogSample | None = None) -> Iterator[tuple[Any, ...]]:
    """Yield ``n`` chained records as tuples in :data:`~custos.audit.chain.RAW_COLUMNS` order.

    Timestamps are canonical text (``2026-01-05T00:00:00.000000Z``); ``sample`` collects values to query.
    """
    rng = random.Random(seed)
    sample = sample if sample is not None else LogSample()
    clock = _Clock()
    service = _picker(rng, _SERVICES)
    purpose = _picker(rng, _PURPOSES)
    model = _picker(rng, _MODELS)
    entity = _picker(rng, _ENTITIES)
    completion_status = _picker(rng, _COMPLETION_STATUS)
    kind_of = _picker(rng, _KINDS)
    recent_conversations: list[str] = []
    subjects = max(50, n // 40)
    pending: list[dict[str, Any]] = []  # calls whose completion record is still to come
    prev_hash = GENESIS_HASH
    step_us = round(1_000_000 / RATE_PER_S)
    now_us = 0
    seq = 0

    def new_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def ref(kind: str, value: int) -> str:
        return hashlib.sha256(f"{seed}:{kind}:{value}".encode()).hexdigest()

    def emit(fields: dict[str, Any], details: dict[str, Any]) -> tuple[Any, ...]:
        nonlocal prev_hash, seq
        seq += 1
        body = {**fields, "seq": seq, "schema_version": SCHEMA_VERSION, "details": details}
        payload = _payload(body)
        digest = hashlib.sha256(bytes.fromhex(prev_hash))
        digest.update(payload)
        row_hash = digest.hexdigest()
        counts = details.get("pii", {}).get("counts") if isinstance(details.get("pii"), dict) else None
        entity_types = "," + ",".join(sorted(counts)) + "," if counts else None
        row = (
            seq,
            fields["id"],
            prev_hash,
            row_hash,
            SCHEMA_VERSION,
            fields["event_type"],
            fields["phase"],
            fields["request_id"],
            fields["start_time"],
            fields["end_time"],
            fields["actor"],
            fields["rpc"],
            fields["status"],
            fields["model"],
            fields["conversation_ref"],
            fields["subject_ref"],
            fields["transcript_id"],
            payload,
            details.get("purpose") or None,
            details.get("retention_class") or None,
            entity_types,
        )
        prev_hash = row_hash
        sample.records = seq
        sample.keep(sample.ids, fields["id"], seq, rng)
        sample.keep(sample.conversation_refs, fields["conversation_ref"], seq, rng)
        sample.keep(sample.subject_refs, fields["subject_ref"], seq, rng)
        sample.keep(sample.transcript_ids, fields["transcript_id"], seq, rng)
        if fields["phase"] == "request":
            sample.keep(sample.request_ids, fields["id"], seq, rng)
        return row

    def findings(count: int) -> tuple[dict[str, int], list[dict[str, Any]]]:
        counts: dict[str, int] = {}
        found: list[dict[str, Any]] = []
        for index in range(count):
            entity_type = entity()
            counts[entity_type] = counts.get(entity_type, 0) + 1
            start = rng.randrange(400)
            score = rng.choice((0.85, 1.0, 0.6, 0.75, 0.95))
            ner = entity_type == "PERSON"
            found.append(
                {
                    "message_index": rng.randrange(3),
                    "entity_type": entity_type,
                    "start": start,
                    "end": start + rng.randrange(5, 30),
                    "score": score,
                    "recognizer": "SpacyRecognizer" if ner else f"{entity_type.title()}Recognizer",
                    "placeholder": f"<{entity_type}_{index + 1}>",
                    "explanation": {
                        "recognizer": "SpacyRecognizer" if ner else "PatternRecognizer",
                        "pattern_name": None if ner else f"{entity_type.lower()} (strong)",
                        "original_score": score,
                        "score": score,
                        "textual_explanation": f"Identified as {entity_type} by the "
                        + ("NER model" if ner else "pattern"),
                    },
                }
            )
        return counts, found

    # Pools of ready-made parts: building every part anew per record would dominate the build time.
    peers = [
        f"ipv4:10.0.{rng.randrange(4)}.{rng.randrange(250)}:{rng.randrange(30000, 60000)}" for _ in range(256)
    ]
    pii_pool = [findings(rng.choice((0, 0, 1, 1, 1, 2, 2, 3, 4))) for _ in range(1024)]

    def actor_of(principal: str, role: str) -> dict[str, Any]:
        return {"principal": principal, "role": role, "peer": rng.choice(peers), "fingerprint": None}

    def start_call(kind: str) -> Iterator[tuple[Any, ...]]:
        principal = service()
        if recent_conversations and rng.random() < 0.6:
            conversation = rng.choice(recent_conversations)
        else:
            conversation = ref("conversation", rng.getrandbits(64))
            recent_conversations.append(conversation)
            if len(recent_conversations) > 1000:
                recent_conversations.pop(0)
        subject = ref("subject", int(rng.paretovariate(1.2) * 7) % subjects) if rng.random() < 0.7 else None
        chosen_purpose = purpose()
        chosen_model = model()
        record_id = new_id()
        start = clock.text(now_us)
        counts, found = rng.choice(pii_pool)
        retention = "extended" if rng.random() < 0.08 else "standard"
        details: dict[str, Any] = {
            "messages": 3,
            "purpose": chosen_purpose,
            "pii": {"counts": counts, "findings": found},
            "model_info": {
                "name": chosen_model,
                "source_sha256": "9f" * 32,
                "cache_digest": "4c" * 32,
                "quantization": "Q4_K_M",
                "precision": "int4",
                "device": "cpu",
                "prompt_format": "plain-customer-service",
                "prompt_format_version": 2,
                "prompt_format_sha256": "1d" * 32,
            },
            "retention_class": retention,
            "actor": actor_of(principal, "inference"),
        }
        if kind == "generate":
            details.update(
                roles=["system", "user", "assistant"],
                parameters={"max_new_tokens": 256, "temperature": 0.7, "top_p": 0.9, "seed": None,
                            "stop_sequences": 0},
                reidentify_requested=rng.random() < 0.2,
                task="answer",
            )  # fmt: skip
        else:
            details.update(
                label_set={"name": "intent", "version": 3, "labels": ["billing", "complaint", "other"]}
            )
        phase = "request" if kind in ("generate", "classify") else "event"
        status = "OK"
        fields = {
            "event_type": kind,
            "phase": phase,
            "request_id": record_id,
            "start_time": start,
            "end_time": clock.text(now_us + rng.randrange(200, 4000)),
            "actor": principal,
            "rpc": _RPC[kind],
            "status": status,
            "model": chosen_model if kind in ("generate", "classify") else None,
            "conversation_ref": conversation,
            "subject_ref": subject,
            "transcript_id": None,
            "id": record_id,
        }
        yield emit(fields, details)
        if phase == "request":
            pending.append({**fields, "retention": retention, "actor_details": details["actor"]})

    def complete(call: dict[str, Any]) -> tuple[Any, ...]:
        status = completion_status()
        transcript = new_id() if call["event_type"] == "generate" and status == "OK" else None
        tokens = rng.randrange(20, 256)
        latency = {
            "privacy": round(rng.uniform(2, 40), 3),
            "audit": round(rng.uniform(0.4, 3), 3),
            "queue": round(rng.expovariate(0.2), 3),
            "prefill": round(rng.uniform(30, 400), 3),
            "decode": round(tokens * rng.uniform(8, 30), 3),
            "transcript": round(rng.uniform(0.3, 2), 3),
        }
        details = {
            "request_id": call["id"],
            "error": "generation failed" if status == "INTERNAL" else None,
            "finish_reason": rng.choice(("stop", "stop", "length")) if status == "OK" else status.lower(),
            "usage": {"prompt_tokens": rng.randrange(40, 900), "completion_tokens": tokens},
            "confidence": {"mean_logprob": round(-rng.uniform(0.05, 2), 4),
                           "min_logprob": round(-rng.uniform(2, 12), 4)},
            "answer_digest": hashlib.sha256(call["id"].encode()).hexdigest(),
            "reidentified": False,
            "output_guard": {"placeholders_restored": 0, "placeholders_kept_masked": rng.randrange(3),
                             "unknown_placeholders": 0, "new_pii_masked": {}, "new_pii_findings": []},
            "transcript": {"id": transcript, "key_version": 1, "format": 2} if transcript else None,
            "latency_ms": latency,
            "retention_class": call["retention"],
            "actor": call["actor_details"],
        }  # fmt: skip
        fields = {
            **{
                k: call[k] for k in ("event_type", "actor", "rpc", "model", "conversation_ref", "subject_ref")
            },
            "phase": "completion",
            "request_id": call["id"],
            "start_time": call["start_time"],
            "end_time": clock.text(now_us),
            "status": status,
            "transcript_id": transcript,
            "id": new_id(),
        }
        return emit(fields, details)

    def single_event(kind: str) -> tuple[Any, ...]:
        record_id = new_id()
        officer = rng.choice(_OFFICERS)
        if kind == "audit_read":
            actor, status = officer, "OK"
            read = rng.choice(("query", "query", "get", "export", "verify"))
            details: dict[str, Any] = {"kind": read, "filters": {"event_type": "generate"}, "returned": 7}
        elif kind == "transcript_read":
            actor, status = officer, "OK"
            details = {"transcript_id": new_id(), "reason": "subject access request"}
        elif kind == "admin":
            kind, actor, status = rng.choice(_ADMIN_EVENTS), "admin:ops", "OK"
            details = {"note": "scheduled"}
        else:
            actor = service()
            status = {"denied": "PERMISSION_DENIED", "invalid": "INVALID_ARGUMENT", "feedback": "OK"}[kind]
            details = (
                {"rating": rng.randrange(1, 6), "task": "answer"}
                if kind == "feedback"
                else {"field": "purpose", "problem": "not allowed for this caller"}
            )
        details["actor"] = actor_of(actor, "compliance" if actor.startswith("officer") else "inference")
        fields = {
            "event_type": kind,
            "phase": "event",
            "request_id": record_id,
            "start_time": clock.text(now_us),
            "end_time": clock.text(now_us + rng.randrange(100, 2000)),
            "actor": actor,
            "rpc": _RPC.get(kind, f"cli.{kind}"),
            "status": status,
            "model": None,
            "conversation_ref": None,
            "subject_ref": None,
            "transcript_id": None,
            "id": record_id,
        }
        return emit(fields, details)

    while seq < n:
        now_us += rng.randrange(step_us * 2)
        if pending and (rng.random() < 0.5 or len(pending) > 16):
            yield complete(pending.pop(rng.randrange(len(pending))))
            continue
        kind = kind_of()
        if kind in ("generate", "classify", "anonymize"):
            yield from start_call(kind)
        else:
            yield single_event(kind)
    sample.last_time = T0 + timedelta(microseconds=now_us)


_COPY_SQL = f"COPY audit_records ({', '.join(RAW_COLUMNS)}) FROM STDIN"


def _secondary_ddl(conn: sa.Connection) -> tuple[list[str], list[str]]:
    """DROP and CREATE statements of the table's indexes and unique constraints other than the key."""
    constraints = conn.execute(
        sa.text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'audit_records'::regclass AND contype = 'u'"
        )
    ).all()
    indexes = conn.execute(
        sa.text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_records' "
            "AND schemaname = current_schema() AND indexname NOT IN "
            "(SELECT conname FROM pg_constraint WHERE conrelid = 'audit_records'::regclass)"
        )
    ).all()
    drop = [f'ALTER TABLE audit_records DROP CONSTRAINT "{name}"' for name, _ in constraints]
    drop += [f'DROP INDEX "{name}"' for name, _ in indexes]
    create = [f'ALTER TABLE audit_records ADD CONSTRAINT "{name}" {ddl}' for name, ddl in constraints]
    create += [ddl for _, ddl in indexes]
    return drop, create


def build_log(
    engine: sa.Engine, n: int, *, seed: int = 0, say: Callable[[str], None] = lambda _m: None
) -> tuple[LogSample, dict[str, float]]:
    """Load ``n`` realistic records into the (empty, migrated) audit table; the sample and phase seconds."""
    sample = LogSample()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    rows = realistic_records(n, seed=seed, sample=sample)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            drop, create = _secondary_ddl(conn)
            for statement in drop:
                conn.execute(sa.text(statement))
            raw: Any = conn.connection.driver_connection
            with raw.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
                for done, row in enumerate(rows, start=1):
                    copy.write_row(row)
                    if done % 500_000 == 0:
                        say(f"log: {done:,} of {n:,} records copied")
        timings["copy"] = time.perf_counter() - started
        say("log: building indexes")
        mark = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(sa.text("SET maintenance_work_mem = '256MB'"))
            for statement in create:
                conn.execute(sa.text(statement))
        timings["indexes"] = time.perf_counter() - mark
        mark = time.perf_counter()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE audit_records"))
        timings["analyze"] = time.perf_counter() - mark
    else:
        names = list(RAW_COLUMNS)
        batch: list[dict[str, Any]] = []
        with engine.begin() as conn:
            for row in rows:
                values = dict(zip(names, row, strict=True))
                for name in ("start_time", "end_time"):
                    values[name] = datetime.fromisoformat(values[name])
                batch.append(values)
                if len(batch) == 5000:
                    conn.execute(sa.insert(AuditRecordRow), batch)
                    batch = []
            if batch:
                conn.execute(sa.insert(AuditRecordRow), batch)
        timings["insert"] = time.perf_counter() - started
    timings["total"] = time.perf_counter() - started
    return sample, timings


def sample_from_log(engine: sa.Engine, *, size: int = 200) -> LogSample:
    """A :class:`LogSample` read back from a built log (to measure queries on a log built earlier)."""
    sample = LogSample(size=size)
    table = AuditRecordRow.__table__
    with engine.connect() as conn:
        low, high, first, last = conn.execute(
            sa.select(sa.func.min(table.c.seq), sa.func.max(table.c.seq), sa.func.min(table.c.start_time),
                      sa.func.max(table.c.start_time))
        ).one()  # fmt: skip
        sample.records, sample.first_time, sample.last_time = int(high), first, last
        rng = random.Random(0)
        seqs = sorted(rng.randrange(int(low), int(high) + 1) for _ in range(size * 5))
        picked = conn.execute(
            sa.select(table.c.id, table.c.phase, table.c.conversation_ref, table.c.subject_ref,
                      table.c.transcript_id).where(table.c.seq.in_(seqs))
        ).all()  # fmt: skip
    for record_id, phase, conversation, subject, transcript in picked:
        for pool, value in ((sample.ids, record_id), (sample.conversation_refs, conversation),
                            (sample.subject_refs, subject), (sample.transcript_ids, transcript),
                            (sample.request_ids, record_id if phase == "request" else None)):  # fmt: skip
            if value is not None and len(pool) < size:
                pool.append(value)
    return sample


@dataclass(frozen=True)
class QueryRow:
    """Latency of one query case on one page: p50/p99 over its runs, and the rows the first run returned."""

    case: str
    page: str
    p50_ms: float
    p99_ms: float
    runs: int
    returned: int


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def query_cases(sample: LogSample) -> list[tuple[str, Callable[[int], dict[str, Any]]]]:
    """Every :class:`AuditFilter` field alone and the console's combinations; each varies with the run."""
    span = sample.last_time - sample.first_time
    day = min(span, timedelta(hours=24))
    hour = min(span, timedelta(hours=1))
    last = sample.last_time

    def pick(pool: list[str]) -> Callable[[int], str]:
        return lambda run: pool[run % len(pool)] if pool else "0" * 64

    conv, subj, trans, req = (pick(p) for p in (sample.conversation_refs, sample.subject_refs,
                                                 sample.transcript_ids, sample.request_ids))  # fmt: skip
    actors = ["svc:crm", "svc:ticketing", "svc:team-07", "officer:03"]
    statuses = ["OK", "INVALID_ARGUMENT", "INTERNAL", "CANCELLED"]
    failed = ["CANCELLED", "INTERNAL", "DEADLINE_EXCEEDED"]
    kinds = ["generate", "classify", "audit_read", "key_rotate"]
    entities = ["PERSON", "EMAIL_ADDRESS", "IBAN_CODE", "CREDIT_CARD"]
    purposes = ["support", "billing", "fraud-prevention", "quality"]
    return [
        ("(no filter)", lambda run: {}),
        ("since (last 24 h)", lambda run: {"since": last - day}),
        ("until (an hour back)", lambda run: {"until": last - hour}),
        (
            "since+until (an hour, mid-log)",
            lambda run: {"since": last - span / 2 - hour, "until": last - span / 2},
        ),
        ("event_type", lambda run: {"event_type": kinds[run % 4]}),
        ("actor", lambda run: {"actor": actors[run % 4]}),
        ("status", lambda run: {"status": statuses[run % 4]}),
        ("request_id", lambda run: {"request_id": req(run)}),
        ("phase", lambda run: {"phase": ("request", "completion", "event")[run % 3]}),
        ("conversation_ref", lambda run: {"conversation_ref": conv(run)}),
        ("subject_ref", lambda run: {"subject_ref": subj(run)}),
        ("transcript_id", lambda run: {"transcript_id": trans(run)}),
        ("model", lambda run: {"model": ("gemma-3-270m", "upstream:llama-3.1-8b")[run % 2]}),
        ("entity_type", lambda run: {"entity_type": entities[run % 4]}),
        ("purpose", lambda run: {"purpose": purposes[run % 4]}),
        ("retention_class", lambda run: {"retention_class": ("standard", "extended")[run % 2]}),
        ("console: actor + last 24 h", lambda run: {"actor": actors[run % 4], "since": last - day}),
        (
            "console: event_type + status",
            lambda run: {"event_type": "generate", "status": failed[run % 3]},
        ),
        (
            "console: subject_ref + event_type",
            lambda run: {"subject_ref": subj(run), "event_type": "generate"},
        ),
        (
            "console: purpose + entity_type + 24 h",
            lambda run: {"purpose": purposes[run % 4], "entity_type": entities[run % 4], "since": last - day},
        ),
        (
            "console: conversation_ref + since",
            lambda run: {"conversation_ref": conv(run), "since": last - span},
        ),
    ]


def measure_queries(
    store: AuditStore, sample: LogSample, *, runs: int = 20, page_size: int = 50
) -> list[QueryRow]:
    """p50/p99 of each case's first page and of a deep page (below the middle of the log), and of Get."""
    deep_token = _encode_page_token(max(1, sample.records // 2))
    out: list[QueryRow] = []
    for case, make in query_cases(sample):
        for page, token in (("first", None), ("deep", deep_token)):
            times: list[float] = []
            returned = 0
            for run in range(runs):
                filters = make(run)
                started = time.perf_counter()
                records, _ = store.query(AuditFilter(**filters), page_size=page_size, page_token=token)
                times.append((time.perf_counter() - started) * 1000)
                if run == 0:
                    returned = len(records)
            out.append(
                QueryRow(case, page, statistics.median(times), _percentile(times, 0.99), runs, returned)
            )
    times = []
    for run in range(max(runs, 50)):
        record_id = sample.ids[run % len(sample.ids)]
        started = time.perf_counter()
        store.get(record_id)
        times.append((time.perf_counter() - started) * 1000)
    out.append(QueryRow("Get by id", "-", statistics.median(times), _percentile(times, 0.99), len(times), 1))
    return out


def explain(store: AuditStore, sample: LogSample, *, page_size: int = 50) -> dict[str, str]:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of each case's first page on PostgreSQL, by case name."""
    from sqlalchemy.dialects import postgresql

    from custos.audit.store import _filtered

    plans: dict[str, str] = {}
    for case, make in query_cases(sample):
        stmt = _filtered(sa.select(AuditRecordRow.seq), AuditFilter(**make(0)))
        stmt = stmt.order_by(AuditRecordRow.seq.desc()).limit(page_size + 1)
        sql = str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
        sql = sql.replace("%%", "%")  # the pyformat dialect doubles LIKE's %; text() would keep both
        with store.engine.connect() as conn:
            lines = conn.execute(sa.text(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}")).scalars().all()
        plans[case] = "\n".join(lines)
    return plans
