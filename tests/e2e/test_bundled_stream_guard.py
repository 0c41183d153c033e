"""Streaming guard at the bundled model's real token boundaries (Gemma's SentencePiece pieces)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from custos.engine.local import TransformersEngine
from custos.privacy.guard import Detection, OutputGuard
from custos.privacy.pseudonymize import PlaceholderMap
from custos.privacy.streaming import StreamRestorer

pytestmark = pytest.mark.e2e

_PATTERNS = {
    "EMAIL_ADDRESS": r"[\w.]+@[\w.]+\w",
    "PHONE_NUMBER": r"\+\d[\d ]{8,}\d",
    "CREDIT_CARD": r"\b(?:\d{4}[ -]?){3}\d{4}\b",
}


def detector(text: str) -> Sequence[Detection]:
    return [
        Detection(t, m.start(), m.end(), 0.9, "test-regex")
        for t, p in _PATTERNS.items()
        for m in re.finditer(p, text)
    ]


TEXTS = [
    "Dear <Person 1>, we wrote to <EMAIL_ADDRESS_1>. Call +44 20 7946 0958 or mail bob@evil.com today.",
    "PERSON_1, your card 4111 1111 1111 1111 was declined; <PERSON> and <PERSON_3> are unknown.",
]


@pytest.mark.parametrize("text", TEXTS)
def test_stream_equals_whole_at_real_token_boundaries(bundled_engine: TransformersEngine, text: str) -> None:
    tokenizer = bundled_engine.tokenizer
    mapping = PlaceholderMap()
    mapping.placeholder_for("PERSON", "John Smith")
    mapping.placeholder_for("EMAIL_ADDRESS", "john@example.org")
    guard = OutputGuard(["PERSON", *_PATTERNS], detector)
    whole, _ = guard.check(text, mapping, reidentify=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    restorer = StreamRestorer(mapping, guard=guard, reidentify=True, ner_window_chars=40)
    decoded, out = "", []
    for index in range(len(ids)):
        now = tokenizer.decode(ids[: index + 1], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        out.append(restorer.feed(now[len(decoded) :]))
        decoded = now
    out.append(restorer.flush())
    assert decoded == text
    assert "".join(out) == whole
