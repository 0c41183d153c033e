"""Evaluation of Classify on a labelled JSONL set, beside a majority-class and a keyword baseline.

Every system is judged on the same evaluation split: accuracy, macro-F1, the confusion matrix and the
expected calibration error (ECE) of its top-label confidence. One fifth of the set (every fifth line) is
held out as the calibration split: the majority baseline learns its class there, and Classify's
temperature and prior correction are fitted there, so nothing is tuned on the evaluation split.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from custos.tasks.labels import Calibration, LabelSet, distribution, fit_calibration

#: Log-likelihood scores of every label (in label-set order) for one message.
ScoreFn = Callable[[str], Sequence[float]]
BUNDLED_SET = "customer_intents.jsonl"
ECE_BINS = 10


class EvalDataError(ValueError):
    """The labelled file is malformed; the message names the line."""


@dataclass(frozen=True)
class Example:
    """One labelled message."""

    text: str
    label: str


def bundled_dataset() -> Path:
    """The labelled customer-intent set shipped with Custos."""
    return Path(str(resources.files("custos.tasks").joinpath("data", BUNDLED_SET)))


def load_examples(path: Path) -> list[Example]:
    """Read ``{"text": ..., "label": ...}`` lines; blank lines are skipped."""
    examples: list[Example] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise EvalDataError(f"{path}:{number}: not JSON") from None
            if (
                not isinstance(row, dict)
                or not isinstance(row.get("text"), str)
                or not isinstance(row.get("label"), str)
            ):
                raise EvalDataError(f"{path}:{number}: needs string fields 'text' and 'label'")
            examples.append(Example(row["text"], row["label"]))
    if not examples:
        raise EvalDataError(f"{path}: no examples")
    return examples


# ---- metrics ------------------------------------------------------------------------------------


def accuracy(gold: Sequence[str], predicted: Sequence[str]) -> float:
    """Share of exact matches."""
    if len(gold) != len(predicted) or not gold:
        raise ValueError("gold and predicted must be non-empty and of equal length")
    return sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold)


def confusion_matrix(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """``matrix[i][j]``: examples of gold label ``labels[i]`` predicted as ``labels[j]``."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        matrix[index[g]][index[p]] += 1
    return matrix


def macro_f1(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean of per-label F1 over the labels that occur in ``gold`` or ``predicted``."""
    present = [label for label in labels if label in set(gold) | set(predicted)]
    scores = []
    for label in present:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted, strict=True))
        fp = sum(g != label and p == label for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == label and p != label for g, p in zip(gold, predicted, strict=True))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin: (low, high], how many predictions, their accuracy and mean confidence."""

    low: float
    high: float
    count: int
    accuracy: float
    confidence: float


def reliability_bins(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS
) -> list[ReliabilityBin]:
    """Equal-width bins over [0, 1]; a confidence of exactly 0 falls in the first bin."""
    result = []
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = [
            (c, ok)
            for c, ok in zip(confidences, correct, strict=True)
            if (low < c <= high) or (b == 0 and c == 0.0)
        ]
        if members:
            acc = sum(ok for _, ok in members) / len(members)
            conf = sum(c for c, _ in members) / len(members)
        else:
            acc = conf = 0.0
        result.append(ReliabilityBin(low, high, len(members), acc, conf))
    return result


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS
) -> float:
    """Sum over bins of |accuracy - mean confidence| weighted by the bin's share of predictions."""
    total = len(confidences)
    if total == 0:
        raise ValueError("no predictions")
    return sum(
        abs(b.accuracy - b.confidence) * b.count / total for b in reliability_bins(confidences, correct, bins)
    )


# ---- systems ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Predictions:
    """One system's answers on the evaluation split."""

    name: str
    labels: list[str]
    confidences: list[float]
    seconds: list[float] = field(default_factory=list)


def majority_baseline(train: Sequence[Example], test: Sequence[Example]) -> Predictions:
    """Always the most frequent training label, with its training frequency as confidence."""
    counts = Counter(e.label for e in train)
    label, count = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    share = count / len(train)
    return Predictions("majority class", [label] * len(test), [share] * len(test))


def keyword_baseline(label_set: LabelSet, train: Sequence[Example], test: Sequence[Example]) -> Predictions:
    """The label whose keywords occur most often (ties: label-set order); no hit: the majority label."""
    fallback = majority_baseline(train, test[:1])
    labels, confidences = [], []
    for example in test:
        text = example.text.lower()
        hits = [sum(text.count(k) for k in label.keywords) for label in label_set.labels]
        if max(hits) == 0:
            labels.append(fallback.labels[0])
            confidences.append(fallback.confidences[0])
            continue
        best = max(range(len(hits)), key=lambda i: (hits[i], -i))
        labels.append(label_set.labels[best].name)
        confidences.append(hits[best] / sum(hits))
    return Predictions("keyword", labels, confidences)


def _classify(
    name: str, label_set: LabelSet, scores: Sequence[Sequence[float]], calibration: Calibration | None
) -> Predictions:
    labels, confidences = [], []
    for row in scores:
        probs = distribution(row, label_set.names, calibration)
        best = max(range(len(probs)), key=lambda i: probs[i])
        labels.append(label_set.names[best])
        confidences.append(probs[best])
    return Predictions(name, labels, confidences)


@dataclass(frozen=True)
class SystemResult:
    """Metrics of one system on the evaluation split."""

    name: str
    accuracy: float
    macro_f1: float
    ece: float
    predictions: Predictions


