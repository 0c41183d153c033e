"""Structured identifiers: Presidio's recognizers in linear time, IBANs in any case, identifying URLs.

Also the pass that finds all of them in the normalised text.

* ``EmailAddressRecognizer``, ``CreditCardNumberRecognizer``, ``SsnRecognizer``, ``IpAddressRecognizer``,
  ``CryptoWalletRecognizer`` are Presidio's, with the timeout backstop of ``custos.privacy.patterns``;
  Presidio's e-mail pattern repeats its local part without bound and took 2 s on an 8,000-character
  hyphenated word (quadratic), so it is bounded here (a local part has at most 64 characters, RFC 5321).
* ``IbanCodeRecognizer`` matches in any case and grouping and checks the country format and mod 97 on the
  normalised value (upper case, separators removed): Presidio's only matches upper case.
* ``IdentifyingUrlRecognizer`` replaces Presidio's URL recognizer (off: most URLs in tickets are the vendor's
  own pages, and its pattern takes seconds on a long dotted word): a URL is masked when it carries an
  identifier (a user name or ID in its path, an identifying query parameter, an e-mail address, a long
  number or token).
* ``NormalizedTextRecognizer`` runs one of these on ``custos.privacy.normalize``'s canonical form of the
  text (spelled-out separators, digits as words, odd separators, formatting breaks undone) and maps what it
  finds back to the original span.
"""

from __future__ import annotations

import re
from typing import ClassVar
from urllib.parse import parse_qsl, urlsplit

import regex
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    CryptoRecognizer,
    EmailRecognizer,
    IpRecognizer,
    UsSsnRecognizer,
)
from presidio_analyzer.predefined_recognizers.generic.iban_patterns import regex_per_country

from custos.privacy.normalize import normalize
from custos.privacy.patterns import BackstopPatternMixin, recognizer_name

_LOCAL_CHARS = r"!#$%&'*+\-/=?^_`{|}~\w"


class EmailAddressRecognizer(BackstopPatternMixin, EmailRecognizer):
    """Presidio's e-mail recognizer (same validation by tldextract) with bounded repeats.

    The first pattern starts only where a run of local-part characters starts, so each run is scanned
    once; the second is Presidio's pattern with the local part bounded to 64 characters, for the end of a
    longer run.
    """

    PATTERNS = [  # noqa: RUF012 (Presidio's class attribute, read by its constructor)
        Pattern(
            "Email (Medium)",
            rf"(?<![{_LOCAL_CHARS}.])[{_LOCAL_CHARS}](?:[{_LOCAL_CHARS}.]{{0,252}}[{_LOCAL_CHARS}])?"
            r"@\w{1,63}(?:-{1,8}\w{1,63})*(?:\.\w{1,63}(?:-{1,8}\w{1,63})*)+\b",
            0.5,
        ),
        Pattern(
            "Email (Medium), bounded local part",
            rf"\b[{_LOCAL_CHARS}](?:[{_LOCAL_CHARS}.]{{0,62}}[{_LOCAL_CHARS}])?"
            r"@\w{1,63}(?:-{1,8}\w{1,63})*(?:\.\w{1,63}(?:-{1,8}\w{1,63})*)+\b",
            0.5,
        ),
    ]


class CreditCardNumberRecognizer(BackstopPatternMixin, CreditCardRecognizer):
    """Presidio's card recognizer (Luhn check) with the timeout backstop, and card numbers in any grouping.

    Presidio's pattern wants four groups ("4111 1111 1111 1111"); people also write "553 854 381 0045 517",
    "601.184.9085.632.549" or "55-01-233-19-024-9573". The second pattern takes up to seven groups of digits
    (two or more each) starting with a card network's first digit (2-6); 13 to 19 digits and the Luhn check
    on the digits alone decide, as for Presidio's.
    """

    PATTERNS = [  # noqa: RUF012 (Presidio's class attribute, read by its constructor)
        *CreditCardRecognizer.PATTERNS,
        Pattern(
            "Card number, any grouping",
            # Not inside an IBAN ("DE89 3704 0044 ..." holds 18 digits that may pass Luhn).
            r"(?<![\w+.\-/])(?<![A-Z]{2}\d{2}[ \-]?(?:[A-Z0-9]{4}[ \-]?){0,3})"
            r"[2-6]\d{1,8}+(?:[ .\-/]{1,3}+\d{2,8}+){0,6}+(?![\w]|[.\-/]\d)",
            0.3,
        ),
    ]

    def __init__(self, *, supported_language: str = "en") -> None:
        super().__init__(
            supported_language=supported_language,
            patterns=list(self.PATTERNS),
            replacement_pairs=[("-", ""), (" ", ""), (".", ""), ("/", "")],
        )

    overlapping_patterns = frozenset({"Card number, any grouping"})

    def pattern_result(
        self, pattern: Pattern, text: str, start: int, end: int, flags: int
    ) -> RecognizerResult | None:
        """For a number in any grouping, the longest run of whole groups from the start that validates."""
        if pattern.name != "Card number, any grouping":
            return super().pattern_result(pattern, text, start, end, flags)
        stops = [m.end() for m in regex.finditer(r"\d+", text[start:end])]
        for stop in reversed(stops):
            result = super().pattern_result(pattern, text, start, start + stop, flags)
            if result is not None:
                return result
        return None

    def validate_result(self, pattern_text: str) -> bool:
        """13 to 19 digits and the Luhn check (Presidio's)."""
        digits = EntityRecognizer.sanitize_value(pattern_text, self.replacement_pairs)
        return 13 <= len(digits) <= 19 and digits.isdigit() and bool(super().validate_result(pattern_text))


