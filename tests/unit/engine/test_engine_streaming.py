"""Incremental detokenization: deltas are final, never split a character, and respect stop strings."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.engine.streaming import TextStream
from custos.testing.tiny_engine import build_tiny_tokenizer

Decoder = Callable[[list[int]], str]


def piece_decoder(pieces: Sequence[str]) -> Decoder:
    """Token i is ``pieces[i]``; SentencePiece's ``▁`` becomes a space, as Gemma's decoder does."""
    return lambda ids: "".join(pieces[i] for i in ids).replace("▁", " ")


def byte_decoder(pieces: Sequence[bytes]) -> Decoder:
    """Token i is the bytes ``pieces[i]``; incomplete UTF-8 decodes to U+FFFD, like byte fallback."""
    return lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")


def feed(stream: TextStream, count: int) -> tuple[list[str], str | None]:
    deltas = []
    for token in range(count):
        delta, match = stream.push(token)
        deltas.append(delta)
        if match is not None:
            return deltas, match.stop
    deltas.append(stream.finish())
    return deltas, None


CASES = [
    # (pieces, stops, deltas per push (+ the finish delta when no stop matched), matched stop)
    (["Hel", "lo", "▁world"], (), ["Hel", "lo", " world", ""], None),
    (["▁", "▁Hi", "▁there", "▁"], (), ["", "Hi", " there", "", ""], None),
    (["Hi", "▁", "there"], (), ["Hi", "", " there", ""], None),
    (["Hi", "\n", "\n"], (), ["Hi", "", "", ""], None),
    (
        ["Sure", ".", "\n", "Cust", "omer", ":", "▁more"],
        ("\nCustomer:",),
        ["Sure", ".", "", "", "", ""],
        "\nCustomer:",
    ),
    (["Sure", "\n", "Cu", "p"], ("\nCustomer:",), ["Sure", "", "", "\nCup", ""], None),
    (["abcSTOPdef"], ("STOP",), ["abc"], "STOP"),
    (["ab", "cS", "TO", "Pxyz"], ("STOP",), ["ab", "c", "", ""], "STOP"),
    (["\nCustomer:"], ("\nCustomer:",), [""], "\nCustomer:"),
    (["▁", "\n", "Customer:"], ("\nCustomer:",), ["", "", ""], "\nCustomer:"),
    (["a", "bxyz"], ("xyz", "b"), ["a", ""], "b"),
    (["a", "b", "c", "d"], ("abcd", "c"), ["", "", "ab"], "c"),
    (["x", "▁", "S", "TOP"], (" STOP",), ["x", "", "", ""], " STOP"),
    (["ST", "ART", "▁end"], ("STOP",), ["", "START", " end", ""], None),
]


@pytest.mark.parametrize(("pieces", "stops", "expected", "stop"), CASES)
def test_deltas_per_token(
    pieces: list[str], stops: tuple[str, ...], expected: list[str], stop: str | None
) -> None:
    stream = TextStream(piece_decoder(pieces), stops)
    deltas, matched = feed(stream, len(pieces))
    assert deltas == expected
    assert matched == stop
    assert stream.text == "".join(expected)
    assert stream.finished


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        ([b"caf", b"\xc3", b"\xa9"], ["caf", "", "é", ""]),
        ([b"\xe2", b"\x82", b"\xac", b"5"], ["", "", "€", "5", ""]),
        ([b"\xf0\x9f", b"\x98", b"\x80!"], ["", "", "😀!", ""]),
        ([b"a", b"\xc3"], ["a", "", "\ufffd"]),  # a broken character at the very end is flushed as is
    ],
)
def test_multibyte_characters_are_never_split(pieces: list[bytes], expected: list[str]) -> None:
    deltas, _ = feed(TextStream(byte_decoder(pieces)), len(pieces))
    assert deltas == expected


def test_real_byte_fallback_tokenizer_streams_whole_characters() -> None:
    tokenizer = build_tiny_tokenizer()
    text = "Grüße, <PERSON_1> 😀 — ok"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text), "non-ASCII characters are several byte tokens"
    stream = TextStream(lambda got: tokenizer.decode(got, skip_special_tokens=True))
    deltas = [stream.push(i)[0] for i in ids] + [stream.finish()]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_push_after_finish_is_an_error() -> None:
    stream = TextStream(piece_decoder(["a"]))
    stream.finish()
    with pytest.raises(RuntimeError):
        stream.push(0)


def test_empty_stop_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        TextStream(piece_decoder(["a"]), ("",))


PIECES = [
    b"a",
    b"b",
    b" ",
    b"\n",
    b"C",
    b"u",
    b":",
    b"\xc3",
    b"\xa9",
    b"\xe2\x82",
    b"\xac",
    b"ab",
    b"\nC",
    b"\xf0",
]
STOPS = ["\nC", "b", "ab", "u:", "\u00e9", "\u20ac", " C", "Cu:", "a a"]


def reference(pieces: list[bytes], stops: list[str]) -> str:
    """The answer by definition: stop at the first token after which some stop string is in the text."""
    decode = byte_decoder(pieces)
    for k in range(1, len(pieces) + 1):
        text = decode(list(range(k)))
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            return text[: min(hits)].strip()
    return decode(list(range(len(pieces)))).strip()


@settings(max_examples=400, deadline=None)
@given(
    tokens=st.lists(st.sampled_from(PIECES), max_size=25),
    stops=st.lists(st.sampled_from(STOPS), max_size=3, unique=True),
)
def test_stream_matches_the_definition(tokens: list[bytes], stops: list[str]) -> None:
    stream = TextStream(byte_decoder(tokens), stops)
    deltas, _ = feed(stream, len(tokens))
    assert "".join(deltas) == reference(tokens, stops)
    # a delta is final: no stop string ever straddles what was already emitted
    emitted = ""
    for delta in deltas:
        emitted += delta
        assert not any(s in emitted for s in stops)
