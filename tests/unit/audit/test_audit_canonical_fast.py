"""The fast canonical-form check (orjson) agrees with canonical.py byte for byte, on random payloads.

Verification proves a stored payload canonical by re-encoding it with orjson instead of Python's encoder
where the two give the same bytes. These properties are what make that sound: wherever the fast check
trusts orjson, orjson's output is exactly ``canonical_json``'s; and the check accepts a text exactly when it
is the canonical JSON of what it parses to.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.audit.canonical import canonical_json
from custos.audit.chain import is_canonical_payload, orjson_may_differ

_INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_SCALARS = (
    st.none()
    | st.booleans()
    | _INT64
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(min_value=-1e-3, max_value=1e-3, allow_nan=False)
    | st.text()
    | st.sampled_from(["é", "\u2028", "\x7f", '\x00\x1f"\\', "\U0001f600", "\ufeff", "e-", "0.0000"])
)
_KEYS = st.text() | st.sampled_from(["a", "B", "é", "\U0001f600", "\uffff", "", "a\x00"])
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(_KEYS, children, max_size=6),
    max_leaves=40,
)


def _canonical(value: Any) -> bytes | None:
    try:
        return canonical_json(value)
    except Exception:  # lone surrogates: not canonical JSON at all
        return None


def _orjson(value: Any) -> bytes | None:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # integers beyond 64 bits, lone surrogates
        return None


@settings(max_examples=1000, deadline=None)
@given(JSON_VALUES)
def test_orjson_gives_canonical_bytes_wherever_the_check_trusts_it(value: Any) -> None:
    fast = _orjson(value)
    if fast is None or orjson_may_differ(fast):
        return
    assert fast == _canonical(value)


@settings(max_examples=1000, deadline=None)
@given(JSON_VALUES)
def test_every_canonical_payload_is_accepted(value: Any) -> None:
    canonical = _canonical(value)
    if canonical is None:
        return
    assert is_canonical_payload(json.loads(canonical), canonical)
    try:
        parsed = orjson.loads(canonical)
    except orjson.JSONDecodeError:
        return
    # orjson reads integers beyond 64 bits as floats; the check then rejects, and the full check decides.
    if parsed == json.loads(canonical) and all(type(x) is type(y) for x, y in _pairs(parsed, value)):
        assert is_canonical_payload(parsed, canonical)


def _pairs(a: Any, b: Any) -> list[tuple[Any, Any]]:
    """Leaf pairs of two values of the same shape (to tell 1e22 from 10**22)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in a for p in _pairs(a[k], b[k])]
    if isinstance(a, list) and isinstance(b, list):
        return [p for x, y in zip(a, b, strict=True) for p in _pairs(x, y)]
    return [(a, b)]


_ENCODINGS: list[dict[str, Any]] = [
    {"sort_keys": False, "separators": (",", ":"), "ensure_ascii": False},
    {"sort_keys": True, "separators": (", ", ": "), "ensure_ascii": False},
    {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": True},
    {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False, "indent": 1},
]


@settings(max_examples=1000, deadline=None)
@given(JSON_VALUES, st.sampled_from(range(len(_ENCODINGS) + 1)))
def test_a_text_is_accepted_exactly_when_it_is_canonical(value: Any, encoding: int) -> None:
    """Other encodings of the same value (orjson's own among them) are accepted only when byte-identical."""
    if encoding == len(_ENCODINGS):
        text = _orjson(value)
    else:
        try:
            text = json.dumps(value, **_ENCODINGS[encoding]).encode("utf-8")
        except UnicodeEncodeError:
            text = None
    if text is None:
        return
    parsed = json.loads(text)
    assert is_canonical_payload(parsed, text) == (text == _canonical(parsed))
    try:
        fast_parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return
    if is_canonical_payload(fast_parsed, text):
        assert text == _canonical(parsed)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        (b'{"a":1e-05}', True),
        (b'{"a":0.00001}', False),  # orjson's text of 1e-05: never accepted
        (b'{"a":1e-7}', False),
        (b'{"a":1e-07}', True),
        (b'{"a":1e+16}', True),
        (b'{"a":1.0}', True),
        (b'{"a":1.00}', False),
        (b'{"a":12345678901234567890123}', True),
        (b'{"b":1,"a":2}', False),
        (b'{"a":"\\u00e9"}', False),
        (b'{"a":"\xc3\xa9"}', True),
        (b'{"a":"e-0.0000"}', True),
        (b'{"a":"5e-5a"}', True),
        (b'{"a":-3.2e-08}', True),
        (b'{"a":-3.2e-8}', False),
        (b'{"a":1e-10}', True),
    ],
)
def test_known_texts(text: bytes, canonical: bool) -> None:
    assert is_canonical_payload(json.loads(text), text) is canonical
    if canonical and b"1234567890123" not in text:
        assert is_canonical_payload(orjson.loads(text), text)


@pytest.mark.parametrize(
    ("text", "may_differ"),
    [
        (b"0.00001", True),
        (b"1e-7", True),
        (b"[1e-7]", True),
        (b"1e-07", False),
        (b"1e-10", False),
        (b'"0e8a1c2e-4fa"', False),  # a UUID: the digit does not end a number
        (b'"x 1e-7]"', True),  # a false alarm in a string: only the slower check runs
        (b'"0e8a1c2e-49"', False),
        (b'{"a":1e-7}', True),
        (b"[1e-7,2]", True),
        (b"0.0001", False),
    ],
)
def test_orjson_may_differ(text: bytes, may_differ: bool) -> None:
    assert orjson_may_differ(text) is may_differ
