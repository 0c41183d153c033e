"""Label sets, the probability distribution and its calibration."""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path

import pytest

from custos.tasks.eval import bundled_dataset, load_examples
from custos.tasks.labels import Calibration, LabelSet, LabelSetRegistry, distribution, fit_calibration


def test_bundled_label_sets() -> None:
    registry = LabelSetRegistry.load()
    assert registry.ids == ["intents", "next-best-action", "sentiment"]
    intents = registry.get("intents")
    assert len(intents.labels) == 12 and intents.calibration is not None
    assert set(intents.calibration.bias) == set(intents.names)
    assert intents.prefix("Where is  my\nparcel?").endswith("\n\nMessage: Where is my parcel?\nTopic:")
    assert all(c.startswith(" ") for c in intents.continuations())


def test_intents_few_shot_examples_are_not_messages_of_the_bundled_set() -> None:
    # The examples in the prompt are hand-written: none may be (nearly) a message the evaluation scores.
    intents = LabelSetRegistry.load().get("intents")
    head = intents.prompt.split("${message}")[0]
    examples = re.findall(r"^Message: (.+)$", head, flags=re.MULTILINE)
    answers = re.findall(r"^Topic: (.+)$", head, flags=re.MULTILINE)
    assert len(examples) == len(answers) == 2 * len(intents.labels)
    # Two examples per label, answered with the label's own text.
    assert sorted(answers) == sorted(2 * [label.text for label in intents.labels])
    messages = [e.text.lower() for e in load_examples(bundled_dataset())]
    for example in examples:
        closest = max(difflib.SequenceMatcher(None, example.lower(), m).ratio() for m in messages)
        assert closest < 0.6, example


@pytest.mark.parametrize("scores", [[-1.0, -2.0, -3.0], [-500.0, -501.0, -900.0], [0.0, 0.0]])
def test_distribution_sums_to_one(scores: list[float]) -> None:
    names = [f"l{i}" for i in range(len(scores))]
    probs = distribution(scores, names, None)
    assert math.isclose(sum(probs), 1.0)
    assert probs == sorted(probs, reverse=True)


def test_calibration_moves_probability_towards_the_label_the_model_underrates() -> None:
    # Crafted calibration set: the model always prefers "a" by 1 nat, but the gold label is "b" 3 times in 4.
    names = ["a", "b"]
    scores = [[-1.0, -2.0]] * 8
    gold = [1, 1, 1, 0, 1, 1, 1, 0]
    calibration = fit_calibration(scores, gold, names)
    raw = distribution([-1.0, -2.0], names, None)
    calibrated = distribution([-1.0, -2.0], names, calibration)
    assert raw[0] > 0.7  # uncalibrated: "a" wins
    assert calibrated[1] == pytest.approx(0.75, abs=0.02)  # prior-corrected to the observed frequency
    assert calibration.bias["b"] > calibration.bias["a"]


def test_temperature_softens_an_overconfident_model() -> None:
    # Right only 60 % of the time but 20 nats sure: the fitted temperature must flatten the distribution.
    names = ["a", "b"]
    scores = [[0.0, -20.0], [-20.0, 0.0]] * 5
    gold = [0, 1, 0, 1, 0, 1, 1, 0, 1, 0]  # 6 of 10 agree with the model's choice
    calibration = fit_calibration(scores, gold, names, steps=2000)
    assert calibration.temperature > 5
    top = max(distribution([0.0, -20.0], names, calibration))
    assert 0.5 < top < 0.8


def test_label_set_file_with_calibration(tmp_path: Path) -> None:
    (tmp_path / "tone.toml").write_text(
        'id = "tone"\nversion = 3\nprompt = "Text: ${message}\\nTone:"\n'
        '[[labels]]\nname = "warm"\n[[labels]]\nname = "cold"\n'
        "[calibration]\ntemperature = 2.0\nbias = { warm = 0.5, cold = -0.5 }\n"
    )
    label_set = LabelSetRegistry.load(tmp_path).get("tone")
    assert label_set.calibration == Calibration(2.0, {"warm": 0.5, "cold": -0.5})
    assert label_set.to_audit()["calibrated"] is True
    assert distribution([-1.0, -1.0], label_set.names, label_set.calibration)[0] == pytest.approx(
        1 / (1 + math.exp(-1.0))
    )


def test_ad_hoc_label_sets_are_uncalibrated() -> None:
    label_set = LabelSet.ad_hoc(["refund", "delivery"])
    assert label_set.calibration is None and label_set.to_audit()["calibrated"] is False
    assert label_set.continuations() == [" refund", " delivery"]
