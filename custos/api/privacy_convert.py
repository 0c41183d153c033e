"""Protobuf <-> domain conversion for the privacy policy fields and the Privacy service."""

from __future__ import annotations

import re
from collections.abc import Sequence

from custos.flows.errors import InvalidArgument
from custos.flows.privacy_step import PrivacyMode
from custos.privacy.pseudonymize import Finding
from custos.v1 import common_pb2, privacy_pb2

MAX_BLOCK_TYPES = 32
_ENTITY_TYPE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_MODES: dict[int, PrivacyMode] = {
    common_pb2.PRIVACY_MODE_UNSPECIFIED: "mask",
    common_pb2.PRIVACY_MODE_MASK: "mask",
    common_pb2.PRIVACY_MODE_BLOCK: "block",
}


def privacy_policy_from_pb(
    mode: int, block_types: Sequence[str], *, prefix: str = ""
) -> tuple[PrivacyMode, tuple[str, ...]]:
    """Validate the policy fields of a request; field names in errors carry ``prefix``."""
    resolved = _MODES.get(mode)
    if resolved is None:
        raise InvalidArgument(f"{prefix}privacy_mode", "must be PRIVACY_MODE_MASK or PRIVACY_MODE_BLOCK")
    if len(block_types) > MAX_BLOCK_TYPES:
        raise InvalidArgument(f"{prefix}block_entity_types", f"at most {MAX_BLOCK_TYPES} entries")
    for index, entity_type in enumerate(block_types):
        if not _ENTITY_TYPE.fullmatch(entity_type):
            raise InvalidArgument(
                f"{prefix}block_entity_types[{index}]",
                "must be an upper-case entity type such as CREDIT_CARD",
            )
    if block_types and resolved != "block":
        raise InvalidArgument(f"{prefix}block_entity_types", "only allowed with PRIVACY_MODE_BLOCK")
    return resolved, tuple(block_types)


def finding_to_pb(finding: Finding) -> privacy_pb2.PiiFinding:
    """A finding without its value."""
    return privacy_pb2.PiiFinding(
        message_index=finding.message_index,
        entity_type=finding.entity_type,
        start=finding.start,
        end=finding.end,
        score=finding.score,
        recognizer=finding.recognizer,
        placeholder=finding.placeholder,
    )