class SsnRecognizer(BackstopPatternMixin, UsSsnRecognizer):
    """Presidio's US SSN recognizer with the timeout backstop."""


class IpAddressRecognizer(BackstopPatternMixin, IpRecognizer):
    """Presidio's IP recognizer with the timeout backstop."""


class CryptoWalletRecognizer(BackstopPatternMixin, CryptoRecognizer):
    """Presidio's crypto wallet recognizer (checksum) with the timeout backstop."""


class DenyListRecognizer(BackstopPatternMixin, PatternRecognizer):
    """A deny list (Presidio's ``PatternRecognizer(deny_list=...)``) with the timeout backstop."""


_SEPARATORS = re.compile(r"[\s\-]+")


def iban_is_valid(value: str) -> bool:
    """Whether ``value`` (any case, spaces or hyphens anywhere) is an IBAN: country format and mod 97."""
    compact = _SEPARATORS.sub("", value).upper()
    if not 15 <= len(compact) <= 34 or not compact.isalnum() or not compact.isascii():
        return False
    country = regex_per_country.get(compact[:2])
    if country is None or regex.fullmatch(country, compact) is None:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


class IbanCodeRecognizer(BackstopPatternMixin, PatternRecognizer):
    """An IBAN in any case and grouping, checked on its normalised value (country format, mod 97).

    "de44 5001 0517 ...", "GB5 7B DHK 3119 ..." are IBANs too. The pattern takes up to 34 characters after
    the country code and check digits; the longest prefix of the match that ends at a word boundary and
    validates is the IBAN, so a word after it ("... 31 and") is not masked with it.
    """

    PATTERNS: ClassVar[list[Pattern]] = [
        Pattern(
            "IBAN, any case",
            r"(?<![A-Z0-9])[A-Z][ \-]?[A-Z][ \-]?[0-9][ \-]?[0-9](?:[ \-]?[A-Z0-9]){11,30}",
            0.5,
        )
    ]
    CONTEXT: ClassVar[list[str]] = [
        "iban",
        "bank",
        "transaction",
        "konto",
        "compte",
        "cuenta",
        "conto",
        "rekening",
    ]
    overlapping_patterns = frozenset({"IBAN, any case"})

    def __init__(self, *, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="IBAN_CODE",
            name="IbanCodeRecognizer",
            supported_language=supported_language,
            patterns=list(self.PATTERNS),
            context=list(self.CONTEXT),
            global_regex_flags=regex.DOTALL | regex.MULTILINE | regex.IGNORECASE,
        )

    def pattern_result(
        self, pattern: Pattern, text: str, start: int, end: int, flags: int
    ) -> RecognizerResult | None:
        """The longest valid prefix of the match that ends where a word ends, scored 1.0."""
        for stop in range(end, start + 14, -1):
            if stop < len(text) and text[stop].isalnum():
                continue
            if iban_is_valid(text[start:stop]):
                result = super().pattern_result(pattern, text, start, stop, flags)
                if result is not None:
                    result.score = EntityRecognizer.MAX_SCORE
                    if result.analysis_explanation is not None:
                        result.analysis_explanation.score = result.score
                        result.analysis_explanation.validation_result = True
                return result
        return None

    def validate_result(self, pattern_text: str) -> bool | None:
        """Validation happens in ``pattern_result`` (the span is trimmed there)."""
        return None


