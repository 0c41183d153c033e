"""Canonical JSON: the exact bytes that are hashed into the audit chain.

The same logical value must always give the same bytes, on every platform and every future version, because
verification re-hashes stored payloads years later. So the accepted types are few and fixed, and anything else
raises instead of being coerced by a ``default=str`` that could change meaning silently.

Rules:
- ``Mapping`` with ``str`` keys (sorted by code point), ``list``/``tuple`` (order kept), ``str``, ``int``,
  ``bool``, ``None``, finite ``float``;
- ``datetime`` must be timezone-aware and is written as ISO-8601 in UTC with microseconds and a ``Z``:
  ``2024-05-01T12:00:00.000000Z``;
- an ``enum.Enum`` member is written as its ``value`` (canonicalised by the same rules), so a ``StrEnum`` and
  its plain string hash identically;
- separators ``,`` and ``:`` without spaces, UTF-8 with non-ASCII text written as is (no escapes).

Everything else (``bytes``, ``set``, ``Decimal``, naive ``datetime``, ``date``, NaN/infinity, …) raises
:class:`~custos.audit.errors.CanonicalizationError` naming the type.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime

from custos.audit.errors import CanonicalizationError

__all__ = ["canonical_json", "format_timestamp"]

# Guards against self-referencing containers and absurd nesting; audit details are a few levels deep.
_MAX_DEPTH = 64

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]


def format_timestamp(value: datetime) -> str:
    """Return the canonical text of a timezone-aware datetime: UTC, microseconds, ``Z`` suffix.

    Used for payloads and by verification to compare typed timestamp columns with the payload.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise CanonicalizationError("naive datetime is not allowed; use a timezone-aware datetime")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _normalize(value: object, depth: int) -> JsonValue:
    if depth > _MAX_DEPTH:
        raise CanonicalizationError(f"value nested deeper than {_MAX_DEPTH} levels")
    # Enum first: IntEnum/StrEnum members are also int/str instances.
    if isinstance(value, enum.Enum):
        return _normalize(value.value, depth + 1)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalizationError("non-finite float (NaN or infinity) is not allowed")
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, Mapping):
        out: dict[str, JsonValue] = {}
        for key, item in value.items():
            if isinstance(key, enum.Enum) and isinstance(key.value, str):
                key = key.value
            if not isinstance(key, str):
                raise CanonicalizationError(
                    f"mapping key of type {type(key).__name__} is not allowed; keys must be str"
                )
            out[str.__str__(key)] = _normalize(item, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_normalize(item, depth + 1) for item in value]
    raise CanonicalizationError(f"type {type(value).__name__} is not allowed in canonical JSON")


def canonical_json(obj: object) -> bytes:
    """Serialise ``obj`` to canonical JSON bytes (see the module docstring for the rules).

    Raises:
        CanonicalizationError: on a type outside the allowed set, a naive datetime, a non-finite float, a
            non-string key or text that is not valid Unicode; the message names the type, not the value.

    """
    normalized = _normalize(obj, 0)
    text = json.dumps(normalized, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalizationError("text contains a lone surrogate and is not valid Unicode") from None
