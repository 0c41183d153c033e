r"""Recognizers built from a ``LanguageProfile``: street addresses, postcodes, birth dates, reference labels.

English text is served by the recognizers of ``custos.privacy.analyzer`` alone; every other language gets
those (e-mail, card, IBAN, ... read the same in any language) plus the ones here, which know its street words
("Hauptstraße 12", "12 rue de la Paix", "Via Roma 10"), postcodes before a town ("10115 Berlin",
"1012 AB Amsterdam", "1100-148 Lisboa"), birth-date labels ("geboren am", "né le") and reference labels
("Kundennummer", "numéro de commande").

Every pattern is linear in its input: repeats are bounded, no repeat nests another that can match the same
text, and the label before a value is dropped from the match with ``\K`` rather than a look-behind (which is
tried backwards at every position).
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import regex
from presidio_analyzer import (
    AnalysisExplanation,
    EntityRecognizer,
    LocalRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import SpacyRecognizer

from custos.privacy.languages import LanguageProfile
from custos.privacy.recognizers import CrmReferenceSpec

# A capitalised word of a street or town name ("Paix", "Karl-Marx", "Sant'Angelo", "St.").
_NAME_WORD = r"\p{Lu}[\p{L}'\u2019\-.]{0,30}"
# Words inside a street name in lower case: "Rue de la Paix", "Calle de los Reyes", "Rua do Ouro".
_CONNECTORS = (
    "de", "del", "della", "delle", "dei", "degli", "dello", "des", "du", "di", "da", "do", "dos", "das", "la",
    "las", "los", "le", "les", "van", "von", "der", "den", "het", "al", "ao", "à", "aux", "e", "y", "sur",
)  # fmt: skip
_CONNECTOR = rf"(?:(?i:{'|'.join(_CONNECTORS)})[ \t]+|(?i:d|l|dell|dall|all|sull|nell)['\u2019])"
# A street name after its street word: up to five words, the last one capitalised.
_STREET_NAME = rf"(?:{_CONNECTOR}|{_NAME_WORD}[ \t]+|\d{{1,2}}[ \t]+){{0,4}}{_NAME_WORD}"
# Words that end a street name written in lower case ("12 rue de la gare et ..."): conjunctions, pronouns.
_STOP = (
    "et", "ou", "pour", "avec", "mais", "je", "nous", "vous", "il", "elle", "qui", "que", "est", "depuis",
    "merci", "per", "con", "ma", "che", "para", "com", "mas", "en", "op", "met", "voor", "maar", "und",
    "oder", "mit", "für", "aber", "bitte", "and", "or", "please", "ist",
)  # fmt: skip
_ANY_WORD = rf"(?!(?i:{'|'.join(_STOP)})\b)[\p{{L}}'\u2019\-]{{1,30}}"
# A house number: "12", "12a", "12 A", "12-14", "12/1", "12-II", "12 bis", "12 bus 3" (Belgium).
_HOUSE_NUMBER = (
    r"\d{1,4}(?:[ \t]?[a-zA-Z](?![\p{L}])|[\-/]\d{1,4}|[ \t]*-[ \t]*[IVX]{1,4}\b"
    r"|[ \t]+(?i:bis|ter)\b|[ \t]+(?i:bus|bte|boîte)[ \t]*\d{1,4})?"
)
# Floor and door after a Spanish, Portuguese or Italian number: ", 3º B", " 2.º Esq.", ", int. 4".
_FLOOR = (
    r"(?:,?[ \t]*(?:\d{1,2}[.]?[º°ª](?:[ \t]*[A-Z](?![\p{L}])|[ \t]*(?i:izq|izda|dcha|dch|esq|dto|drt)\.?)?"
    r"|,?[ \t]*(?i:int|scala|piso|andar)\.?[ \t]*\w{1,4}))?"
)
_NUMBER_FIRST = r"\b\d{1,4}(?:[ \t]*(?i:bis|ter|[a-d])\b)?,?[ \t]+"
#: Street words that mean nothing else (unlike "cours", "route", "place"): a street name after them may be
#: written in lower case.
_UNAMBIGUOUS_STREET_WORDS = frozenset({"rue", "avenue", "boulevard", r"bd\.?", "allée", "impasse", "quai"})
_NUMBER_LABEL = r"(?:(?i:n[º°o]?\.?|nº|núm\.?|nr\.?|civico)[ \t]*)?"
# A town after a postcode: "Berlin", "Frankfurt am Main", "Aix-en-Provence", "Den Haag".
_TOWN_LINK = r"(?i:am|an|der|de|del|di|sur|en|im|bei|in|la|le|les|sous|aan|den|op|ob|do|da)"
_NOT_TOWN = (
    r"(?!(?:Euro|EUR|Uhr|Stück|Mal|Tage|Jahre|Minuten|Stunden|Punkte|Bitte|Danke|Kunden|Kilometer|Meter|Km|"
    r"Dollar|USD|Francs|Jours|Ans|Heures|Días|Años|Horas|Giorni|Anni|Ore|Dias|Anos|Dagen|Jaar|Uur)\b)"
)
_TOWN_WORD = r"\p{Lu}[\p{L}'\u2019\-]{1,30}"
_TOWN = rf"{_NOT_TOWN}{_TOWN_WORD}(?:[ \t]+(?:{_TOWN_LINK}[ \t]+)?{_TOWN_WORD}){{0,2}}"
# Where a postcode and town may start: a line, a comma, or a preposition ("in 10115 Berlin", "à 75001 Paris").
_BEFORE_POSTCODE = (
    r"(?:^|[,;:(\n]|\b(?i:in|à|a|en|em|te|nach|aus|bei|per|da|de|naar|uit|op|cp|c\.p\.|plz|cap))[ \t]*\K"
)

_SPAN_WORD = re.compile(r"[^\W\d_]+")

#: Score of a street address (the English recognizer's, 0.6) and of a postcode and town.
STREET_SCORE = 0.6
POSTCODE_TOWN_SCORE = 0.5


def _alternation(fragments: Iterable[str]) -> str:
    return "|".join(sorted(fragments, key=len, reverse=True))


class LocalStreetAddressRecognizer(PatternRecognizer):
    """Street addresses and postcode-and-town lines of one language, from its profile's street words."""

    def __init__(self, profile: LanguageProfile) -> None:
        patterns: list[Pattern] = []
        if profile.street_before:
            before = _alternation(profile.street_before)
            patterns += [
                # "Via Roma 10", "Calle Mayor, 5, 3º B", "Rua Augusta, n.º 100", "Laan van Meerdervoort 5".
                Pattern(
                    "street word, street name, number",
                    rf"\b(?i:{before})[ \t]+{_STREET_NAME},?[ \t]*{_NUMBER_LABEL}{_HOUSE_NUMBER}"
                    rf"(?![\d\p{{L}}]){_FLOOR}",
                    STREET_SCORE,
                ),
                # "12 rue de la Paix", "12, Avenue Victor Hugo": the number first, a capitalised name.
                Pattern(
                    "number, street word, street name",
                    rf"{_NUMBER_FIRST}(?i:{before})[ \t]+{_STREET_NAME}",
                    STREET_SCORE,
                ),
            ]
            plain = [word for word in profile.street_before if word in _UNAMBIGUOUS_STREET_WORDS]
            if plain:
                # "12 rue de la gare": in lower case only after a word that is nothing but a street word
                # ("12 cours de yoga" is no address).
                patterns.append(
                    Pattern(
                        "number, street word, street name in lower case",
                        rf"{_NUMBER_FIRST}(?i:{_alternation(plain)})[ \t]+"
                        rf"(?:{_CONNECTOR}|{_ANY_WORD}[ \t]+){{0,3}}{_ANY_WORD}",
                        STREET_SCORE,
                    )
                )
        if profile.street_after:
            after = _alternation(profile.street_after)
            patterns.append(
                # "Hauptstraße 12", "Karl-Marx-Str. 3a", "Berliner Straße 5", "Prinsengracht 263-267".
                Pattern(
                    "street name with street word, number",
                    rf"\b(?:\p{{Lu}}[\p{{L}}\-]{{0,30}}?(?i:{after})"
                    rf"|(?:{_NAME_WORD}[ \t]+){{1,2}}(?=\p{{Lu}})(?i:{after}))"
                    rf"(?![\p{{L}}])[ \t]+{_HOUSE_NUMBER}(?![\d\p{{L}}])",
                    STREET_SCORE,
                )
            )
        if profile.postcodes:
            postcodes = _alternation(profile.postcodes)
            patterns.append(
                Pattern(
                    "postcode and town",
                    rf"{_BEFORE_POSTCODE}(?:{postcodes})[ \t]+{_TOWN}",
                    POSTCODE_TOWN_SCORE,
                )
            )
        super().__init__(
            supported_entity="STREET_ADDRESS",
            name=f"LocalStreetAddressRecognizer[{profile.code}]",
            supported_language=profile.code,
            patterns=patterns,
            context=list(profile.address_context),
            # Case matters: capitalised street and town names are part of the evidence.
            global_regex_flags=re.DOTALL | re.MULTILINE,
        )


