r"""Recognizers Presidio lacks (CRM references, dates of birth, street addresses) and a faster phone one.

CRM reference formats differ per deployment, so those recognizers key on the label in front of the ID
("order #A-1234", "customer no. 55120", "Kundennummer: 4711") rather than on the ID's shape. The label is
matched and then dropped from the match with ``\K`` (the ``regex`` module Presidio matches with), so only
the ID itself is masked and the model still reads "order <ORDER_ID_1>". ``\K`` rather than a look-behind: a
look-behind is tried backwards at every position of the text and made these patterns thirty times slower.

Every pattern here runs in time linear in its input: repeats are bounded or possessive (``*+``), so a label
followed by 30,000 spaces or a 30,000-character hyphenated word costs one pass, not one pass per position
(that took 9-25 s). ``BackstopPatternMixin`` is the backstop for a pattern that regresses.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import phonenumbers
import regex
from phonenumbers.phonemetadata import PhoneMetadata
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import PhoneRecognizer

from custos.privacy.patterns import BackstopPatternMixin


@dataclass(frozen=True)
class CrmReferenceSpec:
    """One CRM reference type: the entity name and the label words that announce it."""

    entity_type: str
    labels: tuple[str, ...]
    score: float = 0.6


#: Label words of the built-in reference types and their usual abbreviations, in English, German, French,
#: Spanish, Italian, Portuguese and Dutch. German and Dutch compounds match by their first part ("Kunden" +
#: "nummer", "klant" + "nr"); an abbreviation that is also an English word is listed with its dot ("best.").
_CRM_LABELS = {
    "CUSTOMER_ID": "customer cust cst client clt cli member membership kunde kunden kd cliente klant "
    "klanten abonné abonnee socio",
    "ACCOUNT_ID": "account acct acc konto kto kundenkonto compte cpte cpt cuenta cta conto c/c conta "
    "rekening klantaccount",
    "ORDER_ID": "order ord purchase_order po invoice inv contract bestellung bestell best. auftrag auftrags "
    "rechnung rechnungs commande cde cmd facture pedido factura ordine fattura encomenda fatura bestelling "
    "bestel factuur",
    "TICKET_ID": "ticket tkt tck case incident incid reference ref réf vorgang vorgangs dossier incidencia "
    "caso pratica chamado protocolo melding zaak suporte soporte",
}

#: Registry by entity type; extend here (or pass extra specs to ``build_analyzer``) for new reference types.
CRM_REFERENCE_SPECS: Mapping[str, CrmReferenceSpec] = {
    entity: CrmReferenceSpec(entity, tuple(word.replace("_", " ") for word in words.split()))
    for entity, words in _CRM_LABELS.items()
}

# Before the label: "n°", "no.", "número de", "cod.", "réf." ("n° client", "numero d'ordine", "cod.cli.").
_LABEL_PREFIX = (
    r"(?:(?:n[°º]|n\.[ \t]?º|n\.|no\.|nr\.?|num\.|numero|número|numéro|cod\.?|code|codice|código|ref\.|réf\.)"
    r"[ \t]*+(?:(?:de|del|da|do|di)[ \t]++|d'[ \t]*+)?)?"
)
# After it, in any combination: "id", "no.", "nummer", "n°", "#", "(Kunde)", "is", ":". A compound
# ("Kundennr", "meldingnr") has the suffix right after the label; otherwise the label must end its word
# ("accountant" is no label). Possessive spaces: a label followed by a long run of spaces is one pass, not
# one per split.
_SUFFIX_WORD = r"(?:reference|nummer|number|numéro|número|numero|n\.[ \t]?º|code|num|ref|n[°º]|id|no|nr)\.?"
_LABEL_SUFFIX = (
    rf"(?:{_SUFFIX_WORD}|(?![^\W\d_]))"
    rf"(?:[ \t]*+[.\-]{{0,2}}+[ \t]*+{_SUFFIX_WORD}){{0,2}}"
    r"(?:[ \t]*+\([^()\n]{1,24}+\))?"
    r"(?:[ \t]++(?:is|was|ist|lautet|est|es|[eèé]))?[ \t]*+[:#=.]?[ \t]*+#?[ \t]*+"
)
# Words that are no prefix of an ID ("order on 12/03", "ticket for 4711").
_NOT_ID_PREFIX = r"(?!(?:on|at|in|for|of|to|from|by|is|was|am|im|vom|and|und|the|le|la|du|de|el|il|em|op)\b)"
_DIGIT_GROUPS = r"\d{1,12}+(?:[ .\-/]\d{2,12}+){0,4}+"
_ID_TAIL = r"(?:[\-/]?[A-Z][A-Z0-9]{0,7}+)?(?![A-Z0-9])"
# An ID, bounded (IDs are short, so no look-ahead scans a long word):
# * letters, then a separator, then 3+ digits in groups: "ORD-55120", "ord.8059839", "c 6511787", "INC 4711";
# * 4+ digits in groups, with a letter tail: "981 7064", "2022/7876941", "88213-B";
# * any 4+ characters of letters, digits and inner "/", "_", "-" with a digit: "A1B2C3D4", "X-77-Q".
_ID = (
    r"(?:"
    rf"{_NOT_ID_PREFIX}[A-Z]{{1,5}}+[ .\-/_#:]{{0,2}}+(?=(?:[ .\-/]?\d){{3}}){_DIGIT_GROUPS}{_ID_TAIL}"
    rf"|(?=(?:[ .\-/]?\d){{4}}){_DIGIT_GROUPS}{_ID_TAIL}"
    r"|(?=[A-Z0-9/_-]{0,63}[0-9])[A-Z0-9](?:[A-Z0-9/_-]{2,62}[A-Z0-9])\b"
    r")"
)


def crm_reference_regex(labels: tuple[str, ...]) -> str:
    r"""Return the regex for one reference type; ``\K`` drops the label from the match, keeping the ID."""
    escaped = (re.escape(word).replace(r"\ ", r"[ \t]+") for word in labels)
    words = "|".join(sorted(escaped, key=len, reverse=True))
    return rf"(?<![^\W\d_]){_LABEL_PREFIX}(?:{words}){_LABEL_SUFFIX}\K{_ID}"


class CrmReferenceRecognizer(BackstopPatternMixin, PatternRecognizer):
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


def _words(text: str) -> str:
    """A regex alternation of the words of ``text``, longest first (so "june" is tried before "jun")."""
    return "|".join(sorted(set(text.split()), key=lambda w: (-len(w), w)))


#: Month names and abbreviations in English, German, French, Spanish, Italian, Portuguese and Dutch.
_MONTH_NAMES = """
    january february march april may june july august september october november december
    jan feb mar apr jun jul aug sep sept oct nov dec
    januar jänner februar märz maerz mai juni juli oktober dezember
    janvier février fevrier mars avril juin juillet août aout septembre octobre novembre décembre decembre
    enero febrero marzo abril mayo junio julio agosto septiembre setiembre octubre noviembre diciembre
    gennaio febbraio aprile maggio giugno luglio settembre ottobre dicembre
    janeiro fevereiro março marco maio junho julho setembro outubro novembro dezembro
    januari februari maart mei augustus
