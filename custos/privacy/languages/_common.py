"""What the language profiles share: the English words that stay ordinary words in any language's CRM text."""

from __future__ import annotations

from custos.privacy.names import COMMON_WORDS

#: English common words that are also first names or surnames; in another language's text they are a name
#: when capitalised ("Mark Weber", "Rose Dubois") and an ordinary word only in lower case.
NAME_LIKE_ENGLISH = frozenset(
    {"bill", "grant", "mark", "rose", "love", "hope", "young", "rich", "long", "green", "major", "summer",
     "winter", "may", "west", "north", "short", "small", "good"}
)  # fmt: skip

#: English words that are never a name in another language's CRM text (product, place and support words).
ENGLISH_NEVER_NAMES = COMMON_WORDS - NAME_LIKE_ENGLISH


def words(text: str) -> frozenset[str]:
    """The whitespace-separated, lower-cased words of ``text``."""
    return frozenset(text.casefold().split())