_NUMERIC_DATES = (
    r"\d{1,2}[./\-]\d{1,2}[./\-](?:19|20)?\d{2}",
    r"(?:19|20)\d{2}[./\-]\d{1,2}[./\-]\d{1,2}",
)


class LocalDateOfBirthRecognizer(PatternRecognizer):
    r"""A date after one of the language's birth labels ("geboren am 3. März 1985", "né le 12/03/1985").

    As in English, only a labelled date counts (delivery and due dates are no personal data); ``\K`` drops
    the label, so the date alone is masked.
    """

    def __init__(self, profile: LanguageProfile) -> None:
        month = rf"(?:{_alternation(profile.months)})" if profile.months else None
        dates = list(_NUMERIC_DATES)
        if month is not None:
            # "3. März 1985", "12 mars 1985", "3 de marzo de 1985", "1º de maio de 1990", "12 maart 1985".
            dates.append(
                rf"\d{{1,2}}(?:\.|º|°|er|o)?[ \t]+(?:de[ \t]+)?{month}[ \t]+(?:de[ \t]+)?(?:19|20)\d{{2}}"
            )
        labels = _alternation(profile.birth_labels)
        regex = rf"\b(?:{labels})[ \t]*[:\-]?[ \t]*\K(?:{'|'.join(dates)})(?![\d\p{{L}}])"
        super().__init__(
            supported_entity="DATE_OF_BIRTH",
            name=f"LocalDateOfBirthRecognizer[{profile.code}]",
            supported_language=profile.code,
            patterns=[Pattern("date after a birth label", regex, 0.85)],
            context=[],
        )


