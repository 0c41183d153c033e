"""Person names by list and by cue: what spaCy's small NER model misses in customer-service text.

spaCy finds most capitalised full names but misses lower-case ones ("tom becker"), names after a greeting or
in a signature ("Regards, Dana"), and unusual ones. ``PersonNameRecognizer`` adds two rules:

* **List pairs**: a first name followed by a surname (optionally a middle name or initial between), both from
  the lists, in any case: "tom becker", "Ana Lucia Ferreira".
* **Cues**: one to three name-like words after a phrase that announces a name ("my name is", "Dear",
  "Mr.", "regards,", "holder"); after a weak cue ("this is", "I am", "hi") the first word must be a listed
  first name or surname.

Cue phrases, titles, name particles ("van der", "de la") and the words that are never a name alone differ by
language: ``NameCues`` holds them, ``ENGLISH_CUES`` here, the other languages' in
``custos.privacy.languages``.

The lists are the first names and surnames of Faker's bundled locales (``FAKER_NAME_LOCALES``), read once at
start-up; the capitalised parts of multi-word surnames ("van der Berg", "Da Silva") count as surnames. The
privacy benchmark draws its test names from another source (presidio-evaluator's FakeNameGenerator records)
and reports recall on names absent from these lists separately.
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
    i i'm i've i'd i'll you're we're it's that's
"""
# The same contractions with a typographic apostrophe (U+2019), as phones and word processors type them.
COMMON_WORDS = frozenset(
    _COMMON_WORDS_TEXT.split() + [w.replace("'", "\u2019") for w in _COMMON_WORDS_TEXT.split() if "'" in w]
)

# Phrases after which a name is expected. Strong cues take a capitalised unknown word; weak cues need a word
# from the lists, because "this is urgent" and "I am writing" are common.
_STRONG_CUES = (
    r"my\s+name\s+is", r"my\s+name's", r"name\s*[:=-]?", r"user",
    r"names?\s+on\s+the\s+(?:card|account)\s+(?:is\s+)?",
    r"dear", r"mr\.?", r"mrs\.?", r"ms\.?", r"miss", r"dr\.?", r"prof\.?", r"regards\s*,?", r"sincerely\s*,?",
    r"cheers\s*,?", r"thanks\s*,", r"thank\s+you\s*,", r"best\s*,",
    r"(?:card|account)\s*holder(?:\s+is)?\s*:?", r"holder\s*:?", r"signed\s*:?",
    r"(?:called|call|calls|calling)\s+(?:me\s+)?by", r"on\s+behalf\s+of",
)  # fmt: skip
_WEAK_CUES = (
    r"this\s+is", r"i\s+am", r"i'?m", r"it'?s", r"hi", r"hello", r"hey", r"customer",
    r"contact", r"mother", r"father", r"wife", r"husband", r"son", r"daughter",
)  # fmt: skip
# Sign-offs whose name may stand on the next line ("Kind regards,\nDana Whitfield").
_SIGN_OFFS = (
    r"regards\s*,?", r"sincerely\s*,?", r"cheers\s*,?", r"thanks\s*,", r"thank\s+you\s*,", r"best\s*,",
)  # fmt: skip
#: Words inside a name before a surname, in any case: "Ana de la Cruz", "Jan van der Berg", "De Vries".
NAME_PARTICLES = (
    "van", "von", "der", "den", "de", "del", "della", "di", "da", "das", "dos", "du", "des", "la", "le",
    "ter", "ten", "zu",
)  # fmt: skip


