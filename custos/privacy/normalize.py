r"""A canonical form of a text for pattern recognizers, with an offset map back to the original.

People write identifiers to get past patterns, or their tools break them: "jane dot doe at gmail dot com",
"name[at]gmail[dot]com", "four one one one ...", "4111.1111.1111.1111", "DE44 5001\n0517 ...", a
zero-width space or soft hyphen inside a number. ``normalize`` undoes that in three passes, each a linear
scan:

1. **Characters**: zero-width characters and soft hyphens are dropped; compatibility forms (full-width
   digits, the full-width at sign) become their plain form (NFKC); dashes become "-"; every run of white
   space (line breaks, tabs, several spaces) becomes one space; a word hyphenated across a line break is
   joined.
2. **Separators**: bracketed separator words ("[at]", "(dot)", "{at}", "<punkt>") become "@" and "." wherever
   they are; spelled-out ones ("at", "dot", "arobase", "chiocciola", "arroba", "Punkt", "point", "punto",
   "punt", "ponto", ...) only inside something shaped like an e-mail address whose domain ends in a known
   public suffix, and whose words are not function words ("meet at the dot com bubble" stays).
3. **Numbers**: a run of digits and digit words (English, German, French, Spanish, Italian, Portuguese,
   Dutch; "double five") becomes digits ("five five five one two three" -> "555123"), and a run of digit
   groups with unusual separators ("4111.1111.1111.1111", "4 1 1 1 ...", "030/1234_5678") gets hyphens
   or nothing between its groups. Dates, IP addresses and amounts keep their form ("12.03.1985",
   "192.168.0.1", "1.234.567,00"), and a lone ambiguous word ("due", "un", "oh") is not a digit.

Letter case is kept (the recognizers match case-insensitively). Every character of the normalised text
knows the original span it came from (``to_original``), so a mask found in the normalised text covers
exactly the original characters of the value, whatever was rewritten inside it.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import tldextract

# ---- the offset map ------------------------------------------------------------------------------------


class _Builder:
    """Output text with, per output character, the span of input characters it came from."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.pieces: list[str] = []
        self.starts: list[int] = []
        self.ends: list[int] = []

    def copy(self, start: int, end: int) -> None:
        """Copy ``source[start:end]`` unchanged."""
        if start >= end:
            return
        self.pieces.append(self.source[start:end])
        self.starts.extend(range(start, end))
        self.ends.extend(range(start + 1, end + 1))

    def emit(self, text: str, start: int, end: int) -> None:
        """Write ``text`` in place of ``source[start:end]``; each of its characters maps to the whole span."""
        if not text:
            return
        self.pieces.append(text)
        self.starts.extend([start] * len(text))
        self.ends.extend([end] * len(text))

    def result(self) -> tuple[str, list[int], list[int]]:
        return "".join(self.pieces), self.starts, self.ends


@dataclass(frozen=True)
class NormalizedText:
    """The canonical text and, per character, the original span it came from."""

    original: str
    text: str
    starts: Sequence[int]
    ends: Sequence[int]

    @property
    def changed(self) -> bool:
        """Whether normalising changed anything."""
        return self.text != self.original

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """The original span that ``text[start:end]`` came from (empty spans map to an empty span)."""
        if start >= end:
            position = self.starts[start] if start < len(self.starts) else len(self.original)
            return position, position
        return self.starts[start], self.ends[end - 1]


def _compose(
    outer: tuple[str, list[int], list[int]], inner_starts: Sequence[int], inner_ends: Sequence[int]
) -> tuple[str, list[int], list[int]]:
    """Offsets of a pass over an already normalised text, expressed in the original text."""
    text, starts, ends = outer
    return text, [inner_starts[i] for i in starts], [inner_ends[i - 1] for i in ends]


# ---- pass 1: characters ------------------------------------------------------------------------------

_INVISIBLE = "\u00ad\u180e\u200b\u200c\u200d\u2060\ufeff"
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
# What pass 1 rewrites: invisible characters, white space other than one plain space, dashes, non-ASCII
# characters (NFKC may change them), a hyphen before a line break.
_CHARACTER_TROUBLE = re.compile(
    rf"[{_INVISIBLE}]|-?[ \t]*[\n\r\v\f][\s{_INVISIBLE}]*|\s{{2,}}|[^\S ]|[{_DASHES}]|[^\x00-\x7f]"
)


