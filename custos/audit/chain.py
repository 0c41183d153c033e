"""The hash chain: payload construction, row hashing and verification, independent of any database.

``row_hash = SHA-256(bytes.fromhex(prev_hash) || payload)`` where ``payload`` is the canonical JSON of the
record's fields and the first record links to :data:`GENESIS_HASH`. Because ``prev_hash`` is part of the hash
input, changing, removing, inserting or reordering any record breaks every later link; only the tail can be
cut or extended undetected, which signed checkpoints (outside the database) cover.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any, Protocol

import orjson

from custos.audit.canonical import canonical_json, format_timestamp
from custos.audit.events import AuditEvent, Phase

__all__ = [
    "DERIVED_FIELDS",
    "GENESIS_HASH",
    "RAW_COLUMNS",
    "SCHEMA_VERSION",
    "TYPED_FIELDS",
    "ChainHead",
    "ChainRow",
    "ChainVerifier",
    "PayloadTemplate",
    "VerifyReport",
    "build_payload",
    "compute_row_hash",
    "derived_columns",
    "payload_template",
]

SCHEMA_VERSION = 1
"""Version of the payload layout written now. Old versions stay verifiable: payloads are never rewritten."""

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first record."""

TYPED_FIELDS: tuple[str, ...] = (
    "event_type",
    "phase",
    "request_id",
    "start_time",
    "end_time",
    "actor",
    "rpc",
    "status",
    "model",
    "conversation_ref",
    "subject_ref",
    "transcript_id",
)
"""Event fields stored both in the payload and as typed columns; verification checks that they agree."""

_PAYLOAD_KEYS_V1 = frozenset((*TYPED_FIELDS, "id", "seq", "schema_version", "details"))


def build_payload(event: AuditEvent, *, record_id: str, request_id: str, seq: int) -> bytes:
    """Return the canonical payload bytes of ``event`` as record ``record_id`` at position ``seq``.

    ``request_id`` is the resolved value (the record's own id for request records and single events).

    Raises:
        CanonicalizationError: when ``details`` holds a type canonical JSON does not allow.

    """
    body: dict[str, object] = {name: getattr(event, name) for name in TYPED_FIELDS}
    body.update(
        request_id=request_id,
        id=record_id,
        seq=seq,
        schema_version=SCHEMA_VERSION,
        details=event.details,
    )
    return canonical_json(body)


_SEQ_MARKER = b',"seq":0,"start_time":'


@dataclass(frozen=True)
class PayloadTemplate:
    """An event's canonical payload with its chain position left open, built before the append lock.

    ``payload(seq)`` gives exactly :func:`build_payload`'s bytes for that ``seq``; ``derived`` holds the
    :data:`DERIVED_FIELDS` columns and ``details`` the parsed canonical details (the same for every seq).
    """

    head: bytes
    tail: bytes
    derived: dict[str, str | None]
    details: dict[str, object]

    def payload(self, seq: int) -> bytes:
        """The payload bytes of the record at position ``seq``."""
        return b"%s%d%s" % (self.head, seq, self.tail)


def payload_template(event: AuditEvent, *, record_id: str, request_id: str) -> PayloadTemplate:
    """Build :func:`build_payload`'s bytes once with seq 0 and split them around the seq digits.

    The top-level ``"seq"`` is followed only by string or null fields (``start_time``, ``status``,
    ``subject_ref``, ``transcript_id``), in which an unescaped ``,"seq":0,"start_time":`` cannot occur, so
    its last occurrence is the top-level one even when ``details`` holds the same text.

    Raises:
        CanonicalizationError: when ``details`` holds a type canonical JSON does not allow.

    """
    payload = build_payload(event, record_id=record_id, request_id=request_id, seq=0)
    cut = payload.rindex(_SEQ_MARKER) + len(b',"seq":')
    body = json.loads(payload)
    details = body["details"]
    return PayloadTemplate(
        head=payload[:cut],
        tail=payload[cut + 1 :],
        derived=_derived_from_body(body),
        details=details,
    )


