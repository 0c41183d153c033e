"""Output guard: what the model wrote is checked before it leaves the server.

* Placeholders the model echoes are found in the spellings small models write (``<PERSON_1>``, ``<Person_1>``,
  ``<PERSON 1>``, bare ``PERSON_1``, ``<PERSON>`` when only one person is known) and written back in their
  canonical form, or restored to the value when re-identification is allowed for the request.
* A placeholder that maps to nothing (``<PERSON_7>`` when only one person was masked, or ``<PERSON>`` with two
  candidates) stays masked and is flagged: it is never guessed.
* Personal data the model produced that was not in the input (its invention, or a leak from training data)
  is masked as ``[ENTITY_TYPE]`` and counted. A detected value that *was* in the input (the model cannot
  have seen it, but may have produced it) is treated like its placeholder.

The guard works by position on one piece of text; ``custos.privacy.streaming`` feeds it pieces that no
placeholder or personal value straddles.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from custos.privacy.pseudonymize import PlaceholderMap

#: Placeholder spellings accepted from the model: ``<TYPE_N>`` in any case, with a space or underscore
#: before the number, the number optional (group 1: type words, group 2: number); or a bare upper-case
#: ``TYPE_N`` (groups 3 and 4), accepted only for configured entity types and not inside the guillemets
#: that neutralise placeholder-like user input.
TOLERANT_PLACEHOLDER = re.compile(
    r"<\s*([A-Za-z][A-Za-z]*(?:[ _][A-Za-z]+)*)(?:[ _]?([0-9]+))?\s*>"
    r"|(?<![A-Za-z0-9_\u2039])([A-Z][A-Z]*(?:_[A-Z]+)*)_([0-9]+)(?![A-Za-z0-9_\u203a])"
)


@dataclass(frozen=True)
class Detection:
    """A span of personal data found in text by a detector (no value, only where and what)."""

    entity_type: str
    start: int
    end: int
    score: float
    recognizer: str


#: Finds personal data in one piece of text; the pipeline passes the pseudonymizer's detector.
Detector = Callable[[str], Sequence[Detection]]


@dataclass
class GuardReport:
    """What the guard did to one answer: counts for the audit record and metrics; never values."""

    restored: int = 0
    kept_masked: int = 0
    unknown_placeholders: int = 0
    ambiguous_placeholders: int = 0
    variants_normalised: int = 0
    new_pii: Counter[str] = field(default_factory=Counter)
    input_values_echoed: int = 0
    new_pii_findings: list[dict[str, object]] = field(default_factory=list)

    def merge(self, other: GuardReport, *, offset: int = 0) -> None:
        """Add another report (of a later piece of the same answer, starting at ``offset``)."""
        self.restored += other.restored
        self.kept_masked += other.kept_masked
        self.unknown_placeholders += other.unknown_placeholders
        self.ambiguous_placeholders += other.ambiguous_placeholders
        self.variants_normalised += other.variants_normalised
        self.new_pii.update(other.new_pii)
        self.input_values_echoed += other.input_values_echoed
        for finding in other.new_pii_findings:
            moved = dict(finding)
            moved["start"] = int(finding["start"]) + offset  # type: ignore[call-overload]
            moved["end"] = int(finding["end"]) + offset  # type: ignore[call-overload]
            self.new_pii_findings.append(moved)

    def to_audit(self) -> dict[str, object]:
        """JSON-safe form for the completion record."""
        return {
            "placeholders_restored": self.restored,
            "placeholders_kept_masked": self.kept_masked,
            "unknown_placeholders": self.unknown_placeholders,
            "ambiguous_placeholders": self.ambiguous_placeholders,
            "placeholder_variants_normalised": self.variants_normalised,
            "new_pii_masked": dict(sorted(self.new_pii.items())),
            "input_values_echoed": self.input_values_echoed,
            "new_pii_findings": list(self.new_pii_findings),
        }


@dataclass(frozen=True)
class _Resolved:
    start: int
    end: int
    replacement: str


class OutputGuard:
    """Checks model output against one conversation's placeholder map.

    ``entity_types`` are the types the analyzer masks (they make bare ``TYPE_N`` words placeholders);
    ``detector`` finds personal data in output text (None: only placeholders are handled).
    """

    def __init__(self, entity_types: Iterable[str], detector: Detector | None) -> None:
        self._entity_types = frozenset(entity_types)
        self._detector = detector

    def check(self, text: str, mapping: PlaceholderMap, *, reidentify: bool) -> tuple[str, GuardReport]:
        """Return the text safe to send, and what was done to it."""
        report = GuardReport()
        known_types = self._entity_types | {
            t for p in mapping.placeholders() if (t := mapping.entity_type_of(p)) is not None
        }
        resolved: list[_Resolved] = []
        for match in TOLERANT_PLACEHOLDER.finditer(text):
            item = self._resolve_placeholder(match, mapping, known_types, reidentify, report)
            if item is not None:
                resolved.append(item)
        if self._detector is not None:
            taken = [(r.start, r.end) for r in resolved]
            for detection in sorted(self._detector(text), key=lambda d: (d.start, -d.end)):
                if any(detection.start < end and start < detection.end for start, end in taken):
                    continue
                value = text[detection.start : detection.end]
                if not value.strip():
                    continue
                placeholder = mapping.find(detection.entity_type, value)
                if placeholder is not None:
                    report.input_values_echoed += 1
                    replacement = value if reidentify else placeholder
                else:
                    report.new_pii[detection.entity_type] += 1
                    report.new_pii_findings.append(
                        {
                            "entity_type": detection.entity_type,
                            "start": detection.start,
                            "end": detection.end,
                            "score": round(float(detection.score), 4),
                            "recognizer": detection.recognizer,
                        }
                    )
                    replacement = f"[{detection.entity_type}]"
                resolved.append(_Resolved(detection.start, detection.end, replacement))
                taken.append((detection.start, detection.end))
        pieces: list[str] = []
        cursor = 0
        for item in sorted(resolved, key=lambda r: r.start):
            pieces.append(text[cursor : item.start])
            pieces.append(item.replacement)
            cursor = item.end
        pieces.append(text[cursor:])
        return "".join(pieces), report

    def _resolve_placeholder(
        self,
        match: re.Match[str],
        mapping: PlaceholderMap,
        known_types: frozenset[str],
        reidentify: bool,
        report: GuardReport,
    ) -> _Resolved | None:
        if match.group(1) is not None:
            entity_type = re.sub(r"[ _]+", "_", match.group(1).strip()).upper()
            number = match.group(2)
        else:
            entity_type, number = match.group(3), match.group(4)
        if entity_type not in known_types:
            return None  # "<b>", "SKU_12": not a placeholder of ours
        if number is None:
            candidates = [p for p in mapping.placeholders() if mapping.entity_type_of(p) == entity_type]
            if len(candidates) != 1:
                report.ambiguous_placeholders += 1
                return _Resolved(match.start(), match.end(), f"<{entity_type}>")
            canonical = candidates[0]
        else:
            canonical = f"<{entity_type}_{int(number)}>"
        if canonical != match.group(0):
            report.variants_normalised += 1
        value = mapping.value_of(canonical)
        if value is None:
            report.unknown_placeholders += 1
            return _Resolved(match.start(), match.end(), canonical)
        if reidentify:
            report.restored += 1
            return _Resolved(match.start(), match.end(), value)
        report.kept_masked += 1
        return _Resolved(match.start(), match.end(), canonical)
