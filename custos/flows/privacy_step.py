"""Step 1 of the flows (the privacy stage) and the output guard of step 4.

Step 1 detects, applies the request's privacy policy and pseudonymizes with the conversation's vault; the
output guard checks every answer.

The policy decision (mask or block, re-identification asked and permitted, language outcome, vault state)
is returned as an audit-ready dict so the request record says why the text looked as it did.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from custos.flows.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    RequestError,
)
from custos.flows.types import Caller, PrivacyMode
from custos.privacy.batching import AnalysisBatcher
from custos.privacy.errors import UnsupportedLanguage
from custos.privacy.guard import Detection, OutputGuard
from custos.privacy.pseudonymize import Analysis, PlaceholderMap, Pseudonymized, Pseudonymizer
from custos.privacy.scheduling import AnalysisGate, TurnDeadline
from custos.privacy.streaming import StreamRestorer
from custos.privacy.vault import ConversationVault, SubjectMismatch

#: Who may have placeholders restored; the default lets every caller (no permissions configured yet).
ReidentifyCheck = Callable[[Caller], bool]


def everyone_may_reidentify(_caller: Caller) -> bool:
    """The re-identification check used until permissions are configured."""
    return True


class PrivacyRefusal(Exception):
    """A refusal with its audit details; the flow audits it, then raises ``error``."""

    def __init__(self, error: RequestError, event_type: str, details: dict[str, Any]) -> None:
        super().__init__(error.message)
        self.error = error
        self.event_type = event_type
        self.details = details


@dataclass(frozen=True)
class PrivacyDecision:
    """What step 1 produced: the pseudonymized call and the audit form of the decisions taken."""

    anon: Pseudonymized
    audit: dict[str, Any]


class PrivacyStage:
    """Analysis, policy and vault for one call; thread-safe.

    Analyses take turns at the shared analyzer (``custos.privacy.scheduling``): short calls, batched, go
    before the next slice of a long message, so one long message never stalls the others.
    """

    def __init__(
        self,
        pseudonymizer: Pseudonymizer,
        *,
        vault: ConversationVault | None = None,
        may_reidentify: ReidentifyCheck = everyone_may_reidentify,
        block_entities: Sequence[str] = (),
        ner_window_chars: int = 0,
        language_policy: str = "refuse",
    ) -> None:
        self._pseudonymizer = pseudonymizer
        self._vault = vault
        self._may_reidentify = may_reidentify
        self._block_entities = tuple(block_entities)
        unknown = sorted(set(self._block_entities) - set(pseudonymizer.entities))
        if unknown:
            raise ValueError(f"pii_block_entities names entity types that are not detected: {unknown}")
        self._ner_window = ner_window_chars
        self._language_policy = language_policy
        #: Turns at the analyzer, shared by the calls, the long messages' slices and the output guard.
        self.gate = AnalysisGate()
        # Short calls waiting while one is analysed are analysed together, as one spaCy batch.
        self.batcher = AnalysisBatcher(self._analyze_many)
        self.guard = OutputGuard(pseudonymizer.entities, self._detect)

    @property
    def entity_types(self) -> list[str]:
        """Entity types that are masked."""
        return self._pseudonymizer.entities

    def check_reidentify(self, caller: Caller, requested: bool) -> None:
        """Refuse a re-identification request of a caller without the permission."""
        if requested and not self._may_reidentify(caller):
            raise PrivacyRefusal(
                PermissionDenied(
                    "reidentify: the caller lacks the reidentify permission",
                    error_code="REIDENTIFY_NOT_PERMITTED",
                ),
                "denied",
                {"denied_permission": "reidentify"},
            )

    def run(
        self,
        texts: Sequence[str],
        conversation_ref: str,
        *,
        mode: PrivacyMode = "mask",
        block_entities: Sequence[str] | None = None,
        reidentify: bool = False,
        subject_ref: str | None = None,
        deadline: float | None = None,
    ) -> PrivacyDecision:
        """Analyse, apply the policy, and pseudonymize with the conversation's vault.

        A call with a message longer than the pseudonymizer's slice is analysed slice by slice in turns of
        its own, not in the batch; ``deadline`` (``time.monotonic``, the caller's) ends such an analysis
        with DEADLINE_EXCEEDED at the first turn after it has passed.
        """
        blocked_types = tuple(block_entities) if block_entities else self._block_entities
        unknown = sorted(set(blocked_types) - set(self.entity_types))
        if unknown:
            raise PrivacyRefusal(
                InvalidArgument("block_entity_types", f"entity types {unknown} are not detected here"),
                "invalid",
                {"field": "block_entity_types", "problem": "unknown entity types"},
            )
        policy: dict[str, Any] = {
            "mode": mode,
            "block_entity_types": sorted(blocked_types) if mode == "block" else [],
            "reidentify_requested": reidentify,
            "reidentify_permitted": reidentify,  # refused earlier otherwise
            "language_policy": self._language_policy,
        }
        try:
            analysis = self._analyze(list(texts), deadline)
        except TurnDeadline:
            raise PrivacyRefusal(
                DeadlineExceeded("messages: the deadline passed while the messages were analysed"),
                "generate",
                {"privacy_policy": {**policy, "decision": "deadline_exceeded"}},
            ) from None
        except UnsupportedLanguage:
            raise PrivacyRefusal(
                FailedPrecondition(
                    "messages: the text's language is not among the served languages (pii_languages); "
                    "refused by the language policy",
                    error_code="LANGUAGE_NOT_SERVED",
                ),
                "generate",
                {"privacy_policy": {**policy, "decision": "refused_language"}},
            ) from None
        policy["detected_language"] = analysis.detected_language
        policy["patterns_only"] = analysis.patterns_only
        policy["language"] = analysis.language
        policy["pipeline"] = analysis.pipeline
        if mode == "block":
            present = sorted(analysis.entity_types() & set(blocked_types))
            if present:
                raise PrivacyRefusal(
                    FailedPrecondition(
                        f"messages: contain blocked entity types {present}", error_code="BLOCKED_ENTITY_TYPES"
                    ),
                    "generate",
                    {
                        "privacy_policy": {**policy, "decision": "blocked", "blocked_found": present},
                        "pii": {"counts": analysis.counts()},
                    },
                )
        try:
            anon, vault_info = self._assign(analysis, conversation_ref, subject_ref)
        except SubjectMismatch:
            raise PrivacyRefusal(
                FailedPrecondition(
                    "subject_id: the conversation was started with another subject_id (or without one); "
                    "use a new conversation_id for this subject",
                    error_code="SUBJECT_MISMATCH",
                ),
                "generate",
                {"privacy_policy": {**policy, "decision": "refused_subject"}},
            ) from None
        policy["decision"] = "masked"
        return PrivacyDecision(anon=anon, audit={"privacy_policy": policy, "vault": vault_info})

    def _assign(
        self, analysis: Analysis, conversation_ref: str, subject_ref: str | None
    ) -> tuple[Pseudonymized, dict[str, Any]]:
        if self._vault is None:
            return self._pseudonymizer.apply(analysis, PlaceholderMap()), {"scope": "call"}
        anon, update = self._vault.update(
            conversation_ref,
            lambda mapping: self._pseudonymizer.apply(analysis, mapping),
            subject_ref=subject_ref,
        )
        return anon, {
            "scope": "conversation",
            "version": update.version,
            "expired_map_replaced": update.expired,
            "entries": update.entries,
        }

    def _analyze(self, texts: list[str], deadline: float | None) -> Analysis:
        if all(len(text) <= self._pseudonymizer.CHUNK_CHARS for text in texts):
            return self.batcher.analyze(texts)
        outcome = self._pseudonymizer.analyze_many([texts], gate=self.gate, deadline=deadline)[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _analyze_many(self, calls: Sequence[Sequence[str]]) -> list[Analysis | Exception]:
        return self._pseudonymizer.analyze_many(calls, gate=self.gate)

    def restorer(
        self, mapping: PlaceholderMap, *, reidentify: bool, language: str | None = None
    ) -> StreamRestorer:
        """A streaming output guard for one answer; ``language`` picks the pipeline that checks the answer."""
        guard = (
            self.guard
            if language is None
            else OutputGuard(self._pseudonymizer.entities, functools.partial(self._detect, language=language))
        )
        return StreamRestorer(mapping, guard=guard, reidentify=reidentify, ner_window_chars=self._ner_window)

    def _detect(self, text: str, *, language: str | None = None) -> list[Detection]:
        spans = self._pseudonymizer.detect(text, language=language, gate=self.gate)
        return [
            Detection(
                entity_type=span.winner.entity_type,
                start=span.start,
                end=span.end,
                score=float(span.winner.score),
                recognizer=str((span.winner.recognition_metadata or {}).get("recognizer_name", "unknown")),
            )
            for span in spans
        ]
