"""Purposes of processing: a request's declared ``purpose`` is checked against those configured per caller.

Configured as ``purposes = {"svc:crm" = ["support", "billing"], "*" = ["support"]}``: the caller's own list,
else the ``"*"`` list. With nothing configured every purpose (or none) is accepted, as in development. A
caller with a list must declare one of its purposes; the purpose is then written into the audit record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from custos.flows.errors import InvalidArgument

__all__ = ["PurposePolicy"]


class PurposePolicy:
    """Which purposes each principal may declare."""

    def __init__(self, purposes: Mapping[str, Sequence[str]]) -> None:
        self._purposes = {principal: frozenset(values) for principal, values in purposes.items()}

    def allowed(self, principal: str) -> frozenset[str] | None:
        """The purposes ``principal`` may declare; ``None`` when unrestricted."""
        if not self._purposes:
            return None
        return self._purposes.get(principal, self._purposes.get("*", frozenset()))

    def check(self, principal: str, purpose: str | None) -> None:
        """Raise INVALID_ARGUMENT naming ``purpose`` unless it is configured for ``principal``."""
        allowed = self.allowed(principal)
        if allowed is None:
            return
        if purpose is None:
            raise InvalidArgument(
                "purpose",
                "required: this caller must declare a configured purpose",
                error_code="PURPOSE_REQUIRED",
            )
        if purpose not in allowed:
            raise InvalidArgument(
                "purpose", "is not a purpose configured for this caller", error_code="PURPOSE_NOT_ALLOWED"
            )