#: A word of a town name after its first one ("Frankfurt am Main", "Bergen op Zoom", "Reggio nell'Emilia").
_TOWN_NAME_WORD = r"[\p{L}][\p{L}'\u2019\-]{0,40}"
_MAX_TOWN_WORDS = 5


@functools.cache
def faker_towns(sources: tuple[tuple[str, str], ...]) -> frozenset[str]:
    """Case-folded town names from Faker's address providers (bundled, offline): (locale, attribute)."""
    towns: set[str] = set()
    for locale, attribute in sources:
        provider = importlib.import_module(f"faker.providers.address.{locale}").Provider
        for town in getattr(provider, attribute, ()):
            towns.add(" ".join(town.split()).casefold())
    return frozenset(towns)


class LocalTownRecognizer(LocalRecognizer):
    """A listed town after a place preposition, where the language has no NER model: "nach Lüneburg".

    The towns are the language's Faker town (or province) lists; a town counts only capitalised and right
    after one of the profile's ``place_prepositions``, the longest listed name of up to five words, so a
    town that is also a word ("Ora", "Best") is masked only where the sentence names a place. Words that
    are function words of the language are never a town on their own. Linear: one bounded look-ahead at
    each preposition.
    """

    SCORE = 0.6

    def __init__(self, profile: LanguageProfile) -> None:
        from custos.privacy.language import language_stop_words

        self._towns = faker_towns(profile.town_sources) - frozenset(language_stop_words(profile.code))
        prepositions = _alternation(regex.escape(word) for word in profile.place_prepositions)
        self._pattern = regex.compile(
            rf"\b(?i:{prepositions})[ \t]+(?=(\p{{Lu}}[\p{{L}}'\u2019\-]{{0,40}}"
            rf"(?:[ \t]+{_TOWN_NAME_WORD}){{0,{_MAX_TOWN_WORDS - 1}}}))"
        )
        self._name = f"LocalTownRecognizer[{profile.code}]"
        super().__init__(
            supported_entities=["LOCATION"],
            supported_language=profile.code,
            name=self._name,
            context=[],
        )

    def load(self) -> None:
        """Nothing to load: the lists are read when the recognizer is built."""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        """One result per listed town after a place preposition."""
        results = []
        for match in self._pattern.finditer(text):
            start = match.start(1)
            words = list(regex.finditer(r"\S+", match.group(1)))
            for count in range(len(words), 0, -1):
                end = words[count - 1].end()
                if " ".join(word.group() for word in words[:count]).casefold() in self._towns:
                    results.append(self._result(start, start + end))
                    break
        return results

    def _result(self, start: int, end: int) -> RecognizerResult:
        return RecognizerResult(
            entity_type="LOCATION",
            start=start,
            end=end,
            score=self.SCORE,
            analysis_explanation=AnalysisExplanation(
                recognizer=self._name,
                original_score=self.SCORE,
                textual_explanation="listed town after a place preposition",
            ),
            recognition_metadata={
                RecognizerResult.RECOGNIZER_NAME_KEY: self._name,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
            },
        )


