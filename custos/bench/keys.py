"""``custos bench keys``: what sealing one transcript costs, per step of the key hierarchy, in µs."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from custos.audit.db import default_sqlite_url, make_engine, migrate
from custos.privacy.envelope import open_sealed, seal
from custos.privacy.keys import FileKeyProvider, MasterKeyProvider
from custos.privacy.subject_keys import SubjectKeyStore
from custos.privacy.transcripts import open_transcript, seal_transcript, transcript_aad


def _median_us(fn: Callable[[int], object], repeat: int) -> float:
    samples = []
    for i in range(repeat):
        started = time.perf_counter_ns()
        fn(i)
        samples.append(time.perf_counter_ns() - started)
    return statistics.median(samples) / 1000


def run(
    *, transcript_bytes: int = 4096, repeat: int = 2000, keys: MasterKeyProvider | None = None
) -> list[tuple[str, float]]:
    """Median microseconds of each step for a transcript of ``transcript_bytes`` (SQLite for the key rows)."""
    keys = keys if keys is not None else FileKeyProvider.generate()
    plaintext = os.urandom(transcript_bytes // 2).hex().encode()[:transcript_bytes]
    with tempfile.TemporaryDirectory(prefix="custos-bench-keys-") as scratch:
        engine = make_engine(default_sqlite_url(Path(scratch)))
        migrate(engine)
        store = SubjectKeyStore(engine, keys)
        subject = store.get_or_create("subject-warm")
        wrapped_subject = keys.wrap(keys.current_version, subject.key)
        v1 = seal(plaintext, aad=transcript_aad("t", "c"), keys=keys)
        v2 = seal_transcript(plaintext, transcript_id="t", subject_key=subject)
        rows = [
            (
                "format 1: seal (data key wrapped by master key)",
                lambda i: seal(plaintext, aad=b"a", keys=keys),
            ),
            (
                "format 2: seal with an unwrapped subject key",
                lambda i: seal_transcript(plaintext, transcript_id="t", subject_key=subject),
            ),
            (
                "format 2: unwrap subject key + seal (key wrapping + encryption)",
                lambda i: (
                    keys.unwrap(keys.current_version, wrapped_subject),
                    seal_transcript(plaintext, transcript_id="t", subject_key=subject),
                ),
            ),
            ("subject key lookup in SQLite + unwrap", lambda i: store.get("subject-warm")),
            ("new subject: create, wrap and insert its key", lambda i: store.get_or_create(f"subject-{i}")),
            ("format 1: open", lambda i: open_sealed(v1, aad=transcript_aad("t", "c"), keys=keys)),
            (
                "format 2: open (lookup + unwrap + decrypt)",
                lambda i: open_transcript(
                    v2,
                    transcript_id="t",
                    conversation_ref="c",
                    subject_ref="subject-warm",
                    keys=keys,
                    subject_keys=store,
                ),
            ),
        ]
        result = [(name, _median_us(fn, repeat)) for name, fn in rows]
        engine.dispose()
    return result


def render(rows: list[tuple[str, float]], *, transcript_bytes: int, repeat: int) -> str:
    """A plain-text table."""
    width = max(len(name) for name, _ in rows)
    lines = [f"transcript {transcript_bytes} bytes, median of {repeat} runs", f"{'step':<{width}}  µs"]
    lines += [f"{name:<{width}}  {us:8.1f}" for name, us in rows]
    return "\n".join(lines)