@dataclass(frozen=True)
class EvalReport:
    """Everything ``custos eval`` prints and plots."""

    labels: list[str]
    gold: list[str]
    results: list[SystemResult]
    calibration: Calibration
    calibration_examples: int
    latency_p50_ms: float
    prefix_tokens_p50: float | None = None

    def result(self, name: str) -> SystemResult:
        """The result of the system called ``name``."""
        return next(r for r in self.results if r.name == name)

    def confusion(self, name: str) -> list[list[int]]:
        """The confusion matrix of system ``name``."""
        return confusion_matrix(self.gold, self.result(name).predictions.labels, self.labels)


CLASSIFY = "classify"
CLASSIFY_CALIBRATED = "classify (calibrated)"


def split(examples: Sequence[Example], every: int = 5) -> tuple[list[Example], list[Example]]:
    """(calibration split: every ``every``-th example, evaluation split: the rest)."""
    calibration = [e for i, e in enumerate(examples) if i % every == 0]
    evaluation = [e for i, e in enumerate(examples) if i % every != 0]
    return calibration, evaluation


def evaluate(
    examples: Sequence[Example],
    label_set: LabelSet,
    score: ScoreFn,
    *,
    calibration_every: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Run the baselines and Classify (raw and calibrated on the calibration split) on the same split."""
    unknown = sorted({e.label for e in examples} - set(label_set.names))
    if unknown:
        raise EvalDataError(f"labels not in label set {label_set.id!r}: {unknown}")
    calibration_split, evaluation_split = split(examples, calibration_every)
    if not calibration_split or not evaluation_split:
        raise EvalDataError("too few examples to hold out a calibration split")
    everything = [*calibration_split, *evaluation_split]
    scores: list[Sequence[float]] = []
    seconds: list[float] = []
    for done, example in enumerate(everything, start=1):
        started = time.perf_counter()
        scores.append(score(example.text))
        seconds.append(time.perf_counter() - started)
        if progress is not None:
            progress(done, len(everything))
    calibration_scores = scores[: len(calibration_split)]
    evaluation_scores = scores[len(calibration_split) :]
    index = {name: i for i, name in enumerate(label_set.names)}
    fitted = fit_calibration(calibration_scores, [index[e.label] for e in calibration_split], label_set.names)
    systems = [
        majority_baseline(calibration_split, evaluation_split),
        keyword_baseline(label_set, calibration_split, evaluation_split),
        _classify(CLASSIFY, label_set, evaluation_scores, None),
        _classify(CLASSIFY_CALIBRATED, label_set, evaluation_scores, fitted),
    ]
    gold = [e.label for e in evaluation_split]
    results = []
    for system in systems:
        correct = [g == p for g, p in zip(gold, system.labels, strict=True)]
        results.append(
            SystemResult(
                name=system.name,
                accuracy=accuracy(gold, system.labels),
                macro_f1=macro_f1(gold, system.labels, label_set.names),
                ece=expected_calibration_error(system.confidences, correct),
                predictions=system,
            )
        )
    return EvalReport(
        labels=label_set.names,
        gold=gold,
        results=results,
        calibration=fitted,
        calibration_examples=len(calibration_split),
        latency_p50_ms=statistics.median(seconds) * 1000,
    )


def calibrate(
    examples: Sequence[Example],
    label_set: LabelSet,
    score: ScoreFn,
    *,
    calibration_every: int = 5,
) -> tuple[Calibration, int]:
    """Fit the label set's calibration on the calibration split only (the messages ``evaluate`` holds out).

    Returns the parameters and how many messages they were fitted on. Scoring only that split keeps the
    evaluation split unseen, so ``evaluate`` still judges a label set that ships these parameters fairly.
    """
    unknown = sorted({e.label for e in examples} - set(label_set.names))
    if unknown:
        raise EvalDataError(f"labels not in label set {label_set.id!r}: {unknown}")
    calibration_split, _ = split(examples, calibration_every)
    if not calibration_split:
        raise EvalDataError("too few examples to hold out a calibration split")
    index = {name: i for i, name in enumerate(label_set.names)}
    scores = [score(e.text) for e in calibration_split]
    fitted = fit_calibration(scores, [index[e.label] for e in calibration_split], label_set.names)
    return fitted, len(calibration_split)


def calibration_toml(calibration: Calibration) -> str:
    """The ``[calibration]`` table of a label-set file holding ``calibration``."""
    bias = ", ".join(f"{name} = {value:.4f}" for name, value in calibration.bias.items())
    return f"[calibration]\ntemperature = {calibration.temperature:.4f}\nbias = {{ {bias} }}\n"


def write_plots(report: EvalReport, directory: Path, *, system: str = CLASSIFY_CALIBRATED) -> list[Path]:
    """Confusion matrix and reliability diagram of ``system`` as PNG files (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    matrix = report.confusion(system)
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(report.labels)), report.labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(report.labels)), report.labels, fontsize=8)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(f"Confusion matrix: {system}")
    fig.tight_layout()
    path = directory / "confusion_matrix.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for result in report.results:
        correct = [g == p for g, p in zip(report.gold, result.predictions.labels, strict=True)]
        bins = [b for b in reliability_bins(result.predictions.confidences, correct) if b.count]
        ax.plot([b.confidence for b in bins], [b.accuracy for b in bins], marker="o", label=result.name)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = directory / "reliability.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written
