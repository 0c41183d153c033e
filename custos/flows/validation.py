"""Request-shape rules every edge applies the same way: the settings' limits, id and purpose rules.

Each edge validates its own wire format (protobuf in ``custos.api.convert``, JSON in ``custos.http.convert``)
and names its own fields; the rules and limits themselves are these, so both answer the same request alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from custos.flows.errors import InvalidArgument

MAX_ID_CHARS = 256
MAX_STOP_SEQUENCES = 8
MAX_STOP_CHARS = 64
# The purpose goes into audit records verbatim, so it must be a label, never free text (or personal data).
PURPOSE_PATTERN = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
PURPOSE_RULE = "must be a label: 1..64 of a-z, 0-9, '_', '.', '-', starting with a letter"
MAX_BLOCK_TYPES = 32
ENTITY_TYPE_PATTERN = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
#: Sampling ranges: temperature in [0, 2], top_p in (0, 1].
MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class RequestLimits:
    """Request-shape limits from the settings."""

    max_new_tokens_limit: int
    default_max_new_tokens: int
    max_prompt_chars: int
    max_messages: int


def check_id(value: str, field: str, *, required: bool) -> None:
    """An identifier (conversation, subject, task, key): printable, at most :data:`MAX_ID_CHARS`."""
    if not value:
        if required:
            raise InvalidArgument(field, "required")
        return
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgument(field, f"longer than {MAX_ID_CHARS} characters")
    if not value.isprintable():
        raise InvalidArgument(field, "contains control characters")
