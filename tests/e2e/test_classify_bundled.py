"""Classify with the real bundled model on the bundled intent set, beside both baselines (slow)."""

from __future__ import annotations

import pytest

from custos.privacy.analyzer import build_analyzer
from custos.privacy.pseudonymize import Pseudonymizer
from custos.server.engine.hf import TransformersEngine
from custos.tasks.eval import CLASSIFY, CLASSIFY_CALIBRATED, bundled_dataset, evaluate, load_examples
from custos.tasks.labels import LabelSetRegistry

pytestmark = pytest.mark.e2e


@pytest.mark.xfail(
    strict=True,
    reason="goal not met: zero-shot with the 270M base model, calibrated Classify reached accuracy 0.250 "
    "(macro-F1 0.237) against the keyword baseline's 0.667 on the first 120 messages (docs/tasks.md)",
)
def test_classify_beats_both_baselines_on_the_bundled_set(bundled_engine: TransformersEngine) -> None:
    pseudonymizer = Pseudonymizer(build_analyzer())
    intents = LabelSetRegistry.load().get("intents")

    def score(text: str) -> list[float]:
        anonymized = pseudonymizer.pseudonymize([text]).texts[0]
        return list(
            bundled_engine.score_continuations(intents.prefix(anonymized), intents.continuations()).logprobs
        )

    report = evaluate(load_examples(bundled_dataset()), intents, score)
    for result in report.results:
        print(
            f"{result.name}: accuracy {result.accuracy:.3f} "
            f"macro-F1 {result.macro_f1:.3f} ECE {result.ece:.3f}"
        )
    calibrated = report.result(CLASSIFY_CALIBRATED)
    baselines = [report.result("majority class"), report.result("keyword")]
    assert all(calibrated.accuracy > b.accuracy for b in baselines)
    assert all(calibrated.macro_f1 > b.macro_f1 for b in baselines)
    # Calibration fitted on the held-out fifth lowers the calibration error on the evaluation split.
    assert calibrated.ece < report.result(CLASSIFY).ece
