"""Recognizers for CRM references that Presidio does not ship: customer, account, order and ticket IDs.

ID formats differ per deployment, so these recognizers key on the label in front of the ID ("order #A-1234",
"customer no. 55120", "ticket: 4711") rather than on the ID's shape. The label is matched by a look-behind,
so only the ID itself is masked and the model still reads "order <ORDER_ID_1>".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from presidio_analyzer import Pattern, PatternRecognizer


@dataclass(frozen=True)
class CrmReferenceSpec:
    """One CRM reference type: the entity name and the label words that announce it."""

    entity_type: str
    labels: tuple[str, ...]
    score: float = 0.6


#: Registry by entity type; extend here (or pass extra specs to ``build_analyzer``) for new reference types.
CRM_REFERENCE_SPECS: Mapping[str, CrmReferenceSpec] = {
    spec.entity_type: spec
    for spec in (
        CrmReferenceSpec("CUSTOMER_ID", ("customer", "client", "member", "membership")),
        CrmReferenceSpec("ACCOUNT_ID", ("account", "acct", "acc")),
        CrmReferenceSpec("ORDER_ID", ("order", "purchase order", "po", "invoice", "contract")),
        CrmReferenceSpec("TICKET_ID", ("ticket", "case", "incident", "reference", "ref")),
    )
}

# What may sit between the label and the ID: "id", "no.", "number", "nr", "#", ":" in any combination.
_LABEL_SUFFIX = r"(?:[ \t]*(?:id|no\.?|number|nr\.?|num\.?|reference|ref\.?))?[ \t]*[:#]?[ \t]*#?[ \t]*"
# An ID: 4+ characters of letters, digits and inner hyphens/slashes, at least one digit (so "order please"
# is not an ID), starting and ending with a letter or digit.
_ID = r"(?=[A-Z0-9/-]*[0-9])[A-Z0-9](?:[A-Z0-9/-]{2,}[A-Z0-9])\b"


def crm_reference_regex(labels: tuple[str, ...]) -> str:
    """Return the regex for one reference type; the label is a look-behind so only the ID is matched."""
    words = "|".join(sorted((w.replace(" ", r"[ \t]+") for w in labels), key=len, reverse=True))
    return rf"(?<=\b(?:{words}){_LABEL_SUFFIX}){_ID}"


class CrmReferenceRecognizer(PatternRecognizer):
    """Detect a labelled CRM reference (customer/account/order/ticket ID) by the label preceding it."""

    def __init__(self, spec: CrmReferenceSpec, *, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity=spec.entity_type,
            name=f"CrmReferenceRecognizer[{spec.entity_type}]",
            supported_language=supported_language,
            patterns=[
                Pattern(f"{spec.entity_type} after label", crm_reference_regex(spec.labels), spec.score)
            ],
            # The label is already part of the pattern; context words would only double-count it.
            context=[],
        )