@dataclass(frozen=True)
class NameCues:
    """What announces a name in one language, and which of its words are never a name on their own.

    ``strong``, ``weak`` and ``sign_offs`` are regex fragments (matched case-insensitively before the name);
    a sign-off may end the line with the name on the next one. ``particles`` may sit inside a name before
    a surname. ``common_words`` are never a name; ``lower_common_words`` (the language's function words,
    some of which are also names: Italian "sara", Dutch "ben") only when written in lower case. With
    ``full_names_after_weak_cues``, a weak cue also takes two capitalised unknown words ("soy Urko
    Zubizarreta"): in English "I am Very Upset" is common enough to leave that off. With
    ``unlisted_pairs``, two proper words inside a sentence are a name (for languages without NER; English
    capitalises product and team names too often). ``introductions`` ("my name is") take one or two words
    in any case when a clause ends after them; ``signature_names``: proper words alone after the last
    sentence are a name ("... reply to me there. Hylke"); ``name_then`` words follow a name that opens a
    clause ("Millicent here").
    """

    strong: tuple[str, ...]
    weak: tuple[str, ...] = ()
    sign_offs: tuple[str, ...] = ()
    particles: tuple[str, ...] = NAME_PARTICLES
    common_words: frozenset[str] = COMMON_WORDS
    lower_common_words: frozenset[str] = frozenset()
    full_names_after_weak_cues: bool = False
    unlisted_pairs: bool = False
    introductions: tuple[str, ...] = ()
    signature_names: bool = False
    name_then: tuple[str, ...] = ()

    def compile(self) -> tuple[re.Pattern[str], re.Pattern[str] | None]:
        """The cue regex and the sign-off regex (cue, line break), anchored where the name starts."""
        groups = [("strong", self.strong), ("weak", self.weak)]
        alternatives = "|".join(f"(?P<{name}>{'|'.join(cues)})" for name, cues in groups if cues)
        cue = re.compile(rf"(?i)\b(?:{alternatives})[ \t]*[,:]?[ \t]*\Z")
        if not self.sign_offs:
            return cue, None
        sign_off = re.compile(rf"(?i)\b(?:{'|'.join(self.sign_offs)})[ \t]*[,:]?[ \t]*\r?\n[ \t]*\Z")
        return cue, sign_off


#: The English cues; the default of ``PersonNameRecognizer``.
ENGLISH_CUES = NameCues(
    strong=_STRONG_CUES,
    weak=_WEAK_CUES,
    sign_offs=_SIGN_OFFS,
    full_names_after_weak_cues=True,
    introductions=(r"my\s+name\s+is", r"my\s+name's", r"i'?m\s+called"),
    signature_names=True,
    name_then=("here", "speaking"),
)

# A word of letters (inner apostrophes and hyphens allowed), not glued to digits ("DE89" is no word).
_WORD = re.compile(r"(?<![\w])[^\W\d_][^\W\d_'\u2019\-]*(?:['\u2019\-][^\W\d_]+)*(?![\w])")
_INITIAL = re.compile(r"[A-Z]\.?")
# An elided particle glued to a capitalised name: "d'Angelo", "dell'Acqua", "D'Souza", "O'Brien".
_ELIDED = re.compile(r"(?i:d|l|o|dell|dall|all|degl)['\u2019][^\W\d_]")
_GAP = re.compile(r"\.?[ \t]+")
_BLANKS = re.compile(r"[ \t]+")
# Endings of nouns, not names, in the languages served ("Bestellung", "Gesellschaft", "Información").
_NOUN_ENDING = re.compile(
    r"(?:ung|heit|keit|schaft|tion|tät|ment|nis|ismus|ität|ción|sión|zione|sione|ção|ções|heid|teit|age)$"
)


def _gap_after(token: _Token, gap: str) -> bool:
    """Whether ``gap`` may separate ``token`` from the next word of a name: blanks, or ". " after an initial.

    ("Dana A. Whitfield"; "Paris. Ma commande" is two sentences.)
    """
    return _BLANKS.fullmatch(gap) is not None or (len(token.text) == 1 and _GAP.fullmatch(gap) is not None)


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
        last.update(_surname_parts(getattr(provider, "last_names", ())))
    return NameLists(frozenset(first - COMMON_WORDS), frozenset(last - COMMON_WORDS))


def _words(names: Iterable[str]) -> set[str]:
    return {name.casefold() for name in names if _WORD.fullmatch(name)}


def _surname_parts(names: Iterable[str]) -> set[str]:
    """The capitalised words of multi-word surnames: "van der Berg" -> berg, "Da Silva" -> da, silva."""
    parts: set[str] = set()
    for name in names:
        words = name.replace(",", " ").split()
        if len(words) > 1:
            parts.update(
                w.casefold()
                for w in words
                if len(w) > 1 and w[:1].isupper() and not w.isupper() and _WORD.fullmatch(w)
            )
    return parts - set(NAME_PARTICLES)


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
        if self.text[:1].isupper():
            return True
        elided = _ELIDED.match(self.text)  # "d'Angelo": the name after the particle is capitalised
        return elided is not None and self.text[elided.end() - 1].isupper()

    @property
    def proper(self) -> bool:
        """Capitalised like a proper name (not an all-caps acronym such as "IBAN")."""
        return self.capitalised and not (len(self.text) > 1 and self.text.isupper())


