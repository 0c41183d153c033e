"""``custos bench auth-flood``: what unauthenticated calls cost the audit log.

Starts an in-process server (scripted engine, plaintext on loopback, data in a temporary directory), sends
``calls`` unauthenticated Generate calls over gRPC (half without credentials, half with a made-up token),
stops the server (which writes any aggregated tallies) and counts the ``denied`` records it left and the
refusals they account for. Run it on two revisions to compare them; it needs nothing the older revision
lacks.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

FAKE_TOKEN = f"{'0' * 16}.{'x' * 43}"


@dataclass
class FloodResult:
    """What a flood of unauthenticated calls left behind."""

    calls: int
    seconds: float
    codes: Counter[str] = field(default_factory=Counter)
    denied_records: int = 0
    refusals_recorded: int = 0
    all_records: int = 0


def run_flood(calls: int) -> FloodResult:
    """Send ``calls`` unauthenticated calls to a fresh server; count the records once it has stopped."""
    from custos.privacy.analyzer import build_analyzer
    from custos.testing.builders import generate_request
    from custos.testing.server import ScriptedEngine, make_server

    payload = generate_request("Where is my parcel?").SerializeToString()
    with tempfile.TemporaryDirectory(prefix="custos-auth-flood-") as tmp:
        harness = make_server(Path(tmp), build_analyzer(), ScriptedEngine("Hello."), plaintext=True)
        with harness:
            before = len(harness.rows("SELECT seq FROM audit_records"))
            channel = grpc.insecure_channel(harness.target)
            method = channel.unary_unary(
                "/custos.v1.Inference/Generate", request_serializer=None, response_deserializer=None
            )
            result = FloodResult(calls=calls, seconds=0.0)
            started = time.perf_counter()
            for i in range(calls):
                metadata = (("authorization", f"Bearer {FAKE_TOKEN}"),) if i % 2 else None
                try:
                    method(payload, metadata=metadata, timeout=30)
                    result.codes["OK"] += 1
                except grpc.RpcError as err:
                    result.codes[err.code().name] += 1
            result.seconds = time.perf_counter() - started
            channel.close()
        rows = harness.audit_rows("denied")
        result.all_records = len(harness.rows("SELECT seq FROM audit_records")) - before
    result.denied_records = len(rows)
    result.refusals_recorded = sum(int(r["payload"]["details"].get("count", 1)) for r in rows)
    return result


def format_flood_report(result: FloodResult) -> str:
    """A small table."""
    codes = ", ".join(f"{code} {n}" for code, n in sorted(result.codes.items()))
    lines = [
        f"{'unauthenticated calls':<34}{result.calls:>10}",
        f"{'answered':<34}{codes}",
        f"{'seconds':<34}{result.seconds:>10.2f}",
        f"{'audit records written (all)':<34}{result.all_records:>10}",
        f"{'denied records written':<34}{result.denied_records:>10}",
        f"{'refusals they account for':<34}{result.refusals_recorded:>10}",
    ]
    return "\n".join(lines)
