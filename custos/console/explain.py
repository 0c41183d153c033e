"""A record laid out for a person: what was redacted and how, which model with which parameters, how long.

Only what the record's payload already holds (the RPCs return the same payload): types, offsets, scores and
recognizers of findings, never a value; digests, never text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from custos.audit.checkpoints import Checkpoint
from custos.audit.events import StoredRecord
from custos.audit.incremental import VerifiedState
from custos.console.charts import bar_chart

#: Stages in the order a request passes them (others follow, as recorded).
STAGE_ORDER = ("privacy", "queue", "prefill", "decode", "guard", "transcript", "audit")


@dataclass(frozen=True)
class Finding:
    """One redacted span: its type, where, how sure, and who found it."""

    entity_type: str
    recognizer: str
    score: float
    start: int
    end: int
    message_index: int | None
    placeholder: str


@dataclass(frozen=True)
class ChainPosition:
    """Where a record sits in the chain and whether a recorded verification covers it."""

    seq: int
    covering_checkpoint: int | None  # number (1-based) of the first checkpoint at or after the record
    verified_through: int | None  # number of the checkpoint the last passed verification reached
    verified_seq: int | None
    verified_at: str | None
    checkpoints: int

    @property
    def verified(self) -> bool:
        """A passed verification reached a checkpoint at or after the record."""
        return self.verified_seq is not None and self.seq <= self.verified_seq


def chain_position(seq: int, checkpoints: Sequence[Checkpoint], state: VerifiedState | None) -> ChainPosition:
    """The record at ``seq`` against the effective checkpoints and the verified state."""
    covering = next((n for n, c in enumerate(checkpoints, start=1) if c.seq >= seq), None)
    through = None
    if state is not None:
        through = next((n for n, c in enumerate(checkpoints, start=1) if c.seq == state.seq), None)
    return ChainPosition(
        seq=seq,
        covering_checkpoint=covering,
        verified_through=through,
        verified_seq=state.seq if state is not None and through is not None else None,
        verified_at=state.verified_at if state is not None and through is not None else None,
        checkpoints=len(checkpoints),
    )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def findings_of(details: Mapping[str, Any]) -> list[Finding]:
    """The PII findings of a request record (the analyzer's output, without values)."""
    raw = _mapping(details.get("pii")).get("findings")
    out: list[Finding] = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, Mapping):
            continue
        out.append(
            Finding(
                entity_type=str(item.get("entity_type", "")),
                recognizer=str(item.get("recognizer", "")),
                score=float(item.get("score") or 0.0),
                start=int(item.get("start") or 0),
                end=int(item.get("end") or 0),
                message_index=item.get("message_index")
                if isinstance(item.get("message_index"), int)
                else None,
                placeholder=str(item.get("placeholder", "")),
            )
        )
    return out


def latency_stages(details: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(stage, milliseconds) from a completion record's ``latency_ms``, in pipeline order."""
    raw = _mapping(details.get("latency_ms"))
    stages = [
        (str(k), float(v)) for k, v in raw.items() if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    rank = {name: i for i, name in enumerate(STAGE_ORDER)}
    return sorted(stages, key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def latency_chart(details: Mapping[str, Any]) -> Markup:
    """The latency-by-stage bar chart (empty when the record has no timings)."""
    return bar_chart(latency_stages(details), unit="ms", title="Latency by stage")


def pretty_payload(record: StoredRecord) -> str:
    """The hashed payload, indented for reading (as the Get RPC returns it, byte for byte before indent)."""
    try:
        return json.dumps(json.loads(record.payload_json), indent=2, sort_keys=True, ensure_ascii=False)
    except ValueError:
        return record.payload_json


def explanation(record: StoredRecord) -> dict[str, Any]:
    """Everything the record page shows about ``record``, by section."""
    details = record.details
    model_info = dict(_mapping(details.get("model_info")))
    confidence = dict(_mapping(details.get("confidence")))
    return {
        "findings": findings_of(details),
        "counts": dict(_mapping(_mapping(details.get("pii")).get("counts"))),
        "model_info": model_info,
        "parameters": dict(_mapping(details.get("parameters"))),
        "confidence": confidence,
        "usage": dict(_mapping(details.get("usage"))),
        "finish_reason": details.get("finish_reason"),
        "latency": latency_stages(details),
        "latency_chart": latency_chart(details),
        "output_guard": dict(_mapping(details.get("output_guard"))),
        "transcript": dict(_mapping(details.get("transcript"))),
        "payload": pretty_payload(record),
    }
