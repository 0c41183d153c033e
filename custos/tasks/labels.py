"""Label sets for Classify and their calibration.

A label set (intents, sentiments, a next-best-action catalogue) is a TOML file: an id, a version, the
zero-shot prompt whose continuation each label is scored as, and the labels (name, the text the model
scores, keywords for the keyword baseline). A label set may carry calibration parameters fitted on a
labelled calibration set (``custos eval calibrate``): a temperature and a per-label bias (prior
correction). Label sets passed ad hoc in a request have none, and their answers say ``calibrated=false``;
their labels are caller text, so the model scores them anonymized and the audit record holds digests only.
"""

from __future__ import annotations

import math
import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from custos.tasks.templates import TemplateError, bundled_files, canonical_sha256, directory_files

AD_HOC = "ad-hoc"
#: Zero-shot prompt of ad hoc label sets; short, so the shared prefix stays well under 64 tokens.
AD_HOC_PROMPT = "Customer message: ${message}\nThe message is about:"
MAX_LABELS = 64
MAX_LABEL_CHARS = 64


@dataclass(frozen=True)
class Label:
    """One label: its name (what Classify returns), the text the model scores, baseline keywords."""

    name: str
    text: str
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class Calibration:
    """``p(label) ∝ exp(score / temperature + bias[label])``: temperature scaling plus prior correction."""

    temperature: float = 1.0
    bias: Mapping[str, float] = field(default_factory=dict)

    def to_audit(self) -> dict[str, object]:
        """The parameters, for the audit record."""
        return {"temperature": self.temperature, "bias": dict(sorted(self.bias.items()))}


def softmax(values: Sequence[float]) -> list[float]:
    """Probabilities from log-scores (numerically stable); they sum to 1."""
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def distribution(
    scores: Sequence[float], names: Sequence[str], calibration: Calibration | None
) -> list[float]:
    """The probability of each label from its log-likelihood score, calibrated when parameters exist."""
    if calibration is None:
        return softmax(scores)
    return softmax(
        [
            s / calibration.temperature + calibration.bias.get(n, 0.0)
            for s, n in zip(scores, names, strict=True)
        ]
    )


def fit_calibration(
    scores: Sequence[Sequence[float]],
    gold: Sequence[int],
    names: Sequence[str],
    *,
    steps: int = 500,
    learning_rate: float = 0.1,
) -> Calibration:
    """Fit temperature and per-label bias by minimising the negative log-likelihood of ``gold``.

    Plain gradient descent on (log temperature, biases) over the calibration set; deterministic. The
    biases are centred (a shared offset does not change a softmax).
    """
    import numpy as np

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(gold, dtype=np.int64)
    if s.ndim != 2 or len(s) != len(y) or s.shape[1] != len(names) or len(y) == 0:
        raise ValueError("scores must be one row per example with one column per label")
    onehot = np.eye(s.shape[1])[y]
    log_t = 0.0
    bias = np.zeros(s.shape[1])
    for _ in range(steps):
        t = math.exp(log_t)
        z = s / t + bias
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        diff = (p - onehot) / len(y)  # d NLL / d z
        grad_bias = diff.sum(axis=0)
        grad_log_t = float((diff * (-s / t)).sum())
        bias -= learning_rate * grad_bias * s.shape[1]
        log_t -= learning_rate * grad_log_t
        log_t = min(max(log_t, -5.0), 5.0)
    bias -= bias.mean()
    return Calibration(
        temperature=math.exp(log_t), bias={n: float(b) for n, b in zip(names, bias, strict=True)}
    )


