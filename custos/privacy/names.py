"""Person names by list and by cue: what spaCy's small NER model misses in customer-service text.

spaCy finds most capitalised full names but misses lower-case ones ("tom becker"), names after a greeting or
in a signature ("Regards, Dana"), and unusual ones. ``PersonNameRecognizer`` adds two rules:

* **List pairs**: a first name followed by a surname (optionally a middle name or initial between), both from
  the lists, in any case: "tom becker", "Ana Lucia Ferreira".
* **Cues**: one to three name-like words after a phrase that announces a name ("my name is", "Dear",
  "Mr.", "regards,", "holder"); after a weak cue ("this is", "I am", "hi") the first word must be a listed
  first name or surname.

The lists are the first names and surnames of Faker's bundled locales (``FAKER_NAME_LOCALES``), read once at
start-up. The privacy benchmark draws its test names from another source (presidio-evaluator's
FakeNameGenerator records) and reports recall on names absent from these lists separately.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from presidio_analyzer import AnalysisExplanation, LocalRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

#: Faker locales whose person providers supply the name lists.
FAKER_NAME_LOCALES: tuple[str, ...] = (
    "en_US", "en_GB", "en_IE", "en_IN", "en_NZ", "de_DE", "fr_FR", "es_ES", "es_MX", "it_IT", "nl_NL",
    "pt_BR", "pt_PT", "pl_PL", "sv_SE", "da_DK", "no_NO", "fi_FI", "cs_CZ", "tr_TR", "hu_HU", "ro_RO",
)  # fmt: skip

#: Words that are in some name list but are ordinary words in CRM text; never a name on their own.
_COMMON_WORDS_TEXT = """
    a about account address after all also am an and any are as at back bank be bill billing but by call can
    card care case cash change charge check city close code contact cost could country court credit date day
    dear delivery did do does done door east email end even every fee fine first for from full general get
    gift given good grant great green had has have he help her here hi him his home hope how i if in is it
    its just last late left let line long love mail main major make manager many mark may me member miss
    mobile more most much my name new next no north not now number of off office ok on one only or order our
    out over paid park part pay phone please post price rich right rose said same say see service she short
    small so south star still street summer support sure team than thank thanks that the their them then
    there they this those time to today too town under up us use user very want was way we week well west
    what when where avenue road lane drive boulevard square place plaza way center centre office shop store
    bank group company inc ltd gmbh llc mr mrs ms dr prof customer client sir madam valued everyone
    everybody guys folks station period airport hotel mall market air bridge hall tower terminal campus
    hospital clinic church school college university river lake mountain valley beach which while who why
    will winter with without would year yes yet you young your
"""
COMMON_WORDS = frozenset(_COMMON_WORDS_TEXT.split())

# Phrases after which a name is expected. Strong cues take a capitalised unknown word; weak cues need a word
# from the lists, because "this is urgent" and "I am writing" are common.
_STRONG_CUES = (
    r"my\s+name\s+is", r"my\s+name's", r"name\s*[:=-]?", r"user",
    r"names?\s+on\s+the\s+(?:card|account)\s+(?:is\s+)?",
    r"dear", r"mr\.?", r"mrs\.?", r"ms\.?", r"miss", r"dr\.?", r"prof\.?", r"regards\s*,?", r"sincerely\s*,?",
    r"cheers\s*,?", r"thanks\s*,", r"thank\s+you\s*,", r"best\s*,", r"(?:card|account)\s*holder\s*:?",
    r"holder\s*:?", r"signed\s*:?", r"(?:called|call|calls|calling)\s+(?:me\s+)?by", r"on\s+behalf\s+of",
)  # fmt: skip
_WEAK_CUES = (
    r"this\s+is", r"i\s+am", r"i'?m", r"it'?s", r"hi", r"hello", r"hey", r"customer",
    r"contact", r"mother", r"father", r"wife", r"husband", r"son", r"daughter",
)  # fmt: skip
_CUE = re.compile(
    rf"(?i)\b(?:(?P<strong>{'|'.join(_STRONG_CUES)})|(?P<weak>{'|'.join(_WEAK_CUES)}))[ \t]*[,:]?[ \t]*$"
)
# A word of letters (inner apostrophes and hyphens allowed), not glued to digits ("DE89" is no word).
_WORD = re.compile(r"(?<![\w])[^\W\d_][^\W\d_'\u2019\-]*(?:['\u2019\-][^\W\d_]+)*(?![\w])")
_INITIAL = re.compile(r"[A-Z]\.?")


@dataclass(frozen=True)
class NameLists:
    """Lower-cased first names and surnames."""

    first: frozenset[str]
    last: frozenset[str]


def faker_name_lists(locales: Sequence[str] = FAKER_NAME_LOCALES) -> NameLists:
    """Read the first names and surnames of Faker's person providers for ``locales`` (bundled, offline)."""
    first: set[str] = set()
    last: set[str] = set()
    for locale in locales:
        provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        for attribute in ("first_names", "first_names_male", "first_names_female"):
            first.update(_words(getattr(provider, attribute, ())))
        last.update(_words(getattr(provider, "last_names", ())))
    return NameLists(frozenset(first - COMMON_WORDS), frozenset(last - COMMON_WORDS))