DERIVED_FIELDS: tuple[str, ...] = ("purpose", "retention_class", "entity_types")
"""Query columns derived from ``details`` (not payload fields of their own); verification recomputes them."""

_ENTITY_TYPES_MAX = 2048


def derived_columns(payload: bytes) -> dict[str, str | None]:
    """Values of the :data:`DERIVED_FIELDS` columns for a payload: purpose, retention class, entity types.

    ``entity_types`` is the sorted PII entity types of ``details.pii.counts`` joined as ``,A,B,`` (so a
    ``LIKE '%,A,%'`` filter matches whole names), ``None`` when there are none.
    """
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return dict.fromkeys(DERIVED_FIELDS)
    return _derived_from_body(body)


def _derived_from_body(body: object) -> dict[str, str | None]:
    details = body.get("details") if isinstance(body, dict) else None
    return _derived_from_details(details)


def _derived_from_details(details: object) -> dict[str, str | None]:
    return dict(zip(DERIVED_FIELDS, _derived_values(details), strict=True))


def _derived_values(details: object) -> tuple[str | None, str | None, str | None]:
    """Purpose, retention class and entity types (in :data:`DERIVED_FIELDS` order) of ``details``."""
    if not isinstance(details, dict):
        return None, None, None
    purpose = details.get("purpose")
    retention = details.get("retention_class")
    pii = details.get("pii")
    counts = pii.get("counts") if isinstance(pii, dict) else None
    joined = None
    if isinstance(counts, dict) and counts:
        types = sorted(k for k in counts if isinstance(k, str))
        if types:
            joined = "," + ",".join(types) + ","
            if len(joined) > _ENTITY_TYPES_MAX:
                joined = None
    return (
        purpose if isinstance(purpose, str) and purpose else None,
        retention if isinstance(retention, str) and retention else None,
        joined,
    )


def compute_row_hash(prev_hash: str, payload: bytes) -> str:
    """Return the lowercase hex SHA-256 of the previous hash's bytes followed by ``payload``."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + payload).hexdigest()


class ChainRow(Protocol):
    """What verification reads from a stored record (a row or a :class:`StoredRecord` both fit)."""

    @property
    def seq(self) -> int: ...  # noqa: D102
    @property
    def id(self) -> str: ...  # noqa: D102
    @property
    def prev_hash(self) -> str: ...  # noqa: D102
    @property
    def row_hash(self) -> str: ...  # noqa: D102
    @property
    def schema_version(self) -> int: ...  # noqa: D102
    @property
    def event_type(self) -> str: ...  # noqa: D102
    @property
    def phase(self) -> str: ...  # noqa: D102
    @property
    def request_id(self) -> str: ...  # noqa: D102
    @property
    def start_time(self) -> datetime: ...  # noqa: D102
    @property
    def end_time(self) -> datetime: ...  # noqa: D102
    @property
    def actor(self) -> str: ...  # noqa: D102
    @property
    def rpc(self) -> str: ...  # noqa: D102
    @property
    def status(self) -> str: ...  # noqa: D102
    @property
    def model(self) -> str | None: ...  # noqa: D102
    @property
    def conversation_ref(self) -> str | None: ...  # noqa: D102
    @property
    def subject_ref(self) -> str | None: ...  # noqa: D102
    @property
    def transcript_id(self) -> str | None: ...  # noqa: D102
    @property
    def payload(self) -> bytes: ...  # noqa: D102


@dataclass(frozen=True)
class ChainHead:
    """Position of a record in the chain; the head is the last one (seq 0 and genesis hash when empty)."""

    seq: int
    row_hash: str


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of a full chain verification.

    ``count`` is the number of records that verified before the first failure (all of them when ``ok``);
    ``head_hash``/``head_seq`` describe the last good record. ``incomplete`` counts request records without a
    completion record among them: a crash mid-stream leaves one, and so does a request still in flight; it
    is reported, not a failure.
    """

    ok: bool
    count: int
    head_hash: str
    first_bad_seq: int | None
    reason: str
    incomplete: int
    head_seq: int = 0