class PersonNameRecognizer(LocalRecognizer):
    """Names from first-name/surname lists in pairs, and name-like words after a cue (see the module)."""

    NAME = "PersonNameRecognizer"
    LIST_PAIR_SCORE = 0.7
    STRONG_CUE_SCORE = 0.75
    WEAK_CUE_SCORE = 0.6
    UNLISTED_PAIR_SCORE = 0.5
    SIGNATURE_SCORE = 0.6

    def __init__(
        self, names: NameLists, *, cues: NameCues = ENGLISH_CUES, supported_language: str = "en"
    ) -> None:
        self._names = names
        self._cues = cues
        self._cue, self._sign_off = cues.compile()
        self._name_then = (
            re.compile(
                rf"(?P<name>[^\W\d_][\w'\u2019\-]{{0,30}}(?:[ \t]+[^\W\d_][\w'\u2019\-]{{0,30}})?)"
                rf"[ \t]+(?i:{'|'.join(cues.name_then)})(?=[ \t]*[,.!;:\-\u2013]|[ \t]*$)"
            )
            if cues.name_then
            else None
        )
        self._introduction = (
            re.compile(rf"(?i)\b(?:{'|'.join(cues.introductions)})[ \t]*[,:]?[ \t]*\Z")
            if cues.introductions
            else None
        )
        self._common = cues.common_words
        self._lower_common = cues.lower_common_words
        self._particles = frozenset(cues.particles)
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
                surname_end = self._surname_end(text, tokens, index + 1)
                found.append((token.start, surname_end, self.LIST_PAIR_SCORE, "name before a listed surname"))
            if self._unlisted_pair(text, tokens, index):
                # "die Gutschrift an Detwin Schwieters": two unknown proper words inside a sentence.
                pair_end = self._surname_end(text, tokens, index + 1)
                found.append(
                    (token.start, pair_end, self.UNLISTED_PAIR_SCORE, "two proper words in a sentence")
                )
            if token.key in self._names.first and not self._is_common(token):
                end = self._list_pair_end(text, tokens, index)
                if end is not None:
                    found.append(
                        (token.start, end, self.LIST_PAIR_SCORE, "first name and surname from lists")
                    )
                    continue
            window = max(0, token.start - 60)
            if self._introduction is not None and self._introduction.search(text, window, token.start):
                # "ich heiße gismund zwirnlein": after an introduction, a name in any case.
                end = self._introduced_name_end(text, tokens, index)
                if end is not None:
                    found.append((token.start, end, self.STRONG_CUE_SCORE, "name after an introduction"))
                    continue
            cue = self._cue.search(text, window, token.start)
            if cue is not None:
                strong = cue.group("strong") is not None
            elif self._sign_off is not None and self._sign_off.search(text, window, token.start):
                strong = True  # "Kind regards,\nDana": a sign-off, the name on the next line
            else:
                continue
            end = self._cued_name_end(text, tokens, index, strong=strong)
            if end is not None:
                score = self.STRONG_CUE_SCORE if strong else self.WEAK_CUE_SCORE
                found.append((token.start, end, score, f"name after a {'strong' if strong else 'weak'} cue"))
        found.extend(self._announced_by_following_word(text, tokens))
        signature = self._signature(text, tokens)
        if signature is not None:
            found.append((*signature, self.SIGNATURE_SCORE, "name alone at the end of the message"))
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

    def _is_common(self, token: _Token) -> bool:
        """Never a name on its own: a common word, or a function word written in lower case."""
        return token.key in self._common or (token.key in self._lower_common and not token.proper)

    def _unknown_before_surname(self, text: str, tokens: list[_Token], index: int) -> bool:
        """A capitalised word, not sentence-initial, before a listed surname that starts no name itself.

        ("Later John Smith" is "John Smith"; "IBAN De..." is no name: acronyms are not proper names.)
        """
        if index + 1 >= len(tokens):
            return False
        token, nxt = tokens[index], tokens[index + 1]
        if not (token.proper and nxt.proper) or self._is_common(token) or nxt.key not in self._names.last:
            return False
        if self._is_common(nxt) or not re.fullmatch(r"[ \t]+", text[token.end : nxt.start]):
            return False
        before = text[: token.start].rstrip()
        if not before or before[-1] in ".!?\n":
            return False  # sentence-initial: any word is capitalised there
        later = tokens[index + 2] if index + 2 < len(tokens) else None
        return not (nxt.key in self._names.first and later is not None and later.proper)

    def _is_known(self, token: _Token) -> bool:
        return not self._is_common(token) and (
            token.key in self._names.first or token.key in self._names.last
        )

    def _after_particles(
        self, text: str, tokens: list[_Token], index: int, *, capitalised: bool
    ) -> int | None:
        """Index of the surname after one to three particles starting at ``index`` ("van der Berg"), or None.

        The surname must be listed or, in a capitalised name, capitalised.
        """
        cursor = index
        while cursor + 1 < len(tokens) and cursor - index < 3 and tokens[cursor].key in self._particles:
            if not _BLANKS.fullmatch(text[tokens[cursor].end : tokens[cursor + 1].start]):
                return None
            cursor += 1
        if cursor == index:
            return None
        surname = tokens[cursor]
        if self._is_common(surname) and not surname.proper:
            return None
        if surname.key in self._names.last or (capitalised and surname.proper):
            return cursor
        return None

    def _surname_end(self, text: str, tokens: list[_Token], index: int) -> int:
        """End of the surname at ``index`` and a second listed surname right after it ("García López")."""
        surname = tokens[index]
        if index + 1 < len(tokens):
            nxt = tokens[index + 1]
            if (
                _BLANKS.fullmatch(text[surname.end : nxt.start])
                and nxt.key in self._names.last
                and nxt.capitalised == surname.capitalised
                and not self._is_common(nxt)
            ):
                return nxt.end
        return surname.end

    def _list_pair_end(self, text: str, tokens: list[_Token], index: int) -> int | None:
        """End of "first [middle|initial] [particles] surname" starting at ``index``, or None."""
        first = tokens[index]
        cursor = first.end
        for offset in (1, 2):
            if index + offset >= len(tokens):
                return None
            nxt = tokens[index + offset]
            if not _gap_after(tokens[index + offset - 1], text[cursor : nxt.start]):
                return None
            surname = self._after_particles(text, tokens, index + offset, capitalised=first.capitalised)
            if surname is not None:
                return self._surname_end(text, tokens, surname)
            both_capitalised = first.capitalised and nxt.capitalised
            if self._is_common(nxt) and not both_capitalised:
                return None
            if nxt.key in self._names.last and (nxt.capitalised == first.capitalised):
                return self._surname_end(text, tokens, index + offset)
            if both_capitalised and len(nxt.text) > 1 and not self._is_common(nxt):
                return nxt.end  # "Martin Beckenbauer": a listed first name, a capitalised unknown surname
            # A middle name or initial may sit between first name and surname.
            if offset == 1 and (nxt.key in self._names.first or _INITIAL.fullmatch(nxt.text)):
                cursor = nxt.end
                continue
            return None
        return None

    def _middle_initial(self, text: str, tokens: list[_Token], index: int) -> bool:
        """A capital letter between two name words ("Liberal A Aranda"); "a" and "I" are common words too."""
        token = tokens[index]
        if len(token.text) != 1 or not token.text.isupper() or index + 1 >= len(tokens):
            return False
        nxt = tokens[index + 1]
        return (
            _GAP.fullmatch(text[token.end : nxt.start]) is not None
            and nxt.proper
            and not self._is_common(nxt)
        )

    def _unlisted_pair(self, text: str, tokens: list[_Token], index: int) -> bool:
        """Two proper words inside a sentence, between lower-case words, where the cues allow it.

        "Gestern hat Heilka Brüggemann angerufen": a lower-case word (or a comma) before, a lower-case
        word or punctuation after, neither word common, a function word or shaped like a noun ("-ung"), and
        no model number after ("Galaxy S21"). A pair at the start of a sentence is no evidence.
        """
        if not self._cues.unlisted_pairs or index == 0 or index + 1 >= len(tokens):
            return False
        before, head, nxt = tokens[index - 1], tokens[index], tokens[index + 1]
        if not (head.proper and nxt.proper) or len(head.text) < 2 or len(nxt.text) < 2:
            return False
        if self._is_common(head) or self._is_common(nxt) or head.key in self._names.first:
            return False  # a listed first name is the list-pair rule's
        if _NOUN_ENDING.search(head.key) or _NOUN_ENDING.search(nxt.key):
            return False
        if not _BLANKS.fullmatch(text[head.end : nxt.start]):
            return False
        gap_before = text[before.end : head.start]
        blank_before = _BLANKS.fullmatch(gap_before) is not None
        lower_before = blank_before and before.text.islower()
        # "Ayer Yeray Zuloaga llamó": a function word opening the sentence is as good as a lower-case one.
        opening = (
            blank_before
            and (before.key in self._lower_common or before.key in self._common)
            and (index < 2 or text[: before.start].rstrip()[-1:] in ("", ".", "!", "?", "\n"))
        )
        if not (lower_before or opening or re.fullmatch(r"[ \t]*[,:;][ \t]*", gap_before)):
            return False
        after = text[nxt.end : nxt.end + 12]
        if re.match(r"[ \t]*[\w-]*\d", after):
            return False  # "Galaxy S21", "Straße 12"
        following = tokens[index + 2] if index + 2 < len(tokens) else None
        # Three or more capitalised words: a title or an organisation, more likely.
        return not (
            following is not None
            and following.proper
            and _BLANKS.fullmatch(text[nxt.end : following.start]) is not None
        )

    def _introduced_name_end(self, text: str, tokens: list[_Token], index: int) -> int | None:
        """End of one or two words in any case after an introduction, if a clause ends after them.

        ("mein Name ist gismund zwirnlein, ..."; "mein Name ist leider falsch geschrieben" is no name: the
        words after it go on.)
        """
        end = None
        for position in range(index, min(index + 2, len(tokens))):
            token = tokens[position]
            if len(token.text) == 1:
                return None  # an initial: the cue rules read "Perpetua F. Oakenshaw" whole
            if self._is_common(token) or token.key in self._lower_common:
                break
            if position > index and not _BLANKS.fullmatch(text[tokens[position - 1].end : token.start]):
                break
            end = token.end
            rest = text[end:]
            following = tokens[position + 1] if position + 1 < len(tokens) else None
            if re.match(r"[ \t]*(?:[,.;:!?)\n]|$)", rest) or (
                following is not None
                and _BLANKS.fullmatch(text[end : following.start])
                and (self._is_common(following) or following.key in self._lower_common)
            ):
                return end
        return None

    def _announced_by_following_word(
        self, text: str, tokens: list[_Token]
    ) -> list[tuple[int, int, float, str]]:
        """One or two proper words before the language's "here", opening a clause: "Hey, Millicent here."."""
        if self._name_then is None:
            return []
        found = []
        for match in self._name_then.finditer(text):
            start = match.start()
            before = text[:start].rstrip(" \t")
            if before and before[-1] not in ",.!?:;\n":
                continue
            words = [t for t in tokens if start <= t.start and t.end <= match.end("name")]
            if words and all(w.proper and not self._is_common(w) for w in words):
                found.append((words[0].start, words[-1].end, self.WEAK_CUE_SCORE, "name before a cue"))
        return found

    def _signature(self, text: str, tokens: list[_Token]) -> tuple[int, int] | None:
        """One to three proper words alone after the last sentence of the message ("... PUNT nl. Hylke")."""
        if not self._cues.signature_names or not tokens:
            return None
        if not re.fullmatch(r"[ \t.!\n]*", text[tokens[-1].end :]):
            return None
        for position in range(len(tokens) - 1, max(-1, len(tokens) - 4), -1):
            token = tokens[position]
            if not token.proper or self._is_common(token) or token.key in self._lower_common:
                return None
            if position < len(tokens) - 1 and not _BLANKS.fullmatch(
                text[token.end : tokens[position + 1].start]
            ):
                return None
            before = text[: token.start].rstrip(" \t")
            if not before:
                return None  # the whole message: a greeting or a word, not a signature
            if before.endswith(("\n", ".", "!", "?", "-", "\u2013", "\u2014")):
                return token.start, tokens[-1].end
        return None

    def _full_name(self, text: str, tokens: list[_Token], index: int) -> bool:
        """Two proper, uncommon words from ``index`` ("Ich bin Almtraud Haverkamp"), if the cues allow it."""
        if not self._cues.full_names_after_weak_cues or index + 1 >= len(tokens):
            return False
        head, nxt = tokens[index], tokens[index + 1]
        return (
            head.proper
            and nxt.proper
            and not self._is_common(nxt)
            and _BLANKS.fullmatch(text[head.end : nxt.start]) is not None
        )

    def _cued_name_end(self, text: str, tokens: list[_Token], index: int, *, strong: bool) -> int | None:
        """End of one to three name-like words (particles not counted) starting at ``index`` after a cue."""
        head = tokens[index]
        if self._is_common(head):
            return None
        if not (
            self._is_known(head) or (strong and head.capitalised) or self._full_name(text, tokens, index)
        ):
            return None
        end = head.end
        words = 1
        position = index + 1
        while words < 3 and position < len(tokens):
            nxt = tokens[position]
            gap = text[end : nxt.start]
            if not re.fullmatch(r"[ \t]+|\.[ \t]+", gap):
                break
            surname = self._after_particles(text, tokens, position, capitalised=head.capitalised)
            if surname is not None:
                end, position, words = tokens[surname].end, surname + 1, words + 1
                continue
            if self._is_common(nxt) and not self._middle_initial(text, tokens, position):
                break
            if not (
                self._is_known(nxt) or (nxt.capitalised and head.capitalised) or _INITIAL.fullmatch(nxt.text)
            ):
                break
            end, position, words = nxt.end, position + 1, words + 1
        return end