def _words(names: Iterable[str]) -> set[str]:
    return {name.casefold() for name in names if _WORD.fullmatch(name)}


@dataclass(frozen=True)
class _Token:
    text: str
    start: int
    end: int

    @property
    def key(self) -> str:
        return self.text.casefold()

    @property
    def capitalised(self) -> bool:
        return self.text[:1].isupper()

    @property
    def proper(self) -> bool:
        """Capitalised like a proper name (not an all-caps acronym such as "IBAN")."""
        return self.text[:1].isupper() and not (len(self.text) > 1 and self.text.isupper())


class PersonNameRecognizer(LocalRecognizer):
    """Names from first-name/surname lists in pairs, and name-like words after a cue (see the module)."""

    NAME = "PersonNameRecognizer"
    LIST_PAIR_SCORE = 0.7
    STRONG_CUE_SCORE = 0.75
    WEAK_CUE_SCORE = 0.6

    def __init__(self, names: NameLists, *, supported_language: str = "en") -> None:
        self._names = names
        super().__init__(
            supported_entities=["PERSON"],
            supported_language=supported_language,
            name=self.NAME,
            context=[],
        )

    def load(self) -> None:
        """Nothing to load: the lists are passed in."""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        """Find listed name pairs and cued names; one result per name."""
        tokens = [_Token(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]
        found: list[tuple[int, int, float, str]] = []
        for index, token in enumerate(tokens):
            if self._unknown_before_surname(text, tokens, index):
                # "Lukasz Reid": a capitalised unknown first name before a listed surname.
                found.append(
                    (token.start, tokens[index + 1].end, self.LIST_PAIR_SCORE, "name before a listed surname")
                )
            if token.key in self._names.first and token.key not in COMMON_WORDS:
                end = self._list_pair_end(text, tokens, index)
                if end is not None:
                    found.append(
                        (token.start, end, self.LIST_PAIR_SCORE, "first name and surname from lists")
                    )
                    continue
            cue = _CUE.search(text, max(0, token.start - 60), token.start)
            if cue is None or not self._cue_adjacent(text, cue.end(), token.start):
                continue
            strong = cue.group("strong") is not None
            end = self._cued_name_end(text, tokens, index, strong=strong)
            if end is not None:
                score = self.STRONG_CUE_SCORE if strong else self.WEAK_CUE_SCORE
                found.append((token.start, end, score, f"name after a {'strong' if strong else 'weak'} cue"))
        merged: list[tuple[int, int, float, str]] = []
        for start, end, score, why in sorted(found):
            if merged and start < merged[-1][1]:  # overlapping finds become one name
                last = merged[-1]
                merged[-1] = (last[0], max(last[1], end), max(last[2], score), last[3])
            else:
                merged.append((start, end, score, why))
        name = self.NAME
        results = [
            RecognizerResult(
                entity_type="PERSON",
                start=start,
                end=end,
                score=score,
                analysis_explanation=AnalysisExplanation(
                    recognizer=name, original_score=score, textual_explanation=why
                ),
                recognition_metadata={
                    RecognizerResult.RECOGNIZER_NAME_KEY: name,
                    RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                },
            )
            for start, end, score, why in merged
        ]
        return results

    def _unknown_before_surname(self, text: str, tokens: list[_Token], index: int) -> bool:
        """A capitalised word, not sentence-initial, before a listed surname that starts no name itself.

        ("Later John Smith" is "John Smith"; "IBAN De..." is no name: acronyms are not proper names.)
        """
        if index + 1 >= len(tokens):
            return False
        token, nxt = tokens[index], tokens[index + 1]
        if not (token.proper and nxt.proper) or token.key in COMMON_WORDS or nxt.key not in self._names.last:
            return False
        if not re.fullmatch(r"[ \t]+", text[token.end : nxt.start]):
            return False
        before = text[: token.start].rstrip()
        if not before or before[-1] in ".!?\n":
            return False  # sentence-initial: any word is capitalised there
        later = tokens[index + 2] if index + 2 < len(tokens) else None
        return not (nxt.key in self._names.first and later is not None and later.proper)

    @staticmethod
    def _cue_adjacent(text: str, cue_end: int, start: int) -> bool:
        return text[cue_end:start].strip(" \t,:") == ""

    def _is_known(self, token: _Token) -> bool:
        return token.key not in COMMON_WORDS and (
            token.key in self._names.first or token.key in self._names.last
        )

    def _list_pair_end(self, text: str, tokens: list[_Token], index: int) -> int | None:
        """End of "first [middle|initial] surname" starting at ``index``, or None."""
        first = tokens[index]
        cursor = first.end
        for offset in (1, 2):
            if index + offset >= len(tokens):
                return None
            nxt = tokens[index + offset]
            if not re.fullmatch(r"\.?[ \t]+", text[cursor : nxt.start]):
                return None
            both_capitalised = first.capitalised and nxt.capitalised
            if nxt.key in COMMON_WORDS and not both_capitalised:
                return None
            if nxt.key in self._names.last and (nxt.capitalised == first.capitalised):
                return nxt.end
            if both_capitalised and len(nxt.text) > 1 and nxt.key not in COMMON_WORDS:
                return nxt.end  # "Martin Beckenbauer": a listed first name, a capitalised unknown surname
            # A middle name or initial may sit between first name and surname.
            if offset == 1 and (nxt.key in self._names.first or _INITIAL.fullmatch(nxt.text)):
                cursor = nxt.end
                continue
            return None
        return None

    @staticmethod
    def _middle_initial(text: str, tokens: list[_Token], index: int) -> bool:
        """A capital letter between two name words ("Liberal A Aranda"); "a" and "I" are common words too."""
        token = tokens[index]
        if len(token.text) != 1 or not token.text.isupper() or index + 1 >= len(tokens):
            return False
        nxt = tokens[index + 1]
        return (
            re.fullmatch(r"\.?[ \t]+", text[token.end : nxt.start]) is not None
            and nxt.proper
            and nxt.key not in COMMON_WORDS
        )

    def _cued_name_end(self, text: str, tokens: list[_Token], index: int, *, strong: bool) -> int | None:
        """End of one to three name-like words starting at ``index`` after a cue, or None."""
        head = tokens[index]
        if head.key in COMMON_WORDS:
            return None
        if not (self._is_known(head) or (strong and head.capitalised)):
            return None
        end = head.end
        for offset, nxt in enumerate(tokens[index + 1 : index + 3], start=index + 1):
            gap = text[end : nxt.start]
            if not re.fullmatch(r"[ \t]+|\.[ \t]+", gap):
                break
            if nxt.key in COMMON_WORDS and not self._middle_initial(text, tokens, offset):
                break
            if not (
                self._is_known(nxt) or (nxt.capitalised and head.capitalised) or _INITIAL.fullmatch(nxt.text)
            ):
                break
            end = nxt.end
        return end