#: Query keys and path words after which a value identifies a person or a customer record.
_IDENTIFYING_KEYS_TEXT = """
    id uid user userid user_id username uname login nick handle customer customerid customer_id cust cid
    client clientid client_id account accountid account_id acct email mail e-mail phone tel mobile name
    firstname first_name lastname last_name surname fullname token auth session sessionid session_id sid
    apikey api_key key order orderid order_id ticket ticketid ticket_id case caseid ref reference invoice
    member memberid member_id subscriber profile contact address zip postcode dob birthdate ssn iban card
    tracking trackingnumber tracking_number password pwd pass u p
"""
_IDENTIFYING_KEYS = frozenset(_IDENTIFYING_KEYS_TEXT.split())
_IDENTIFYING_PATH_WORDS_TEXT = """
    user users u profile profiles people person member members customer customers account accounts in pub
    client clients contact contacts order orders ticket tickets case cases invoice invoices subscriber
    subscribers track tracking id
"""
_IDENTIFYING_PATH_WORDS = frozenset(_IDENTIFYING_PATH_WORDS_TEXT.split())
_LONG_NUMBER = re.compile(r"\d{5,}")
_TOKEN = re.compile(r"[A-Za-z0-9_\-]{16,}")
_TRAILING_PUNCTUATION = ".,;:!?'\""


def _is_identifying_value(value: str) -> bool:
    if "@" in value or _LONG_NUMBER.search(value):
        return True
    return any(
        any(c.isdigit() for c in token) and any(c.isalpha() for c in token) for token in _TOKEN.findall(value)
    )


def url_identifies(url: str) -> bool:
    """Whether a URL carries an identifier: user info, an identifying path segment, query or fragment."""
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        has_user = parts.username is not None
    except ValueError:
        return True  # unparsable: mask rather than guess
    if has_user:
        return True
    segments = [segment for segment in parts.path.split("/") if segment]
    for index, segment in enumerate(segments):
        if segment[0] in "~@" or _is_identifying_value(segment):
            return True
        if index > 0 and segments[index - 1].casefold() in _IDENTIFYING_PATH_WORDS:
            return True
    for query in (parts.query, parts.fragment):
        for key, value in parse_qsl(query, keep_blank_values=False):
            if key.strip().casefold() in _IDENTIFYING_KEYS or _is_identifying_value(value):
                return True
    return False


class IdentifyingUrlRecognizer(BackstopPatternMixin, PatternRecognizer):
    """A URL that carries an identifier; the whole URL is masked. URLs without one are left alone.

    Presidio's URL recognizer masks every URL (and every dotted word with a known top-level domain);
    Custos masks the ones it was right about: "https://crm.example.com/customers/55120",
    "example.com/reset?email=jane@example.org", "linkedin.com/in/jane-doe", "https://x.io/u/jdoe".
    "https://help.example.com/articles/reset-password" is not personal data and stays.
    """

    _URL_CHARS = r"[^\s<>\"'`{}|\\^\[\]]"
    PATTERNS: ClassVar[list[Pattern]] = [
        Pattern("URL with scheme", rf"\b(?:https?|ftp)://{_URL_CHARS}{{1,2048}}+", 0.6),
        Pattern("www URL", rf"(?<![\w.@-])www\d{{0,3}}\.{_URL_CHARS}{{1,2048}}+", 0.6),
        Pattern(
            "domain with a path",
            r"(?<![\w.@/:-])(?:[a-z0-9][a-z0-9-]{0,62}+\.){1,8}+[a-z]{2,24}+"
            rf"[/?#]{_URL_CHARS}{{0,2048}}+",
            0.5,
        ),
    ]
    CONTEXT: ClassVar[list[str]] = ["url", "website", "link", "profile", "page"]

    def __init__(self, *, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="URL",
            name="IdentifyingUrlRecognizer",
            supported_language=supported_language,
            patterns=list(self.PATTERNS),
            context=list(self.CONTEXT),
        )

    def pattern_result(
        self, pattern: Pattern, text: str, start: int, end: int, flags: int
    ) -> RecognizerResult | None:
        """Trim trailing sentence punctuation (and an unbalanced ')'), then keep identifying URLs only."""
        while end > start and (
            text[end - 1] in _TRAILING_PUNCTUATION
            or (text[end - 1] == ")" and text.count("(", start, end) < text.count(")", start, end))
        ):
            end -= 1
        return super().pattern_result(pattern, text, start, end, flags)

    def validate_result(self, pattern_text: str) -> bool:
        """True for a URL with an identifier (score 1.0), False otherwise (dropped)."""
        return url_identifies(pattern_text)


