"""Turns at the shared analyzer: short work first, long messages in slices, deadlines, no stall.

The gate's order is checked with threads that wait on events (no timing); the stall test times a real
analysis of a 32,000-character pathological message against a 500-character one, with bounds generous
enough for a loaded 2-core machine (the goal, 2x solo + 50 ms, is measured by ``custos bench privacy``).
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time

import pytest
from presidio_analyzer import RecognizerResult

from custos.bench.privacy import generate_dataset, long_messages
from custos.flows.errors import DeadlineExceeded
from custos.flows.privacy_step import PrivacyRefusal, PrivacyStage
from custos.privacy.pseudonymize import Pseudonymizer, slice_bounds
from custos.privacy.scheduling import LONG, SHORT, AnalysisGate, TurnDeadline, Unshared


def _wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_the_next_turn_goes_to_short_work_then_first_come_first_served() -> None:
    gate = AnalysisGate()
    order: list[str] = []
    release = threading.Event()

    def holder() -> None:
        with gate.turn(LONG):
            order.append("holder")
            release.wait(10)

    def waiter(name: str, priority: int) -> None:
        with gate.turn(priority):
            order.append(name)

    first = threading.Thread(target=holder)
    first.start()
    _wait_for(lambda: order == ["holder"])
    threads = []
    for name, priority in (("long-1", LONG), ("short-1", SHORT), ("long-2", LONG), ("short-2", SHORT)):
        thread = threading.Thread(target=waiter, args=(name, priority))
        thread.start()
        threads.append(thread)
        queued = len(threads)
        _wait_for(lambda: len(gate._queue) == queued)  # noqa: B023 (called here) queued in this order
    release.set()
    for thread in (first, *threads):
        thread.join(10)
    assert order == ["holder", "short-1", "short-2", "long-1", "long-2"]
    assert gate.turns == {SHORT: 2, LONG: 3}


def test_a_turn_not_granted_by_the_deadline_raises_and_leaves_the_queue() -> None:
    gate = AnalysisGate()
    release = threading.Event()

    def holder() -> None:
        with gate.turn(LONG):
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    _wait_for(lambda: gate._held)
    started = time.monotonic()
    with pytest.raises(TurnDeadline), gate.turn(SHORT, deadline=started + 0.05):
        pytest.fail("the turn must not be granted while another holds the analyzer")
    assert time.monotonic() - started < 5
    assert gate._queue == []  # the expired waiter does not block the ones after it
    release.set()
    thread.join(10)
    with gate.turn(LONG, deadline=time.monotonic() + 5):
        assert gate._held
    with pytest.raises(TurnDeadline), Unshared().turn(SHORT, deadline=time.monotonic() - 1):
        pytest.fail("a passed deadline is refused even without sharing")


@pytest.mark.parametrize(
    "text",
    [
        "word " * 2000,
        "x" * 5003,  # no whitespace at all: cut where it must be
        ("Anna Berg wrote to anna@example.com about order 4711. " * 120) + "end",
    ],
    ids=["words", "unbroken", "sentences"],
)
def test_slices_are_bounded_cover_the_text_and_overlap(text: str) -> None:
    size, overlap = 1000, 256
    bounds = slice_bounds(text, size, overlap)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(text)
    for start, end in bounds:
        assert 0 < end - start <= size
    for (start, end), (next_start, next_end) in itertools.pairwise(bounds):
        assert next_start > start and next_end > end
        assert end - next_start >= overlap  # any value up to ``overlap`` long lies whole in one slice
    if " " in text:
        assert all(text[end] == " " for _, end in bounds[:-1])  # cut between words
    assert slice_bounds("short text", size, overlap) == [(0, 10)]
    with pytest.raises(ValueError, match="overlap"):
        slice_bounds(text, 300, 256)


def test_a_long_message_analysed_in_slices_masks_every_value_at_every_slice_edge(
    pseudonymizer: Pseudonymizer,
) -> None:
    """Values placed across each slice boundary are masked as in a short message."""
    filler = "The delivery was late again and nobody answered the phone line. "
    values = [
        "jane.doe@example.com",
        "4111 1111 1111 1111",
        "DE44 5001 0517 5407 3249 31",
        "+44 20 7946 0958",
    ]
    text = filler * 18
    placed: list[tuple[int, int]] = []
    while len(text) < 12_000:
        value = values[len(placed) % len(values)]
        start = len(text)
        text += value + " " + filler + filler[: len(placed) * 13 % 60] + " "
        placed.append((start, start + len(value)))
    bounds = slice_bounds(text, Pseudonymizer.CHUNK_CHARS, Pseudonymizer.CHUNK_OVERLAP)
    assert len(bounds) > 10
    # Some values straddle a slice's end (whole only in the next slice), some a slice's start.
    assert [v for v in placed if any(v[0] < end < v[1] for _, end in bounds[:-1])]
    assert [v for v in placed if any(v[0] < start < v[1] for start, _ in bounds[1:])]
    analysis = pseudonymizer.analyze([text])
    spans = analysis.spans[0]
    for start, end in placed:
        assert any(s.start <= start and end <= s.end for s in spans), text[start:end]
    short = pseudonymizer.analyze([text[placed[0][0] - 30 : placed[0][1] + 30]]).spans[0]
    assert [s.winner.entity_type for s in short] == [spans[0].winner.entity_type]
    # The same value found in two overlapping slices is one finding, not two merged ones.
    for span in spans:
        keys = [_key(r) for r in (span.winner, *span.others)]
        assert len(keys) == len(set(keys))
    assert len(spans) == len(placed)


def _key(result: RecognizerResult) -> tuple[int, int, str, object]:
    return (
        result.start,
        result.end,
        result.entity_type,
        (result.recognition_metadata or {}).get("recognizer_name"),
    )


def _short_message() -> str:
    return long_messages(generate_dataset(40, seed=3), count=5)[0].text


def _pathological(size: int) -> str:
    unit = "a at b dot "  # spelled separators: the normalising pass works hardest on these
    return (unit * (size // len(unit) + 1))[:size]


def test_a_pathological_32k_message_does_not_stall_a_concurrent_short_one(
    pseudonymizer: Pseudonymizer,
) -> None:
    stage = PrivacyStage(pseudonymizer)
    short, long = _short_message(), _pathological(32_000)
    assert 400 <= len(short) <= 700

    def timed() -> float:
        started = time.perf_counter()
        stage.run([short], "short")
        return time.perf_counter() - started

    for _ in range(2):
        timed()  # warm
    solo = statistics.median(timed() for _ in range(5))
    long_started = time.perf_counter()
    stage.run([long], "long")
    long_solo = time.perf_counter() - long_started
    assert long_solo > 10 * solo, "the long message must take far longer than the short one"

    done = threading.Event()
    worker = threading.Thread(target=lambda: (stage.run([long], "long"), done.set()))
    worker.start()
    time.sleep(min(0.3, long_solo / 4))  # the long one is being analysed
    concurrent = timed()
    long_still_running = not done.is_set()
    worker.join(60)
    assert long_still_running, "the short call must have been answered while the long one was analysed"
    # Goal 2x solo + 50 ms; with one serialised analysis the short call waits for the whole long one.
    assert concurrent < 3 * solo + 0.25, f"{concurrent:.3f} s vs {solo:.3f} s solo, long {long_solo:.2f} s"


def test_a_long_analysis_stops_at_the_callers_deadline(pseudonymizer: Pseudonymizer) -> None:
    stage = PrivacyStage(pseudonymizer)
    long = _pathological(32_000)
    started = time.monotonic()
    with pytest.raises(PrivacyRefusal) as refusal:
        stage.run([long], "long", deadline=started + 0.2)
    elapsed = time.monotonic() - started
    assert isinstance(refusal.value.error, DeadlineExceeded)
    assert refusal.value.error.status == "DEADLINE_EXCEEDED"
    assert refusal.value.details["privacy_policy"]["decision"] == "deadline_exceeded"
    assert "a at b" not in str(refusal.value.details) and "a at b" not in refusal.value.error.message
    assert elapsed < 2.0  # stopped at a slice, far short of the whole message
    stage.run([_short_message()], "short", deadline=time.monotonic() + 30)  # the analyzer is free again
