"""Streaming output guard: a long unbroken value never leaves unmasked, whatever the NER window."""

from __future__ import annotations

import pytest

from custos.privacy.guard import Detection, OutputGuard
from custos.privacy.pseudonymize import PlaceholderMap, Pseudonymizer
from custos.privacy.streaming import StreamRestorer

LOCAL = "jane.doe.customer-care.escalations.priority.followup.24.accounts"  # 64 characters
DOMAIN_LABELS = (
    "customer-support-and-service-department-of-the-regional-office",
    "northern-european-operations-and-subscriber-management-division",
    "billing-and-accounts-receivable-desk-for-emea",
    "mail",
    "example",
    "com",
)
DOMAIN = ".".join(DOMAIN_LABELS)
EMAIL = f"{LOCAL}@{DOMAIN}"
URL = (
    "https://crm.example.com/customers/5512098/tickets/INC-20931/attachments?download=true"
    "&contact=jane.doe%40example.org&session=7f3a9c2e11b84d0e9a5f6c7d8e9f0a1b"
)


def _guard(pseudonymizer: Pseudonymizer) -> OutputGuard:
    def detect(text: str) -> list[Detection]:
        return [
            Detection(s.winner.entity_type, s.start, s.end, float(s.winner.score), "analyzer")
            for s in pseudonymizer.detect(text)
        ]

    return OutputGuard(pseudonymizer.entities, detect)


def _stream(guard: OutputGuard, text: str, *, window: int, token_chars: int) -> list[str]:
    restorer = StreamRestorer(PlaceholderMap(), guard=guard, reidentify=False, ner_window_chars=window)
    pieces = [restorer.feed(text[i : i + token_chars]) for i in range(0, len(text), token_chars)]
    pieces.append(restorer.flush())
    return pieces


def test_the_email_address_is_254_characters() -> None:
    assert len(EMAIL) == 254
    assert len(LOCAL) == 64
    assert all(len(label) <= 63 for label in DOMAIN_LABELS)


@pytest.mark.parametrize("window", [0, 1, 7, 40, 120, 500, 2000])
@pytest.mark.parametrize(("value", "entity"), [(EMAIL, "EMAIL_ADDRESS"), (URL, "URL")], ids=["email", "url"])
@pytest.mark.parametrize("token_chars", [1, 4, 9])
def test_long_unbroken_value_never_leaves_unmasked(
    pseudonymizer: Pseudonymizer, window: int, value: str, entity: str, token_chars: int
) -> None:
    answer = f"Thanks for your message. I have noted the new contact {value} and will write there tomorrow."
    pieces = _stream(_guard(pseudonymizer), answer, window=window, token_chars=token_chars)
    released = "".join(pieces)
    # Not the value, and not a piece of it that could be put together again.
    for start in range(0, len(value) - 16, 8):
        assert value[start : start + 16] not in released, (window, token_chars, start)
    assert f"[{entity}]" in released
    # The sentence before the value is not held back until the value is complete.
    fed_before_value = answer.index(value) // token_chars
    assert "Thanks for your message." in "".join(pieces[:fed_before_value])


def test_an_unfinished_long_word_is_held_whole(pseudonymizer: Pseudonymizer) -> None:
    guard = _guard(pseudonymizer)
    restorer = StreamRestorer(PlaceholderMap(), guard=guard, reidentify=False, ner_window_chars=1)
    released = restorer.feed("Write to ")
    for index in range(0, len(LOCAL), 4):
        released += restorer.feed(LOCAL[index : index + 4])
    assert LOCAL[:8] not in released  # the local part waits for the rest of the address
    released += restorer.feed(f"@{DOMAIN} today.")
    released += restorer.flush()
    assert LOCAL[:8] not in released and "[EMAIL_ADDRESS]" in released
