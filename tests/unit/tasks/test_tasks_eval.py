"""Evaluation metrics against a small case computed by hand, the baselines and the plots."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from custos.tasks.eval import (
    Example,
    accuracy,
    bundled_dataset,
    calibrate,
    calibration_toml,
    confusion_matrix,
    evaluate,
    expected_calibration_error,
    keyword_baseline,
    load_examples,
    macro_f1,
    majority_baseline,
    write_plots,
)
from custos.tasks.labels import Label, LabelSet, LabelSetRegistry

GOLD = ["a", "a", "a", "b", "b", "c"]
PRED = ["a", "a", "b", "b", "c", "c"]


def test_metrics_match_the_hand_computed_case() -> None:
    # Correct: 1, 2, 4, 6 -> 4/6.
    assert accuracy(GOLD, PRED) == pytest.approx(4 / 6)
    assert confusion_matrix(GOLD, PRED, ["a", "b", "c"]) == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # F1: a: tp2 fp0 fn1 -> 4/5; b: tp1 fp1 fn1 -> 1/2; c: tp1 fp1 fn0 -> 2/3.
    assert macro_f1(GOLD, PRED, ["a", "b", "c"]) == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)


def test_expected_calibration_error_hand_computed() -> None:
    # Bin (0.8, 0.9]: confidences 0.9, 0.9, accuracy 1/2 -> |0.5 - 0.9| * 2/4.
    # Bin (0.5, 0.6]: confidences 0.6, 0.6, accuracy 2/2 -> |1 - 0.6| * 2/4.
    ece = expected_calibration_error([0.9, 0.9, 0.6, 0.6], [True, False, True, True])
    assert ece == pytest.approx(0.4 * 0.5 + 0.4 * 0.5)
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0


LABELS = LabelSet(
    id="t",
    version=1,
    prompt="${message}",
    labels=(Label("refund", "refund", ("money back",)), Label("track", "track", ("where is",))),
)


def test_baselines() -> None:
    train = [Example("x", "track"), Example("y", "track"), Example("z", "refund")]
    test = [Example("I want my money back", "refund"), Example("hello", "refund")]
    majority = majority_baseline(train, test)
    assert majority.labels == ["track", "track"] and majority.confidences == [pytest.approx(2 / 3)] * 2
    keyword = keyword_baseline(LABELS, train, test)
    assert keyword.labels == ["refund", "track"]  # no keyword: the majority label
    assert keyword.confidences[0] == 1.0


def test_evaluate_runs_all_systems_on_the_same_split() -> None:
    examples = [
        Example(f"where is it {i}" if i % 2 else f"money back {i}", "track" if i % 2 else "refund")
        for i in range(20)
    ]

    def score(text: str) -> list[float]:  # a perfect "model"
        return [0.0, -3.0] if "money" in text else [-3.0, 0.0]

    report = evaluate(examples, LABELS, score)
    assert report.calibration_examples == 4 and len(report.gold) == 16
    names = [r.name for r in report.results]
    assert names == ["majority class", "keyword", "classify", "classify (calibrated)"]
    assert report.result("classify").accuracy == 1.0
    assert report.result("majority class").accuracy == pytest.approx(0.5)


def test_bundled_set_is_large_labelled_and_has_personal_data() -> None:
    examples = load_examples(bundled_dataset())
    labels = {e.label for e in examples}
    assert len(examples) >= 300 and len(labels) >= 10
    assert labels == set(LabelSetRegistry.load().get("intents").names)
    assert sum("@" in e.text for e in examples) >= 20  # e-mail addresses among other personal data


def test_bad_lines_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "hi", "label": "a"}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"d\.jsonl:2"):
        load_examples(path)


def test_plots_are_written_when_matplotlib_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    examples = [Example("money back", "refund"), Example("where is", "track")] * 5
    report = evaluate(examples, LABELS, lambda t: [0.0, -1.0] if "money" in t else [-1.0, 0.0])
    written = write_plots(report, tmp_path / "plots")
    assert [p.name for p in written] == ["confusion_matrix.png", "reliability.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_calibrate_scores_only_the_calibration_split_and_round_trips_as_toml() -> None:
    examples = [Example(f"message {i}", "track" if i % 4 else "refund") for i in range(20)]
    seen: list[str] = []

    def score(text: str) -> list[float]:  # a "model" that always prefers refund by 1 nat
        seen.append(text)
        return [0.0, -1.0]

    fitted, count = calibrate(examples, LABELS, score)
    # Every fifth message (0, 5, 10, 15): what evaluate holds out; the evaluation split is never scored.
    assert count == 4 and seen == ["message 0", "message 5", "message 10", "message 15"]
    # Gold there: refund, track, track, track; the bias moves probability towards the underrated track.
    assert fitted.bias["track"] > fitted.bias["refund"]
    parsed = LabelSet.from_mapping(
        {
            **tomllib.loads(calibration_toml(fitted)),
            "id": "t",
            "version": 1,
            "prompt": "${message}",
            "labels": [{"name": "refund"}, {"name": "track"}],
        },
        source="t.toml",
    )
    assert parsed.calibration is not None
    assert parsed.calibration.temperature == pytest.approx(fitted.temperature, abs=1e-4)
    assert parsed.calibration.bias == pytest.approx(fitted.bias, abs=1e-4)