class NormalizedTextRecognizer(EntityRecognizer):
    """Run a structured recognizer on the normalised text as well; its findings are mapped back.

    ``custos.privacy.normalize`` undoes what hides a value from a pattern ("jane at example dot com",
    "four one one one ...", "DE44.5001...", a value broken by a line break or a zero-width space). The inner
    recognizer finds the value there; the finding then covers the original characters it came from.
    Nothing is run when normalising changes nothing. Context words are the inner recognizer's, so
    Presidio's context enhancer treats the findings alike.
    """

    def __init__(self, inner: EntityRecognizer) -> None:
        self.inner = inner
        super().__init__(
            supported_entities=list(inner.supported_entities),
            name=f"{recognizer_name(inner)}[normalised text]",
            supported_language=inner.supported_language,
            context=list(inner.context or []),
        )

    def load(self) -> None:
        """Nothing to load (the inner recognizer is built)."""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        """The inner recognizer's findings in the normalised text, at the original offsets."""
        normalized = normalize(text)
        if not normalized.changed:
            return []
        results = []
        # No NLP artifacts for the normalised text: the engine's context enhancer works on the original one.
        for found in self.inner.analyze(normalized.text, entities, None):  # type: ignore[arg-type]
            start, end = normalized.to_original(found.start, found.end)
            if start >= end:
                continue
            metadata = dict(found.recognition_metadata or {})
            metadata[RecognizerResult.RECOGNIZER_NAME_KEY] = recognizer_name(self)
            metadata[RecognizerResult.RECOGNIZER_IDENTIFIER_KEY] = self.id
            metadata["normalized_text"] = True
            explanation = found.analysis_explanation
            if explanation is not None:
                explanation.recognizer = recognizer_name(self)
                explanation.textual_explanation = (
                    f"{explanation.textual_explanation or ''}; found in the normalised text".lstrip("; ")
                )
            results.append(
                RecognizerResult(
                    entity_type=found.entity_type,
                    start=start,
                    end=end,
                    score=found.score,
                    analysis_explanation=explanation,
                    recognition_metadata=metadata,
                )
            )
        return results


# ---- national identity numbers ---------------------------------------------------------------------------


def _nl_bsn_valid(digits: str) -> bool:
    """Dutch BSN: nine digits passing the "11-proof" (the last digit weighs -1)."""
    if len(digits) != 9 or digits == "0" * 9:
        return False
    total = sum(int(d) * w for d, w in zip(digits[:8], range(9, 1, -1), strict=True)) - int(digits[8])
    return total % 11 == 0


def _pt_nif_valid(digits: str) -> bool:
    """Portuguese NIF: nine digits, a known first digit, mod 11 check digit."""
    if len(digits) != 9 or (
        digits[0] not in "1235689" and digits[:2] not in ("45", "70", "71", "72", "74", "75", "77", "79")
    ):
        return False
    remainder = sum(int(d) * w for d, w in zip(digits[:8], range(9, 1, -1), strict=True)) % 11
    check = 0 if remainder < 2 else 11 - remainder
    return check == int(digits[8])


def _fr_nir_valid(digits: str) -> bool:
    """French NIR (numéro de sécurité sociale): 13 digits and a key of 97 minus their value mod 97."""
    if (
        len(digits) != 15
        or digits[0] not in "12378"
        or not ("01" <= digits[3:5] <= "12" or digits[3:5] >= "20")
    ):
        return False
    return 97 - int(digits[:13]) % 97 == int(digits[13:])