_LINE_BREAK = re.compile(r"[\n\r\v\f]")
_SHORT_CAPITALS = re.compile(r"[A-Z]{1,2}")


def _token_before(text: str, start: int) -> str:
    piece = text[max(0, start - 64) : start]
    return re.split(r"\s", piece)[-1]


def _token_after(text: str, end: int) -> str:
    piece = text[end : end + 64]
    return re.split(r"\s", piece)[0]


def _breaks_a_value(text: str, start: int, end: int) -> bool:
    r"""Whether a line break at ``text[start:end]`` falls inside a value rather than between two words.

    Inside an e-mail address (the joined word has an "@"), between two pieces of a number (both hold
    digits), or after one or two capitals before digits (an IBAN's country code: "D\nE\n8514...").
    """
    left, right = _token_before(text, start), _token_after(text, end)
    if not left or not right:
        return False
    if "@" in left + right:
        return True
    if left[-1] in ".!?;:,)":
        return False
    left_digits, right_digits = any(c.isdigit() for c in left), any(c.isdigit() for c in right)
    if left_digits and right_digits:
        return True
    return bool(
        (_SHORT_CAPITALS.fullmatch(left) and (right_digits or _SHORT_CAPITALS.fullmatch(right)))
        or (_SHORT_CAPITALS.fullmatch(right) and left_digits)
    )


def _characters(text: str) -> tuple[str, list[int], list[int]]:
    out = _Builder(text)
    cursor = 0
    for match in _CHARACTER_TROUBLE.finditer(text):
        start, end = match.span()
        out.copy(cursor, start)
        cursor = end
        piece = match.group()
        if piece[0] in _INVISIBLE:
            continue
        if piece[0].isspace() or piece[0] == "-":
            before = text[start - 1] if start > 0 else ""
            after = text[end] if end < len(text) else ""
            if piece[0] == "-" and before.isalpha() and after.isalpha():
                continue  # "exam-\nple": a word hyphenated across a line break
            if piece[0] == "-":
                out.emit("-", start, end)  # "4111-\n1111"
            elif _LINE_BREAK.search(piece) and _breaks_a_value(text, start, end):
                out.emit("", start, end)  # "jane.doe@exam\nple.com", "DE44 5001\n0517", "836-2\n7-5305"
            else:
                out.emit(" ", start, end)
            continue
        if piece in _DASHES:
            out.emit("-", start, end)
            continue
        plain = unicodedata.normalize("NFKC", piece)
        if plain == piece:
            out.copy(start, end)
        else:
            out.emit(plain, start, end)
    out.copy(cursor, len(text))
    return out.result()


# ---- pass 2: separators ----------------------------------------------------------------------------------