RAW_COLUMNS: tuple[str, ...] = (
    "seq",
    "id",
    "prev_hash",
    "row_hash",
    "schema_version",
    *TYPED_FIELDS,
    "payload",
    *DERIVED_FIELDS,
)
"""Order of the plain tuples :meth:`ChainVerifier.feed_raw` takes; timestamps as canonical payload text."""

_CANONICAL_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _canonical_text_encoder() -> Callable[[object], str]:
    """Canonical JSON text of a parsed JSON value, as ``json.dumps`` with the canonical options gives it.

    Uses the C encoder made once (``JSONEncoder.encode`` builds it anew on every call), falling back to
    ``JSONEncoder.encode`` where the C accelerator is missing or differs.
    """
    make: Any = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _CANONICAL_ENCODER.encode
    try:
        iterencode = make(
            None, _CANONICAL_ENCODER.default, encode_basestring, None, ":", ",", True, False, False
        )
    except TypeError:
        return _CANONICAL_ENCODER.encode

    def encode(value: object) -> str:
        return "".join(iterencode(value, 0))

    probe = {"b": [1, 2.5, None, True], "a": '\u00e9\n"', "c": {"z": {}, "y": []}}
    return encode if encode(probe) == _CANONICAL_ENCODER.encode(probe) else _CANONICAL_ENCODER.encode


_canonical_text = _canonical_text_encoder()
_body_fields = operator.itemgetter("seq", "id", "schema_version", *TYPED_FIELDS)

# orjson writes floats of magnitude 1e-5 <= |x| < 1e-4 in fixed notation ("0.00001" where Python writes
# "1e-05") and those with a one-digit negative exponent without Python's zero padding ("1e-7", "1e-07");
# every other output is the same bytes (tests/unit/audit/test_audit_canonical_fast.py checks it).
_FIXED_SMALL = b"0.0000"
_NEGATIVE_EXPONENT = b"e-"
_DIGITS = frozenset(bytes([d]) for d in b"0123456789")
_NUMBER_ENDS = frozenset((b",", b"}", b"]", b""))  # what follows a number in compact JSON


def orjson_may_differ(text: bytes) -> bool:
    """Whether orjson's output ``text`` may hold a float that Python's encoder writes differently.

    True for any ``0.0000`` and any ``e-`` followed by exactly one digit that ends a number (``,``, ``}``,
    ``]`` or the end follow), inside strings too: a false alarm only costs the slower check.
    """
    if _FIXED_SMALL in text:
        return True
    at = text.find(_NEGATIVE_EXPONENT)
    while at >= 0:
        if text[at + 2 : at + 3] in _DIGITS and text[at + 3 : at + 4] in _NUMBER_ENDS:
            return True
        at = text.find(_NEGATIVE_EXPONENT, at + 2)
    return False


def is_canonical_payload(body: object, payload: bytes) -> bool:
    """Whether ``payload`` is the canonical JSON of ``body``, a JSON value parsed from it.

    For JSON values canonical JSON is exactly ``json.dumps(sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)``. orjson's sorted output is the same bytes except for some small floats, whose
    text :func:`orjson_may_differ` recognises: where orjson's output equals the payload and holds none of
    them, the payload is canonical (several times faster to establish); otherwise Python's encoder
    decides. Both are sound whatever parser produced ``body``: a payload equal to an encoder's output of
    some value is that value's canonical JSON.
    """
    try:
        fast = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits: Python's encoder decides
        fast = None
    if fast is not None and not orjson_may_differ(fast):
        return bool(fast == payload)
    try:
        return _canonical_text(body).encode("utf-8") == payload
    except (TypeError, ValueError, UnicodeEncodeError):
        return False


def _column_text(value: object) -> object:
    if isinstance(value, datetime):
        # Same text as format_timestamp for the UTC-aware values the store returns, without strftime.
        if value.tzinfo is UTC and value.year >= 1000:  # strftime does not zero-pad years below 1000
            return f"{value.isoformat(timespec='microseconds')[:-6]}Z"
        return format_timestamp(value)
    return value