class NationalIdRecognizer(BackstopPatternMixin, PatternRecognizer):
    """National identity numbers of the European languages served, in any grouping, checked by checksum.

    French NIR (15 digits, key mod 97), Italian codice fiscale (16 characters, check letter) and Spanish DNI
    and NIE (8 digits and a check letter) carry enough check data to stand alone. A German Steuer-ID (11
    digits), a Dutch BSN or a Portuguese NIF (9 digits) passes its checksum by chance once in ten or eleven
    numbers, so it counts only after a label ("Steuer-ID", "BSN", "NIF", ...) in the 48 characters before it.
    US SSNs have their own recognizer (``SsnRecognizer``).
    """

    PATTERNS: ClassVar[list[Pattern]] = [
        Pattern(
            "national number, any grouping",
            r"(?<![\w.+\-/])(?:[XYZ][ .\-]?)?\d(?:[ .\-/]{0,3}\d){7,14}(?:[ .\-]{0,2}[A-Z])?(?![\w])",
            0.85,
        ),
        Pattern(
            "codice fiscale, any grouping",
            r"(?<![\w])(?:[A-Z][ .\-]?){6}(?:[0-9LMNPQRSTUV][ .\-]?){2}[A-Z][ .\-]?"
            r"(?:[0-9LMNPQRSTUV][ .\-]?){2}[A-Z][ .\-]?(?:[0-9LMNPQRSTUV][ .\-]?){3}[A-Z](?![\w])",
            0.85,
        ),
    ]
    CONTEXT: ClassVar[list[str]] = [
        "steuer", "identifikationsnummer", "idnr", "bsn", "burgerservicenummer", "sofinummer", "nif",
        "contribuinte", "dni", "nie", "sécurité", "securite", "nir", "insee", "fiscale", "national",
    ]  # fmt: skip
    _LABEL = regex.compile(
        r"(?i)\b(?:steuer[ \-]?id(?:entifikationsnummer)?|steuer[ \-]?nummer|idnr|identifikationsnummer|tin"
        r"|tax[ \-]?id|bsn|burgerservicenummer|sofi(?:nummer)?|nif|contribuinte|n[úu]mero[ \t]+fiscal|dni|nie"
        r"|documento|s[ée]curit[ée][ \t]+sociale|s[ée]cu|nir|insee|codice[ \t]+fiscale|c\.?f\.?"
        r"|national[ \t]+(?:id|insurance|identity)|id[ \t]+number|identity[ \t]+number|personalausweis)\b"
    )
    _LABEL_WINDOW = 48
    overlapping_patterns = frozenset({"national number, any grouping", "codice fiscale, any grouping"})
    _SEPARATORS = regex.compile(r"[ .\-/]+")

    def __init__(self, *, supported_language: str = "en") -> None:
        from presidio_analyzer.predefined_recognizers import (
            DeTaxIdRecognizer,
            EsNieRecognizer,
            EsNifRecognizer,
            ItFiscalCodeRecognizer,
        )

        super().__init__(
            supported_entity="NATIONAL_ID",
            name="NationalIdRecognizer",
            supported_language=supported_language,
            patterns=list(self.PATTERNS),
            context=list(self.CONTEXT),
            global_regex_flags=regex.DOTALL | regex.MULTILINE | regex.IGNORECASE,
        )
        self._de_tax_id = DeTaxIdRecognizer()
        self._es_nif = EsNifRecognizer()
        self._es_nie = EsNieRecognizer()
        self._it_fiscal_code = ItFiscalCodeRecognizer()

    def _labelled(self, text: str, start: int) -> bool:
        return self._LABEL.search(text, max(0, start - self._LABEL_WINDOW), start) is not None

    def _kind(self, compact: str) -> tuple[str, bool] | None:
        """(what the number is, whether it needs a label), or None when no checksum holds."""
        if len(compact) == 16 and compact[:6].isalpha():
            return ("IT codice fiscale", False) if self._it_fiscal_code.validate_result(compact) else None
        if compact[-1].isalpha():
            if compact[0] in "XYZ" and self._es_nie.validate_result(compact):
                return "ES NIE", False
            if compact[:-1].isdigit() and len(compact) == 9 and self._es_nif.validate_result(compact):
                return "ES DNI", False
            return None
        if not compact.isdigit():
            return None
        if _fr_nir_valid(compact):
            return "FR NIR", False
        if len(compact) == 11 and self._de_tax_id.validate_result(compact):
            return "DE Steuer-ID", True
        if _nl_bsn_valid(compact):
            return "NL BSN", True
        if _pt_nif_valid(compact):
            return "PT NIF", True
        return None

    def pattern_result(
        self, pattern: Pattern, text: str, start: int, end: int, flags: int
    ) -> RecognizerResult | None:
        """The number if a checksum holds (with its trailing letter only if that is its check letter)."""
        candidates = [end]
        if text[end - 1].isalpha() and pattern.name == "national number, any grouping":
            stop = end - 1
            while stop > start and not text[stop - 1].isalnum():
                stop -= 1
            candidates.append(stop)
        for stop in candidates:
            compact = self._SEPARATORS.sub("", text[start:stop]).upper()
            kind = self._kind(compact)
            if kind is None or (kind[1] and not self._labelled(text, start)):
                continue
            result = super().pattern_result(pattern, text, start, stop, flags)
            if result is not None and result.analysis_explanation is not None:
                result.analysis_explanation.textual_explanation = f"{kind[0]}, checksum valid"
                result.analysis_explanation.validation_result = True
            return result
        return None