def _strip_accents(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", word) if not unicodedata.combining(c))


def _alternation(words: Iterable[str]) -> str:
    """A regex matching any of ``words`` (with or without accents), as a trie: longest first, and fast.

    Python's ``re`` tries the branches of a flat alternation one by one at every position; the trie
    shares prefixes, so a position that starts no word fails at its first character.
    """
    trie: dict[str, dict] = {}
    for variant in {v for word in words for v in (word, _strip_accents(word))}:
        node = trie
        for char in variant:
            node = node.setdefault(char, {})
        node[""] = {}

    def pattern(node: dict) -> str:
        branches = [
            ("[ ]" if char == " " else re.escape(char)) + pattern(child)
            for char, child in sorted(node.items())
            if char
        ]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
        return f"(?:{body})?" if "" in node else body

    return pattern(trie)


#: Words for "@" in English, French, Spanish, Portuguese, Italian, German and Dutch.
AT_WORDS = (
    "at", "ät", "arobase", "arrobase", "arroba", "chiocciola", "klammeraffe", "apenstaartje", "apestaart",
)  # fmt: skip
#: Words for "." in e-mail addresses.
DOT_WORDS = ("dot", "point", "punkt", "punto", "punt", "ponto")
_UNDERSCORE_WORDS = (
    "underscore", "unterstrich", "tiret bas", "guion bajo", "guión bajo", "trattino basso", "sublinhado",
    "laag streepje",
)  # fmt: skip
_DASH_WORDS = (
    "dash", "hyphen", "minus", "bindestrich", "tiret", "guion", "guión", "trattino", "hifen", "hífen",
    "streepje", "koppelteken",
)  # fmt: skip

_BRACKETED = re.compile(
    rf"[ ]?[\[({{<][ ]?(?:(?P<at>@|{_alternation(AT_WORDS)})|(?P<dot>\.|{_alternation(DOT_WORDS)}))"
    r"[ ]?[\])}>][ ]?",
    re.IGNORECASE,
)


def _brackets(text: str) -> tuple[str, list[int], list[int]]:
    out = _Builder(text)
    cursor = 0
    for match in _BRACKETED.finditer(text):
        out.copy(cursor, match.start())
        out.emit("@" if match.group("at") else ".", match.start(), match.end())
        cursor = match.end()
    out.copy(cursor, len(text))
    return out.result()


#: Words that are never a local part or the first label of a spelled-out address ("meet at the dot com").
_FUNCTION_WORDS_TEXT = """
    a an the this that these those my your our his her their its me us you him them it we they i there here
    what which who all any some one no not and or but so if of to in on at for from by with as is are was be
    meet met see look arrive arrived stay home work
    le la les un une des du de et ou mon ma mes ton ta son sa nous vous ils elles ce cette
    der die das ein eine einen dem den des und oder mein meine dein sein ihr wir sie es ich bei im am
    el los las una unos y o mi tu su nosotros ellos en con por para
    il lo gli uno e mio tuo suo noi voi loro
    os as um uma meu teu seu nos eles na no
    het een en of mijn jouw zijn haar wij zij ik bij
    """
_FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split())

_LOCAL_WORD = r"[\w+%'\-]{1,64}+"
_LABEL = r"[^\W_]{1,63}+(?:-{1,3}+[^\W_]{1,63}+){0,4}+"
# Between the words of a local part: ".", "_" or a separator word between spaces ("john dot smith").
_LOCAL_SEPARATOR = (
    rf"(?:\.|_|[ ](?:{_alternation(DOT_WORDS)}|{_alternation(_UNDERSCORE_WORDS)}"
    rf"|{_alternation(_DASH_WORDS)})[ ])"
)
_AT = rf"(?:[ ]?@[ ]?|[ ](?:{_alternation(AT_WORDS)})[ ])"
# A dot of the domain: "." (or " . "), or a dot word between spaces; "gmail. Thanks" is a sentence end.
_DOT = rf"(?:\.|[ ]\.[ ]|[ ](?:{_alternation(DOT_WORDS)})[ ])"
_SPELLED_EMAIL = re.compile(
    rf"(?<![\w+%'.\-@])(?P<local>{_LOCAL_WORD}(?:{_LOCAL_SEPARATOR}{_LOCAL_WORD}){{0,6}})"
    rf"(?P<at>{_AT})(?P<domain>{_LABEL}(?:{_DOT}{_LABEL}){{1,5}})",
    re.IGNORECASE,
)
_LOCAL_PIECE = re.compile(rf"(?P<word>{_LOCAL_WORD})|(?P<sep>{_LOCAL_SEPARATOR})", re.IGNORECASE)
_DOMAIN_PIECE = re.compile(rf"(?P<word>{_LABEL})|(?P<sep>{_DOT})", re.IGNORECASE)
_DOT_WORD_SET = frozenset(_strip_accents(word) for word in DOT_WORDS)
_DASH_WORD_SET = frozenset(_strip_accents(word) for word in _DASH_WORDS)
_UNDERSCORE_WORD_SET = frozenset(_strip_accents(word) for word in _UNDERSCORE_WORDS)

#: One piece of a matched value: its kind (a word/item or a separator), its text and its span.
Piece = tuple[str, str, int, int]


def _pieces(pattern: re.Pattern[str], text: str, offset: int, *, first: str = "word") -> list[Piece]:
    return [
        (first if m.group(first) else "sep", m.group(), offset + m.start(), offset + m.end())
        for m in pattern.finditer(text)
    ]


def _separator_symbol(separator: str) -> str:
    word = _strip_accents(separator.strip(" ").casefold())
    if word == "." or word in _DOT_WORD_SET:
        return "."
    if word == "_" or word in _UNDERSCORE_WORD_SET:
        return "_"
    return "-"