"""
_UNITS = "one two three four five six seven eight nine"
_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen"
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety"
_ORDINALS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
    "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth thirtieth"
)
_SEP = r"[ \t-]"
#: Days of the month in words in German (ordinals, stem + ending), French, Spanish, Italian, Portuguese and
#: Dutch, as a birth date is written after its label ("am zwölften Mai", "le douze mai", "el nueve de mayo").
_DE_ORDINAL_STEMS = (
    "erst zweit dritt viert fünft fuenft sechst siebt acht neunt zehnt elft zwölft zwoelft dreizehnt "
    "vierzehnt fünfzehnt sechzehnt siebzehnt achtzehnt neunzehnt zwanzigst einundzwanzigst "
    "zweiundzwanzigst dreiundzwanzigst vierundzwanzigst fünfundzwanzigst sechsundzwanzigst "
    "siebenundzwanzigst achtundzwanzigst neunundzwanzigst dreißigst dreissigst einunddreißigst"
)
_FOREIGN_DAY_WORDS = (
    # French
    "premier un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze seize "
    "dix-sept dix-huit dix-neuf vingt vingt_et_un vingt-deux vingt-trois vingt-quatre vingt-cinq vingt-six "
    "vingt-sept vingt-huit vingt-neuf trente trente_et_un "
    # Spanish
    "primero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce quince dieciséis "
    "diecisiete dieciocho diecinueve veinte veintiuno veintidós veintitrés veinticuatro veinticinco "
    "veintiséis veintisiete veintiocho veintinueve treinta treinta_y_uno "
    # Italian
    "primo due tre quattro cinque sei sette otto nove dieci undici dodici tredici quattordici quindici "
    "sedici diciassette diciotto diciannove venti ventuno ventidue ventitré ventiquattro venticinque "
    "ventisei ventisette ventotto ventinove trenta trentuno "
    # Portuguese
    "primeiro um dois três quatro sete oito dez doze treze catorze quatorze dezasseis dezesseis dezassete "
    "dezessete dezoito dezanove dezenove vinte vinte_e_um vinte_e_dois vinte_e_três vinte_e_quatro "
    "vinte_e_cinco vinte_e_seis vinte_e_sete vinte_e_oito vinte_e_nove trinta trinta_e_um "
    # Dutch
    "eerste een één twee drie vier vijf zes zeven negen tien elf twaalf dertien veertien vijftien zestien "
    "zeventien achttien negentien twintig eenentwintig tweeëntwintig drieëntwintig vierentwintig "
    "vijfentwintig zesentwintig zevenentwintig achtentwintig negenentwintig dertig eenendertig"
)


def _spaced_words(text: str) -> str:
    """Like ``_words``; an underscore in a word stands for spaces ("vingt_et_un")."""
    return _words(text).replace("_", r"[ \t]+")


class DateOfBirthRecognizer(BackstopPatternMixin, PatternRecognizer):
    r"""A date announced as a birth date ("born 12/03/1985", "DOB: 1985-03-12", "geboren am 3. März 1985").

    Plain dates are not personal data in CRM text (delivery and due dates), so only a date after a birth
    label counts; ``\K`` drops the label from the match, so the date alone is masked. This is what Presidio's
    DATE_TIME recognizer (off in Custos: it fires on every "Monday" and delivery date) caught when it was
    right, so the dates are those it finds: numeric in any order, with month names in seven languages, in
    words ("the twelfth of March nineteen eighty-five"), with or without the year, or a year alone. Up to
    three words may stand between the label and the date ("born in Lyon on 3 March 1985").
    """

    _LABEL = (
        r"\b(?:"
        # English
        r"born|d\.?o\.?b\.?|date[ \t]+of[ \t]+birth|birth[ \t]*date|birthday|b-?day"
        # German, Dutch
        r"|geboren|geb\.|geburtsdatum|geburtstag|geb\.?[ \t]*datum|geboortedatum|verjaardag"
        # French, Spanish, Italian, Portuguese ("nací", "nasci", "nacque": I/he was born)
        r"|n[ée]e?|date[ \t]+de[ \t]+naissance|anniversaire|nacid[oa]|nac[ií]|fecha[ \t]+de[ \t]+nacimiento"
        r"|cumpleaños|nat[oa]|nacque|data[ \t]+di[ \t]+nascita|compleanno|nascid[oa]|nasci|nasceu"
        r"|data[ \t]+de[ \t]+nascimento|anivers[aá]rio"
        r")\b"
        # "is", "was", ":", "on the": bounded, possessive.
        r"(?:[ \t]++(?:is|was|ist|war|est|es|era|è|é|foi|is))?[ \t]*+[:=\-]?"
        # Up to three words before the date ("in Lyon on"), lazily, so the nearest date is taken.
        r"[ \t]*+(?:[^\W\d_]{1,30}+[ \t,]{1,3}+){0,3}?(?:the[ \t]++)?\K"
    )
    _MONTH = rf"(?:{_words(_MONTH_NAMES)})\.?"
    _DAY = r"(?:[0-2]?\d|3[01])(?:st|nd|rd|th|er|º|°|\.)?"
    _DAY_WORD = (
        rf"(?:(?:twenty|thirty){_SEP}(?:{_words(_ORDINALS)}|{_words(_UNITS)})|{_words(_ORDINALS)}"
        rf"|{_words(_TEENS)}|{_words(_UNITS)}|twenty|thirty"
        rf"|(?:{_words(_DE_ORDINAL_STEMS)})(?:en|er|e)|{_spaced_words(_FOREIGN_DAY_WORDS)})"
    )
    _YEAR = r"(?:19|20)\d{2}"
    _YEAR_WORD = (
        rf"(?:nineteen{_SEP}(?:hundred{_SEP}(?:and{_SEP})?)?(?:(?:{_words(_TENS)})(?:{_SEP}(?:{_words(_UNITS)}))?"
        rf"|{_words(_TEENS)}|oh{_SEP}(?:{_words(_UNITS)}))"
        rf"|two{_SEP}thousand(?:{_SEP}and)?(?:{_SEP}(?:{_words(_TEENS)}|{_words(_UNITS)}|twenty))?"
        rf"|twenty{_SEP}(?:oh{_SEP})?(?:{_words(_UNITS)}|{_words(_TEENS)}|twenty))"
    )
    _OF = r"(?:[ \t]++(?:of|de|del|di))?"
    _DATES = (
        r"\d{1,2}[./\-]\d{1,2}[./\-](?:19|20)?\d{2}",
        r"(?:19|20)\d{2}[./\-]\d{1,2}[./\-]\d{1,2}",
        r"\d{1,2}[ \t]\d{1,2}[ \t](?:19|20)\d{2}",
        rf"(?:{_DAY}|{_DAY_WORD}){_OF}[ \t]++{_MONTH}(?:,?[ \t]++(?:de[ \t]++)?(?:{_YEAR}|{_YEAR_WORD}))?",
        rf"{_MONTH}[ \t]++(?:the[ \t]++)?(?:{_DAY}|{_DAY_WORD})(?:,?[ \t]++(?:{_YEAR}|{_YEAR_WORD}))?",
    )
    # A year alone only after "born in" (and its translations) or a birth-year label: "born in 1985".
    _BORN_IN = (
        r"\b(?:born|geboren|n[ée]e?|nacid[oa]|nat[oa]|nascid[oa])[ \t]++(?:in|im|en|nel|em|no)[ \t]++\K"
    )
    _YEAR_LABEL = (
        r"\b(?:year[ \t]+of[ \t]+birth|birth[ \t]*year|geburtsjahr|ann[ée]e[ \t]+de[ \t]+naissance"
        r"|año[ \t]+de[ \t]+nacimiento|anno[ \t]+di[ \t]+nascita|ano[ \t]+de[ \t]+nascimento|geboortejaar)"
        r"(?:[ \t]++(?:is|was))?[ \t]*+[:=\-]?[ \t]*+\K"
    )

    # German and Dutch put the participle last: "ich bin am 22.09.1969 geboren", "op 3 mei 1980 geboren".
    _BORN_AFTER = r"(?=[ \t,]{1,3}+(?:[^\W\d_]{1,20}+[ \t]{1,3}+){0,2}?geboren\b)"
    # That pattern may start at any date, so it only runs on text that has the word.
    pattern_prefilters: ClassVar[Mapping[str, regex.Pattern[str]]] = {
        "date before 'geboren'": regex.compile(r"(?i)geboren")
    }

    def __init__(self, *, supported_language: str = "en") -> None:
        year = rf"(?:{self._YEAR}|{self._YEAR_WORD})\b"
        super().__init__(
            supported_entity="DATE_OF_BIRTH",
            name="DateOfBirthRecognizer",
            supported_language=supported_language,
            patterns=[
                Pattern("date after a birth label", rf"{self._LABEL}(?:{'|'.join(self._DATES)})\b", 0.85),
                Pattern(
                    "date before 'geboren'",
                    rf"\b(?:{'|'.join(self._DATES)})\b{self._BORN_AFTER}",
                    0.85,
                ),
                Pattern("year after 'born in'", rf"{self._BORN_IN}{year}", 0.85),
                Pattern("year after a birth-year label", rf"{self._YEAR_LABEL}{year}", 0.85),
            ],
            context=[],
        )


#: Street suffixes of the USPS list (Publication 28, appendix C1: the primary names and their usual
#: abbreviations), with British and Irish ones (close, mews, rise, ...). A capitalised one after a house
#: number and capitalised street words makes an address.
_STREET_SUFFIX_TEXT = """
    alley aly annex anx arcade arc avenue ave av bayou byu beach bch bend bnd bluff blf bluffs blfs
    bottom btm boulevard blvd branch br bridge brg brook brk brooks burg bg burgs bypass byp camp cp
    canyon cyn cape cpe causeway cswy circle cir circles cirs cliff clf cliffs clfs common commons
    corner cor corners cors court ct courts cts cove cv coves creek crk crescent cres crest crst
    crossing xing crossroad xrd crossroads curve curv dale dl dam dm divide dv drive dr drives drs
    estate est estates ests expressway expy fall falls fls ferry fry flat flt flats flts ford frd
    fords forest frst forge frg forges fork frk forks frks fort ft freeway fwy garden gdn gardens
    gdns glen gln glens green grn greens grove grv groves harbor hbr harbors haven hvn heights hts
    highway hwy hill hl hills hls hollow holw inlet inlt island isle islands jct junction junctions
    jcts knoll knl knolls lake lk lakes lks land landing lndg lane ln loaf lf lodge ldg loop manor
    mnr manors meadow mdw meadows mdws mews mill ml mills mission msn motorway mtwy mount mt
    mountain mtn mountains mtns neck nck orchard orch oval overpass opas park parks parkway pkwy
    parkways passage psge pike pine pne pines pnes place pl plain pln plains plns plaza plz prairie
    pr radial radl ramp ranch rnch rapid rpd rapids rpds ridge rdg ridges rdgs river riv road rd
    roads rds route rte row rue shoal shl shoals shore shr shores shrs skyway skwy spring spg
    springs spgs spur spurs square sq squares sqs stravenue stra stream strm street st streets sts
    terrace ter throughway trwy trafficway trfy trail trl trailer trlr tunnel tunl turnpike tpke
    underpass upas valley vly valleys vlys viaduct via village vlg villages vlgs ville vl vista vis
    walk walks way ways wharf yard rise parade quay drove embankment approach
