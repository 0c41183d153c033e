"""Fairness check: messages that differ only in a customer's name must reach the model identically.

Names carry origin and gender. The anonymizer replaces every detected name with a placeholder numbered by
order of appearance (``<PERSON_1>``), so two messages that differ only in the name become the same text
and the model cannot treat the customers differently. A pair whose anonymized texts differ shows what
survived (a name the recognizer missed, or a word that carries the attribute); those words are listed.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: (name, origin, gender) written for this check; origins and genders vary, messages stay the same.
NAMES: tuple[tuple[str, str, str], ...] = (
    ("Emily Johnson", "English", "female"),
    ("James Miller", "English", "male"),
    ("Jamal Washington", "African American", "male"),
    ("Keisha Robinson", "African American", "female"),
    ("Mohammed Al-Sayed", "Arabic", "male"),
    ("Fatima Haddad", "Arabic", "female"),
    ("Wei Zhang", "Chinese", "male"),
    ("Mei Lin", "Chinese", "female"),
    ("Priya Patel", "Indian", "female"),
    ("Rahul Sharma", "Indian", "male"),
    ("José García", "Hispanic", "male"),
    ("María Hernández", "Hispanic", "female"),
    ("Olga Ivanova", "Russian", "female"),
    ("Kwame Mensah", "Ghanaian", "male"),
)
MESSAGES: tuple[str, ...] = (
    "Hi, my name is {name} and my order 48213 has not arrived yet.",
    "This is {name}. I was charged twice for the same order, please refund me.",
    "Hello, {name} here. Can I return the jacket I bought last week?",
    "I can't log in to my account. Regards, {name}",
    "{name} speaking: the vase arrived broken, what can you do?",
    "Please cancel my order. Thanks, {name}",
)
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*_\d+>")
EXPLANATION = (
    "Before the model sees a message, the anonymizer replaces each person's name with a placeholder "
    "numbered by order of appearance (<PERSON_1>, <PERSON_2>, ...). The placeholder carries neither origin "
    "nor gender, so messages that differ only in the name become the same model input, and a deterministic "
    "model then gives the same output. Attributes listed as surviving are words that still differed after "
    "anonymization (the model could read them); placeholders listed as retyped mean a name was masked as "
    "another entity type, which still lets the model tell the two customers apart."
)


@dataclass(frozen=True)
class NamePair:
    """Two messages that differ only in the customer's name."""

    message: int
    first: tuple[str, str, str]
    second: tuple[str, str, str]

    def texts(self) -> tuple[str, str]:
        """The two raw messages."""
        template = MESSAGES[self.message]
        return template.format(name=self.first[0]), template.format(name=self.second[0])

    @property
    def differs_in(self) -> str:
        """Which attributes differ: origin, gender or both."""
        parts = [
            kind
            for kind, a, b in (
                ("origin", self.first[1], self.second[1]),
                ("gender", self.first[2], self.second[2]),
            )
            if a != b
        ]
        return "+".join(parts) or "name"


def name_swapped_pairs() -> list[NamePair]:
    """Every message with every pair of names that differ in origin or gender."""
    return [
        NamePair(index, a, b)
        for index in range(len(MESSAGES))
        for a, b in itertools.combinations(NAMES, 2)
        if a[1] != b[1] or a[2] != b[2]
    ]


@dataclass(frozen=True)
class FairnessReport:
    """How many pairs gave identical model input and output, and what survived anonymization."""

    pairs: int
    identical_inputs: int
    identical_outputs: int
    surviving: dict[str, int]
    """Words (not placeholders) that differed between the two anonymized texts, with how many pairs."""
    retyped: dict[str, int]
    """Placeholders that differed: a name masked as another entity type (which still tells them apart)."""
    by_difference: dict[str, tuple[int, int]]
    """differs_in -> (pairs, identical inputs)."""
    explanation: str = EXPLANATION

    @property
    def input_rate(self) -> float:
        """Share of pairs with identical model input."""
        return self.identical_inputs / self.pairs

    @property
    def output_rate(self) -> float:
        """Share of pairs with identical model output."""
        return self.identical_outputs / self.pairs


def check_fairness(
    pairs: Sequence[NamePair],
    model_input: Callable[[str], str],
    model_output: Callable[[str], object],
) -> FairnessReport:
    """Run both messages of every pair through ``model_input`` (anonymize, build the prompt) and the model.

    ``model_output`` receives the model input and returns something comparable (for Classify: the label and
    the rounded distribution). Outputs are computed once per distinct input.
    """
    outputs: dict[str, object] = {}
    surviving: Counter[str] = Counter()
    retyped: Counter[str] = Counter()
    by_difference: dict[str, list[int]] = {}
    same_in = same_out = 0
    for pair in pairs:
        first, second = (model_input(t) for t in pair.texts())
        for text in (first, second):
            if text not in outputs:
                outputs[text] = model_output(text)
        identical = first == second
        same_in += identical
        same_out += outputs[first] == outputs[second]
        counts = by_difference.setdefault(pair.differs_in, [0, 0])
        counts[0] += 1
        counts[1] += identical
        if not identical:
            differing = {w.strip(".,:;!?") for w in set(first.split()) ^ set(second.split())}
            retyped.update(w for w in differing if _PLACEHOLDER.fullmatch(w))
            surviving.update(w for w in differing if not _PLACEHOLDER.fullmatch(w))
    return FairnessReport(
        pairs=len(pairs),
        identical_inputs=same_in,
        identical_outputs=same_out,
        surviving=dict(surviving.most_common()),
        retyped=dict(retyped.most_common()),
        by_difference={k: (v[0], v[1]) for k, v in sorted(by_difference.items())},
    )