@functools.cache
def _suffix_extractor() -> tldextract.TLDExtract:
    """The tldextract extractor with its bundled public-suffix snapshot: no download, no cache on disk."""
    return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


@functools.lru_cache(maxsize=4096)
def _has_public_suffix(domain: str) -> bool:
    parts = _suffix_extractor()(domain)
    return bool(parts.suffix and parts.domain)


def _spelled_address(match: re.Match[str]) -> tuple[list[Piece], tuple[int, int], list[Piece]] | None:
    """The pieces of an address, its domain cut after the last label of a known domain; None for prose."""
    local = _pieces(_LOCAL_PIECE, match.group("local"), match.start("local"))
    domain = _pieces(_DOMAIN_PIECE, match.group("domain"), match.start("domain"))
    labels = [piece.casefold() for kind, piece, _, _ in domain if kind == "word"]
    last_word = next(piece.casefold() for kind, piece, _, _ in reversed(local) if kind == "word")
    if "@" not in match.group("at") and (last_word in _FUNCTION_WORDS or labels[0] in _FUNCTION_WORDS):
        return None
    # "... gmail dot com dot and": keep the labels up to the last one that ends a known domain.
    for count in range(len(labels), 1, -1):
        if _has_public_suffix(".".join(labels[:count])):
            return local, match.span("at"), domain[: 2 * count - 1]
    return None


def _emit_address(out: _Builder, local: list[Piece], at: tuple[int, int], domain: list[Piece]) -> None:
    for kind, piece, start, end in local:
        if kind == "word":
            out.copy(start, end)
        else:
            out.emit(_separator_symbol(piece), start, end)
    out.emit("@", *at)
    for kind, _piece, start, end in domain:
        if kind == "word":
            out.copy(start, end)
        else:
            out.emit(".", start, end)


def _addresses(text: str) -> tuple[str, list[int], list[int]]:
    out = _Builder(text)
    cursor = position = 0
    while (match := _SPELLED_EMAIL.search(text, position)) is not None:
        found = _spelled_address(match)
        if found is None:
            position = match.start() + 1  # a later word may start an address ("me at jane dot doe at ...")
            continue
        local, at, domain = found
        end = domain[-1][3]
        value = text[match.start() : end]
        if " " not in value and "@" in value:
            position = end  # a plain address already: nothing to rewrite
            continue
        out.copy(cursor, match.start())
        _emit_address(out, local, at, domain)
        cursor = position = end
    out.copy(cursor, len(text))
    return out.result()


# ---- pass 3: numbers ---------------------------------------------------------------------------------

#: Digit words per language; accents are optional when matching ("funf", "tres").
DIGIT_WORDS: dict[str, dict[str, int]] = {
    "en": {"zero": 0, "oh": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
           "eight": 8, "nine": 9},
    "de": {"null": 0, "eins": 1, "zwei": 2, "zwo": 2, "drei": 3, "vier": 4, "fünf": 5, "fuenf": 5,
           "sechs": 6, "sieben": 7, "acht": 8, "neun": 9},
    "fr": {"zéro": 0, "un": 1, "une": 1, "deux": 2, "trois": 3, "quatre": 4, "cinq": 5, "six": 6, "sept": 7,
           "huit": 8, "neuf": 9},
    "es": {"cero": 0, "uno": 1, "una": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6,
           "siete": 7, "ocho": 8, "nueve": 9},
    "it": {"zero": 0, "uno": 1, "due": 2, "tre": 3, "quattro": 4, "cinque": 5, "sei": 6, "sette": 7,
           "otto": 8, "nove": 9},
    "pt": {"zero": 0, "um": 1, "uma": 1, "dois": 2, "duas": 2, "três": 3, "quatro": 4, "cinco": 5, "seis": 6,
           "meia": 6, "sete": 7, "oito": 8, "nove": 9},
    "nl": {"nul": 0, "een": 1, "één": 1, "twee": 2, "drie": 3, "vier": 4, "vijf": 5, "zes": 6, "zeven": 7,
           "acht": 8, "negen": 9},
}  # fmt: skip
_DIGIT_OF: dict[str, str] = {
    variant: str(value)
    for words in DIGIT_WORDS.values()
    for word, value in words.items()
    for variant in (word, _strip_accents(word))
}
#: Digit words that are also ordinary words; alone in a run they are not read as digits.
_AMBIGUOUS_DIGIT_WORDS_TEXT = "oh un une um uma una een due tre sei null nul sept neuf dos otto meia nove"
_AMBIGUOUS_DIGIT_WORDS = frozenset(_AMBIGUOUS_DIGIT_WORDS_TEXT.split())
_REPEAT_WORDS = {"double": 2, "triple": 3, "doppel": 2, "doble": 2, "doppio": 2, "dubbel": 2, "dupla": 2}
_PLUS_WORDS = ("plus", "più", "mas", "más", "mais")