class ChainVerifier:
    """Checks records fed in ``seq`` order and remembers the first failure.

    Per record, in this order: seq continuity (``gap``), link to the previous hash (``broken link``), the hash
    of the stored bytes (``row_hash mismatch``), that the payload is canonical JSON of the known layout, and
    that every typed column equals its payload field (``column 'status' disagrees with payload``).
    """

    def __init__(
        self,
        *,
        checkpoint: ChainHead | None = None,
        checkpoints: Sequence[ChainHead] = (),
        start: ChainHead | None = None,
        open_requests: Iterable[str] = (),
    ) -> None:
        """Start at genesis, or after ``start`` (the closing checkpoint of archived records).

        ``open_requests`` are the ids of requests without completion before ``start`` (incremental
        verification resumes with those of its verified state).

        Each of ``checkpoint`` / ``checkpoints`` (heads from signed checkpoints) must exist in the chain
        with that hash, which catches a truncated or rolled-back chain and rewritten history before it.
        """
        self._start = start if start is not None else ChainHead(0, GENESIS_HASH)
        wanted = [*checkpoints, *([checkpoint] if checkpoint is not None else [])]
        self._checkpoints = {c.seq: c.row_hash for c in wanted if c.seq > self._start.seq}
        self._count = 0
        self._head = self._start
        self._first_bad_seq: int | None = None
        self._reason = ""
        self._open_requests: set[str] = set(open_requests)
        self._closed_elsewhere: set[str] = set()

    @property
    def failed(self) -> bool:
        """Whether a failure has been found (later records are then ignored)."""
        return self._first_bad_seq is not None

    @property
    def head(self) -> ChainHead:
        """The last record accepted (the start before any)."""
        return self._head

    @property
    def count(self) -> int:
        """Records accepted so far."""
        return self._count

    @property
    def failure(self) -> tuple[int, str] | None:
        """``(seq, reason)`` of the first failure found by :meth:`feed`, ``None`` while there is none."""
        return None if self._first_bad_seq is None else (self._first_bad_seq, self._reason)

    @property
    def open_requests(self) -> frozenset[str]:
        """Ids of request records accepted so far without a completion (also those given at the start)."""
        return frozenset(self._open_requests)

    @property
    def closed_elsewhere(self) -> frozenset[str]:
        """Request ids of completions accepted here whose request record was not among those fed or given.

        Joining ranges verified apart: a request opened in an earlier range is closed by these.
        """
        return frozenset(self._closed_elsewhere)

    def _fail(self, seq: int, reason: str) -> bool:
        self._first_bad_seq = seq
        self._reason = reason
        return False

    def _track(self, phase: str, record_id: str, request_id: str) -> None:
        """Keep the set of open requests; a completion of a request not seen here is remembered apart."""
        if phase == Phase.REQUEST:
            self._open_requests.add(record_id)
        elif phase == Phase.COMPLETION:
            if request_id in self._open_requests:
                self._open_requests.remove(request_id)
            else:
                self._closed_elsewhere.add(request_id)

    def feed(self, row: ChainRow) -> bool:
        """Check the next record; return ``False`` once the chain has failed."""
        if self.failed:
            return False
        expected = self._head.seq + 1
        if row.seq > expected:
            return self._fail(expected, "gap")
        if row.seq < expected:
            return self._fail(row.seq, "unexpected seq")
        if row.prev_hash != self._head.row_hash:
            return self._fail(row.seq, "broken link")
        if compute_row_hash(row.prev_hash, row.payload) != row.row_hash:
            return self._fail(row.seq, "row_hash mismatch")
        reason = self._check_payload(row)
        if reason:
            return self._fail(row.seq, reason)

        expected_hash = self._checkpoints.get(row.seq)
        if expected_hash is not None and row.row_hash != expected_hash:
            return self._fail(row.seq, "checkpoint hash mismatch")
        self._track(row.phase, row.id, row.request_id)
        self._count += 1
        self._head = ChainHead(row.seq, row.row_hash)
        return True

    def feed_raw(self, row: Sequence[Any]) -> bool | None:
        """Check the next record given as a plain tuple in :data:`RAW_COLUMNS` order, on the fast path.

        Returns ``True`` when the record verified (exactly as :meth:`feed` would have accepted it), ``False``
        once the chain has failed, and ``None`` when the fast path cannot accept the record: feed the same
        record with typed columns to :meth:`feed`, which decides and names the reason.

        The payload is parsed once with orjson; its fields are compared with the typed columns as one tuple
        (timestamps come as the database's text in canonical form, see the store, so no datetime is built)
        and canonical form is proved by re-encoding (see :func:`is_canonical_payload`).
        """
        if self._first_bad_seq is not None:
            return False
        try:
            seq = row[0]
            prev_hash = row[2]
            head = self._head
            if seq != head.seq + 1 or prev_hash != head.row_hash or row[4] != SCHEMA_VERSION:
                return None
            payload = row[17]
            if type(payload) is not bytes:
                payload = bytes(payload)
            digest = hashlib.sha256(bytes.fromhex(prev_hash))
            digest.update(payload)
            row_hash = row[3]
            if digest.hexdigest() != row_hash:
                return None
            body = orjson.loads(payload)
            if type(body) is not dict or len(body) != len(_PAYLOAD_KEYS_V1):
                return None
            # A missing key raises KeyError (caught): with the length check, the key set is exactly v1's.
            if _body_fields(body) != (seq, row[1], *row[4:17]):
                return None
            if type(body["seq"]) is not int or type(body["schema_version"]) is not int:
                return None
            details = body["details"]
            if type(details) is not dict or tuple(row[18:21]) != _derived_values(details):
                return None
            if not is_canonical_payload(body, payload):
                return None
        except (TypeError, ValueError, KeyError, IndexError):  # unexpected: feed() judges it
            return None
        expected_hash = self._checkpoints.get(seq)
        if expected_hash is not None and row_hash != expected_hash:
            return None
        self._track(body["phase"], row[1], body["request_id"])
        self._count += 1
        self._head = ChainHead(seq, row_hash)
        return True

    def _check_payload(self, row: ChainRow) -> str:
        try:
            body = json.loads(row.payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return "payload is not valid JSON"
        if not isinstance(body, Mapping):
            return "payload is not a JSON object"
        if row.schema_version != body.get("schema_version"):
            return "column 'schema_version' disagrees with payload"
        if row.schema_version != SCHEMA_VERSION:
            return "unsupported schema_version"
        if set(body) != _PAYLOAD_KEYS_V1:
            return "payload fields do not match the schema"
        # ``body`` holds only JSON types, for which canonical JSON is exactly this C-accelerated dump
        # (``canonical_json`` would give the same bytes, several times slower).
        try:
            canonical = json.dumps(
                body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode("utf-8")
        except (ValueError, UnicodeEncodeError):
            return "payload is not canonical JSON"
        if canonical != row.payload:
            return "payload is not canonical JSON"
        for name, value in (("seq", row.seq), ("id", row.id)):
            if body[name] != value:
                return f"column '{name}' disagrees with payload"
        for name in TYPED_FIELDS:
            if _column_text(getattr(row, name)) != body[name]:
                return f"column '{name}' disagrees with payload"
        for name, derived in _derived_from_body(body).items():
            if getattr(row, name, None) != derived:
                return f"column '{name}' disagrees with payload"
        return ""

    def report(self) -> VerifyReport:
        """Return the report for everything fed so far (call after the last record)."""
        first_bad_seq, reason = self._first_bad_seq, self._reason
        beyond = [seq for seq in self._checkpoints if seq > self._head.seq]
        if first_bad_seq is None and beyond:
            first_bad_seq = self._head.seq + 1
            reason = "chain shorter than checkpoint"
        return VerifyReport(
            ok=first_bad_seq is None,
            count=self._count,
            head_hash=self._head.row_hash,
            first_bad_seq=first_bad_seq,
            reason=reason,
            incomplete=len(self._open_requests),
            head_seq=self._head.seq,
        )