"""
STREET_SUFFIXES: frozenset[str] = frozenset(_STREET_SUFFIX_TEXT.split())
#: Suffixes that are also everyday nouns of support text ("2 License Keys", "7 Help Center", "10 Day Pass",
#: "3 Charging Stations"): an address only with an address word nearby (see ``StreetAddressRecognizer``).
_AMBIGUOUS_SUFFIX_TEXT = """
    center ctr centers ctrs club clb course crse extension ext extensions exts field fld fields flds
    gateway gtwy key ky keys kys light lgt lights lgts lock lck locks lcks mall pass path point pt
    points pts port prt ports prts rest rst run station sta summit smt trace trce track trak union
    un unions uns view vw views vws wall well wl wells wls
"""
AMBIGUOUS_STREET_SUFFIXES: frozenset[str] = frozenset(_AMBIGUOUS_SUFFIX_TEXT.split())


#: Words near an address (compared as substrings of the tokens before it: "shipped", "delivery", "reached").
_ADDRESS_CONTEXT = (
    "address", "live", "moved", "ship", "deliver", "street", "reach", "arrive", "parcel", "package",
)  # fmt: skip


def _alternation(words: frozenset[str]) -> str:
    return "|".join(sorted(words, key=lambda w: (-len(w), w)))


class StreetAddressRecognizer(BackstopPatternMixin, PatternRecognizer):
    """A street address: house number, street words, a street suffix; optional unit and town.

    "221B Baker Street", "1600 Pennsylvania Ave NW, Suite 5", "609 Stacey Roads, New Brendaton",
    "12 rue de la Paix" and "Hauptstraße 12" are matched; a number followed by common nouns ("3 items",
    "2 days") is not, because the street suffix is required. The patterns, strongest first:

    * a common suffix (street, road, avenue, ...) in any case;
    * any USPS or British suffix, capitalised like the street words before it ("5979 Jones Course" is not
      matched here: course is ambiguous);
    * any suffix in any case, ambiguous ones included, with a score below the default threshold, so it counts
      only when an address word is near (Presidio's context enhancer: "ship it to 2 Garcia Locks");
    * a street word first (rue, via, calle), and a German or Dutch street name followed by the number.
    """

    _COMMON_SUFFIX = (
        r"(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|place|pl|square|sq|"
        r"terrace|way|parkway|pkwy|highway|hwy|circle|cir|trail|close|crescent|row|strasse|straße|weg|"
        r"allee|platz|gasse)\.?"
    )
    _SUFFIX = rf"(?:{_alternation(STREET_SUFFIXES)})"
    _ANY_SUFFIX = rf"(?:{_alternation(STREET_SUFFIXES | AMBIGUOUS_STREET_SUFFIXES)})"
    _NUMBER = r"\b\d{1,5}[A-Za-z]?"
    # "3 PM EST", "9 AM CT": a time and a time zone, not a street.
    _CAPITALISED = r"(?!(?i:am|pm)\b)[A-Z][A-Za-z'\-]{0,40}+"
    # A street word in any case; words that make "2 questions about the way" a sentence are none.
    _WORD = (
        r"(?!(?:the|a|an|about|of|to|for|from|in|on|at|by|with|and|or|my|your|our|their|this|that|is|are|"
        r"was|were|more|other|days|weeks|months|years|times|hours|items|am|pm)\b)[A-Za-z][A-Za-z'\-]{0,40}+"
    )
    _STREET_FIRST = r"\b\d{1,5}[ \t]++(?:rue|via|calle|avenida|boulevard)(?:[ \t]++[A-Za-z'\-]{1,40}+){1,4}"
    # "Hauptstraße 12", "Am Mühlenweg 3a", "Keizersgracht 123": the street word ends the name.
    _NUMBER_LAST = (
        r"\b(?:[A-ZÄÖÜ][\w'\-]{0,40}+[ \t]++)?[A-ZÄÖÜ][\w'\-]{0,40}"
        r"(?:straße|strasse|str\.|weg|allee|platz|gasse|straat|laan|plein|gracht)[ \t]++\d{1,4}[a-z]?\b"
    )
    _UNIT = r"(?:[ \t]*+,?[ \t]*+(?i:apt|apartment|suite|ste|unit|flat)\.?[ \t]*+#?[ \t]*+\w{1,6})?"
    _DIRECTION = r"(?:[ \t]++(?i:N|S|E|W|NE|NW|SE|SW)\b)?"
    # ", Springfield", ", New Brendaton, IL 62704", ", London SW1A 1AA": capitalised town words after a comma,
    # then a state or postcode; words that open a new sentence part are no town.
    _NOT_TOWN = (
        r"(?!(?:Thanks|Thank|Regards|Cheers|Please|Phone|Tel|Call|Email|Mail|Customer|Order|Account)\b)"
    )
    _TOWN = (
        rf"(?:,[ \t]*+{_NOT_TOWN}[A-Z][a-z'\-]{{1,40}}+(?:[ \t]++[A-Z][a-z'\-]{{1,40}}+){{0,2}}"
        r"(?:,?[ \t]++[A-Z]{2}\b)?(?:[ \t]++(?:\d{5}(?:-\d{4})?|[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2})\b)?)?"
    )
    _TAIL = rf"{_DIRECTION}{_UNIT}\b{_TOWN}"

    def __init__(self, *, supported_language: str = "en") -> None:
        common = rf"(?i:{self._NUMBER}(?:[ \t]++{self._WORD}){{1,4}}[ \t]++{self._COMMON_SUFFIX})"
        super().__init__(
            supported_entity="STREET_ADDRESS",
            name="StreetAddressRecognizer",
            supported_language=supported_language,
            patterns=[
                Pattern("number, street words, common suffix", rf"{common}{self._TAIL}", 0.7),
                Pattern(
                    "number, capitalised street words and suffix",
                    rf"{self._NUMBER}(?:[ \t]++{self._CAPITALISED}){{1,3}}[ \t]++"
                    rf"(?=[A-Z])(?i:{self._SUFFIX})\b\.?{self._TAIL}",
                    0.6,
                ),
                Pattern(
                    "number, street words, any suffix (needs an address word nearby)",
                    rf"(?i:{self._NUMBER}(?:[ \t]++{self._WORD}){{1,3}}[ \t]++{self._ANY_SUFFIX}\b\.?)"
                    rf"{self._TAIL}",
                    0.3,
                ),
                Pattern("number, street word first", rf"(?i:{self._STREET_FIRST})\b", 0.6),
                Pattern("street name, then number", self._NUMBER_LAST, 0.6),
            ],
            context=list(_ADDRESS_CONTEXT),
            # Case matters: capitalised street words and towns are part of the evidence.
            global_regex_flags=re.DOTALL | re.MULTILINE,
        )


def _shifted(match: phonenumbers.PhoneNumberMatch, offset: int) -> phonenumbers.PhoneNumberMatch:
    """The match with its offsets moved by ``offset`` (from a window to the whole text)."""
    match.start += offset
    match.end += offset
    return match


def _national_parsing_rules(region: str) -> tuple[object, ...]:
    """What ``phonenumbers.parse`` takes from the default region when it reads a national number."""
    metadata = PhoneMetadata.metadata_for_region(region)
    assert metadata is not None  # only called for phonenumbers.SUPPORTED_REGIONS
    return (
        metadata.country_code,
        metadata.national_prefix,
        metadata.national_prefix_for_parsing,
        metadata.national_prefix_transform_rule,
        metadata.international_prefix,
        metadata.preferred_international_prefix,
        metadata.leading_digits,
    )


class CandidatePhoneRecognizer(PhoneRecognizer):
    """Presidio's phone recognizer, run only on the stretches of text that can hold a phone number.

    ``phonenumbers.PhoneNumberMatcher`` scans the whole text once per configured region, which made it the
    slowest recognizer by far (about half of the analysis time of a 500-character message). Here a cheap
    regex first finds runs of digits and phone punctuation with at least six digits; the matcher then runs
    per region on each run plus two characters either side (its checks look one character beyond a match),
    so it finds the same numbers at the same offsets. A stretch that is one number written with +country code
    is matched in the first region only: every region would read it the same.
    """

    @functools.cached_property
    def _region_order(self) -> list[str]:
        """``_regions()``, computed on first use (the configured regions do not change after start-up)."""
        return self._regions()

    def _regions(self) -> list[str]:
        # A region phonenumbers does not know (e.g. "UK" for GB) only finds numbers written with +country
        # code, which every known region finds too; it is skipped when there is a known one. So is a region
        # that reads national numbers exactly like an earlier one (CA after US: same calling code and
        # national prefix rules), since its matcher finds the same numbers at the same offsets.
        known = [r for r in self.supported_regions if r in phonenumbers.SUPPORTED_REGIONS]
        if not known:
            return list(self.supported_regions)
        regions: dict[tuple[object, ...], str] = {}
        for region in known:
            regions.setdefault(_national_parsing_rules(region), region)
        return list(regions.values())

    @staticmethod
    def _international_only(
        window: str, start: int, end: int, matches: list[phonenumbers.PhoneNumberMatch]
    ) -> bool:
        """Whether every other region would find exactly ``matches`` in ``window``.

        True when the one match is the whole candidate ``window[start:end]``, written with ``+country code``,
        and the window has no other digit: such a number is parsed and validated the same whatever the region
        (the region only matters for numbers without a country code), and there is nothing else to find.
        """
        if len(matches) != 1:
            return False
        match = matches[0]
        return (
            match.raw_string.startswith("+")
            and (match.start, match.end) == (start, end)
            and not any(ch.isdigit() for ch in window[:start] + window[end:])
        )

    _CANDIDATE = re.compile(r"\+?[(\[]?\d[\d \t().\-/\[\]]*\d")
    _MIN_DIGITS = 6
    _MARGIN = 2

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        """Run the matcher of every region on each candidate stretch; offsets refer to ``text``."""
        results: list[RecognizerResult] = []
        regions = self._region_order
        leniency = 1 if self.leniency is None else self.leniency
        for candidate in self._CANDIDATE.finditer(text):
            if sum(ch.isdigit() for ch in candidate.group()) < self._MIN_DIGITS:
                continue
            lo = max(0, candidate.start() - self._MARGIN)
            hi = min(len(text), candidate.end() + self._MARGIN)
            window = text[lo:hi]
            for index, region in enumerate(regions):
                matches = list(phonenumbers.PhoneNumberMatcher(window, region, leniency=leniency))
                # Checked before the offsets of the matches are moved to the whole text.
                last = index == 0 and self._international_only(
                    window, candidate.start() - lo, candidate.end() - lo, matches
                )
                for match in matches:
                    try:
                        parsed = phonenumbers.parse(match.raw_string)
                        found_region = phonenumbers.region_code_for_number(parsed)
                    except phonenumbers.NumberParseException:
                        found_region = region
                    results.append(
                        self._get_recognizer_result(_shifted(match, lo), text, found_region, nlp_artifacts)
                    )
                if last:
                    break
        return EntityRecognizer.remove_duplicates(results)