_ITEM = rf"(?:(?:{_alternation(_REPEAT_WORDS)})[ ])?(?:\d{{1,24}}+|(?:{_alternation(_DIGIT_OF)}))(?![\w])"
#: Items of the longest run read as one value (an IBAN written digit by digit has 34).
_MAX_RUN_ITEMS = 48
# Longest first: the pieces of a run are split again with this pattern, which does not backtrack.
_NUMBER_SEPARATOR = (
    rf"(?:[ ](?:{_alternation(DOT_WORDS)}|{_alternation(_DASH_WORDS)})[ ]|[ ]?[.,_/()\-][ ]?[(]?|[ ])"
)
_NUMBER_RUN = re.compile(
    rf"(?<![\w.,\-])(?P<plus>(?:\+|(?:{_alternation(_PLUS_WORDS)})[ ]))?"
    rf"{_ITEM}(?:{_NUMBER_SEPARATOR}{_ITEM}){{1,{_MAX_RUN_ITEMS - 1}}}",
    re.IGNORECASE,
)
_RUN_CONTINUES = re.compile(rf"(?:{_NUMBER_SEPARATOR}{_ITEM}){{1,{_MAX_RUN_ITEMS}}}", re.IGNORECASE)
_RUN_PIECE = re.compile(rf"(?P<item>{_ITEM})|(?P<sep>{_NUMBER_SEPARATOR})", re.IGNORECASE)
_DATE_SHAPES = (
    re.compile(r"\d{1,2}([./\-])\d{1,2}\1(?:\d{2}|\d{4})"),
    re.compile(r"\d{4}([./\-])\d{1,2}\1\d{1,2}"),
)

_AMOUNT_SHAPE = re.compile(r"[1-9]\d{0,2}(?:([.,])\d{3})(?:\1\d{3})*(?:[.,]\d{1,2})?|\d+[.,]\d{1,2}")
_STANDARD_SEPARATOR = re.compile(r"[ ]|-|[ ]?[()][ ]?")


def _item_digits(item: str) -> str:
    words = item.casefold().split(" ")
    repeat = _REPEAT_WORDS.get(_strip_accents(words[0]), 1) if len(words) == 2 else 1
    digits = words[-1] if words[-1].isdigit() else _DIGIT_OF[_strip_accents(words[-1])]
    return digits * repeat


def _is_dot(separator: str) -> bool:
    core = _strip_accents(separator.strip(" ").casefold())
    return core == "." or core in _DOT_WORD_SET


def _is_dash(separator: str) -> bool:
    core = _strip_accents(separator.strip(" ").casefold())
    return "-" in core or core in _DASH_WORD_SET