@dataclass(frozen=True)
class LabelSet:
    """A set of labels scored as continuations of one zero-shot prompt."""

    id: str
    version: int
    prompt: str
    labels: tuple[Label, ...]
    calibration: Calibration | None = None
    sha256: str = ""

    def __post_init__(self) -> None:
        if not 2 <= len(self.labels) <= MAX_LABELS:
            raise TemplateError(f"{self.id}: labels", f"must hold 2..{MAX_LABELS} labels")
        names = [label.name for label in self.labels]
        if len(set(names)) != len(names):
            raise TemplateError(f"{self.id}: labels", "names must be unique")
        if "message" not in {m.group("named") or m.group("braced") for m in _pattern(self.prompt)}:
            raise TemplateError(f"{self.id}: prompt", "must contain ${message}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str) -> LabelSet:
        """Validate a parsed TOML label set; errors name the file and the field."""
        labels = []
        for index, entry in enumerate(data.get("labels", ())):
            name, text = entry.get("name"), entry.get("text", entry.get("name"))
            if not isinstance(name, str) or not name or not isinstance(text, str) or not text.strip():
                raise TemplateError(f"{source}: labels[{index}]", "needs a name and a text")
            labels.append(Label(name, text, tuple(str(k).lower() for k in entry.get("keywords", ()))))
        calibration = None
        if "calibration" in data:
            raw = data["calibration"]
            temperature = float(raw.get("temperature", 1.0))
            if not temperature > 0:
                raise TemplateError(f"{source}: calibration.temperature", "must be positive")
            calibration = Calibration(temperature, {str(k): float(v) for k, v in raw.get("bias", {}).items()})
        version = data.get("version")
        if not isinstance(version, int) or version < 1:
            raise TemplateError(f"{source}: version", "must be a positive integer")
        return cls(
            id=str(data.get("id", "")),
            version=version,
            prompt=str(data.get("prompt", "")),
            labels=tuple(labels),
            calibration=calibration,
            sha256=canonical_sha256(dict(data)),
        )

    @classmethod
    def ad_hoc(cls, names: Sequence[str], texts: Sequence[str] | None = None) -> LabelSet:
        """A label set from a request; never calibrated.

        Each name is also the scored text, unless ``texts`` gives the scored texts (a request's labels are
        caller text: the Classify flow passes them anonymized, and the model scores those).
        """
        scored = list(names) if texts is None else list(texts)
        if len(scored) != len(names):
            raise ValueError("give one scored text per label name")
        labels = tuple(Label(n, t) for n, t in zip(names, scored, strict=True))
        return cls(
            id=AD_HOC,
            version=1,
            prompt=AD_HOC_PROMPT,
            labels=labels,
            sha256=canonical_sha256({"prompt": AD_HOC_PROMPT, "labels": scored}),
        )

    @property
    def names(self) -> list[str]:
        """Label names in order."""
        return [label.name for label in self.labels]

    def prefix(self, message: str) -> str:
        """The shared prompt every label continues (``message`` already anonymized)."""
        return string.Template(self.prompt).safe_substitute(message=" ".join(message.split()))

    def continuations(self) -> list[str]:
        """What the model scores after the prefix: each label's text with a leading space."""
        return [" " + label.text.strip() for label in self.labels]

    def to_audit(self) -> dict[str, object]:
        """Id, version and hash, plus whether calibration parameters were applied."""
        return {
            "id": self.id,
            "version": self.version,
            "sha256": self.sha256,
            "calibrated": self.calibration is not None,
        }

    def with_calibration(self, calibration: Calibration | None) -> LabelSet:
        """The same labels with other calibration parameters (for evaluation)."""
        return LabelSet(self.id, self.version, self.prompt, self.labels, calibration, self.sha256)


def _pattern(text: str) -> Any:
    return string.Template.pattern.finditer(text)


class LabelSetRegistry:
    """Configured label sets by id: bundled ones, replaced or extended by the operator's directory."""

    def __init__(self, label_sets: Mapping[str, LabelSet]) -> None:
        self._sets = MappingProxyType(dict(label_sets))

    @classmethod
    def load(cls, override_dir: Path | None = None) -> LabelSetRegistry:
        """Bundled label sets, then the override directory's (same id replaces the bundled one)."""
        found: dict[str, LabelSet] = {}
        for files in (bundled_files("labelsets"), directory_files(override_dir)):
            for name, data in sorted(files):
                try:
                    parsed = tomllib.loads(data.decode("utf-8"))
                except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                    raise TemplateError(name, f"not valid TOML ({exc})") from None
                label_set = LabelSet.from_mapping(parsed, source=name)
                found[label_set.id] = label_set
        return cls(found)

    def get(self, label_set_id: str) -> LabelSet:
        """The label set ``label_set_id``; TemplateError naming the field ``label_set`` when unknown."""
        try:
            return self._sets[label_set_id]
        except KeyError:
            raise TemplateError("label_set", f"unknown label set; known: {sorted(self._sets)}") from None

    @property
    def ids(self) -> list[str]:
        """Every label set id, sorted."""
        return sorted(self._sets)