def localized_crm_specs(
    profile: LanguageProfile, specs: Mapping[str, CrmReferenceSpec]
) -> dict[str, CrmReferenceSpec]:
    """``specs`` with the language's label words added ("Kundennummer", "n° de commande", "lautet")."""
    number = rf"(?:[ \t]*(?:{_alternation(profile.number_words)}))?" if profile.number_words else ""
    copula = rf"(?:[ \t]+(?:{_alternation(profile.copulas)}))?" if profile.copulas else ""
    localized: dict[str, CrmReferenceSpec] = {}
    for entity, spec in specs.items():
        extra = tuple(f"(?:{label}){number}{copula}" for label in profile.crm_labels.get(entity, ()))
        localized[entity] = CrmReferenceSpec(entity, (*spec.labels, *extra), spec.score)
    return localized


def add_context_words(recognizers: Sequence[EntityRecognizer], profile: LanguageProfile) -> None:
    """Give each recognizer the language's context words for its entity type (kept after the English ones)."""
    for recognizer in recognizers:
        extra = [
            word for entity in recognizer.supported_entities for word in profile.context_words.get(entity, ())
        ]
        if extra:
            recognizer.context = list(dict.fromkeys([*(recognizer.context or []), *extra]))


def profile_recognizers(profile: LanguageProfile, entities: Iterable[str]) -> list[EntityRecognizer]:
    """The recognizers this module adds for ``profile``, for those of ``entities`` they detect."""
    wanted = set(entities)
    added: list[EntityRecognizer] = []
    if "STREET_ADDRESS" in wanted and (profile.street_before or profile.street_after or profile.postcodes):
        added.append(LocalStreetAddressRecognizer(profile))
    if "DATE_OF_BIRTH" in wanted and profile.birth_labels:
        added.append(LocalDateOfBirthRecognizer(profile))
    if "LOCATION" in wanted and profile.town_sources and profile.place_prepositions and not profile.has_ner:
        added.append(LocalTownRecognizer(profile))
    return added


class TitleFilteringSpacyRecognizer(SpacyRecognizer):
    """Presidio's spaCy recognizer without PERSON spans made of titles and greetings alone.

    French NER tags "Madame" and "Monsieur" in "Madame, Monsieur," as persons; such a span names no one.
    A span with any other word ("Monsieur Lachaume") is kept whole. The small French model also takes a
    verb opening a sentence for a person or place ("Livrez-vous à Lyon ?", "Répondez à ..."): a single word
    with one of ``verb_endings`` at the start of a sentence, followed by a hyphen or a lower-case word, is
    dropped too.
    """

    def __init__(
        self, *, never_names: frozenset[str], verb_endings: tuple[str, ...] = (), **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._never_names = never_names
        self._verb_start = (
            re.compile(rf"[^\W\d_]{{2,31}}(?:{'|'.join(verb_endings)})(?=-|[ \t]+[^\W\d_])")
            if verb_endings
            else None
        )

    def _sentence_initial_verb(self, text: str, result: RecognizerResult) -> bool:
        if self._verb_start is None or result.entity_type not in ("PERSON", "LOCATION"):
            return False
        before = text[: result.start].rstrip()
        if before and before[-1] not in ".!?\n":
            return False
        match = self._verb_start.match(text, result.start)
        if match is None or match.end() != result.end or not text[result.start].isupper():
            return False
        following = text[result.end :].lstrip(" \t")
        return following.startswith("-") or following[:1].islower()

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        """The entities spaCy found, less the PERSON spans whose every word is a title or a common word."""
        results = super().analyze(text, entities, nlp_artifacts)
        return [
            r
            for r in results
            if not self._sentence_initial_verb(text, r)
            and (
                r.entity_type != "PERSON"
                or not all(
                    w.casefold() in self._never_names for w in _SPAN_WORD.findall(text[r.start : r.end])
                )
            )
        ]