def _rewrite_run(run: str, offset: int, plus: tuple[int, int] | None, out: _Builder) -> bool:
    """Write the canonical form of a number run; False (nothing written) when it stays as it is."""
    pieces = _pieces(_RUN_PIECE, run, offset, first="item")
    contiguous = all(a[3] == b[2] for a, b in itertools.pairwise(pieces))
    alternating = all(kind == ("item" if i % 2 == 0 else "sep") for i, (kind, *_) in enumerate(pieces))
    if not (contiguous and alternating and len(pieces) % 2 == 1 and pieces[-1][3] == offset + len(run)):
        return False
    items = [piece for kind, piece, _, _ in pieces if kind == "item"]
    words = [item for item in items if not item.isdigit()]
    digits = "".join(map(_item_digits, items))
    if len(digits) < 4:
        return False
    if words:
        lone = _strip_accents(words[0].casefold().split(" ")[-1])
        if len(words) == 1 and lone in _AMBIGUOUS_DIGIT_WORDS:
            return False
    else:
        separators = [piece for kind, piece, _, _ in pieces if kind == "sep"]
        if len(digits) < 6 or _keeps_its_form(run, separators, items):
            return False
    # Spelled digits next to each other ("five five five") are one group; other separators split groups.
    joins = []
    for index in range(1, len(pieces) - 1, 2):
        before, separator, after = pieces[index - 1][1], pieces[index][1], pieces[index + 1][1]
        joins.append(separator == " " and not before.isdigit() and not after.isdigit())
    groups = [_item_digits(pieces[0][1])]
    for join, index in zip(joins, range(2, len(pieces), 2), strict=True):
        if join:
            groups[-1] += _item_digits(pieces[index][1])
        else:
            groups.append(_item_digits(pieces[index][1]))
    splitting = [pieces[i][1] for i, join in zip(range(1, len(pieces), 2), joins, strict=True) if not join]
    # "one nine two dot one six eight ...", "217 . 143 . 145 . 70": an IPv4 address keeps its dots.
    ip_like = len(groups) == 4 and all(map(_is_dot, splitting)) and _is_ip_address(".".join(groups))
    single_digits = not words and sum(len(group) == 1 for group in groups) >= 3
    if plus is not None:
        out.emit("+", *plus)
    for index, (kind, piece, start, end) in enumerate(pieces):
        if kind == "item":
            if piece.isdigit():
                out.copy(start, end)
            else:
                out.emit(_item_digits(piece), start, end)
        elif joins[(index - 1) // 2] or single_digits:
            out.emit("", start, end)
        elif ip_like:
            out.emit(".", start, end)
        elif _is_dash(piece) or not words:
            out.emit("-", start, end)
        else:
            out.emit(" ", start, end)
    return True


def _keeps_its_form(run: str, separators: list[str], groups: list[str]) -> bool:
    """A digits-only run written normally, a list, two sentences, a date, an IP address or an amount."""
    if sum(len(group) == 1 for group in groups) < 3 and all(
        _STANDARD_SEPARATOR.fullmatch(s) for s in separators
    ):
        return True
    if any(s.strip(" ") in (",", ".") and s.endswith(" ") and not s.startswith(" ") for s in separators):
        return True  # "1234, 5678", "order 12345. 67890 is ...": a list or a sentence end
    return _is_ip_address(run) or any(shape.fullmatch(run) for shape in (*_DATE_SHAPES, _AMOUNT_SHAPE))


def _is_ip_address(run: str) -> bool:
    """An IPv4 address as written ("192.168.0.1"; "81.06.43.106" with its leading zero is a phone number)."""
    try:
        ipaddress.IPv4Address(run)
    except ValueError:
        return False
    return True


def _numbers(text: str) -> tuple[str, list[int], list[int]]:
    out = _Builder(text)
    cursor = position = 0
    while (match := _NUMBER_RUN.search(text, position)) is not None:
        position = match.end()
        longer = _RUN_CONTINUES.match(text, match.end())
        if longer is not None:
            # More items than any identifier has (a table, a list of figures): left as it is, whole.
            while longer is not None and longer.end() > position:
                position = longer.end()
                longer = _RUN_CONTINUES.match(text, position)
            continue
        plus_span = match.span("plus") if match.group("plus") else None
        body_start = match.end("plus") if plus_span else match.start()
        staged = _Builder(text)
        if not _rewrite_run(text[body_start : match.end()], body_start, plus_span, staged):
            continue
        out.copy(cursor, match.start())
        rewritten, starts, ends = staged.result()
        out.pieces.append(rewritten)
        out.starts.extend(starts)
        out.ends.extend(ends)
        cursor = match.end()
    out.copy(cursor, len(text))
    return out.result()


# ---- all passes ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def normalize(text: str) -> NormalizedText:
    """The canonical form of ``text`` and its offset map (cached: every structured recognizer asks)."""
    current, starts, ends = _characters(text)
    for rewrite in (_brackets, _addresses, _numbers):
        rewritten = rewrite(current)
        if rewritten[0] != current:
            current, starts, ends = _compose(rewritten, starts, ends)
    return NormalizedText(original=text, text=current, starts=starts, ends=ends)
