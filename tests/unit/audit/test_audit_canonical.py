from __future__ import annotations

import enum
import json
from collections import OrderedDict
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType

import pytest

from custos.audit import CanonicalizationError, canonical_json


class Color(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Plain(enum.Enum):
    NESTED = ("a", 1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param({"b": 1, "a": 2}, b'{"a":2,"b":1}', id="keys sorted"),
        pytest.param(
            {"b": {"d": 1, "c": 2}, "a": []}, b'{"a":[],"b":{"c":2,"d":1}}', id="nested keys sorted"
        ),
        pytest.param(OrderedDict([("z", 1), ("a", 2)]), b'{"a":2,"z":1}', id="insertion order ignored"),
        pytest.param(MappingProxyType({"k": None}), b'{"k":null}', id="any Mapping"),
        pytest.param({"Z": 1, "a": 2, "É": 3}, '{"Z":1,"a":2,"É":3}'.encode(), id="code point order"),
        pytest.param([3, 1, 2], b"[3,1,2]", id="list order kept"),
        pytest.param((1, "x"), b'[1,"x"]', id="tuple as array"),
        pytest.param("Zoë ✓", '"Zoë ✓"'.encode(), id="utf-8 not escaped"),
        pytest.param('a"b\\c\n', b'"a\\"b\\\\c\\n"', id="json escapes"),
        pytest.param(True, b"true", id="bool"),
        pytest.param(False, b"false", id="false not 0"),
        pytest.param(None, b"null", id="none"),
        pytest.param(2**70, b"1180591620717411303424", id="big int"),
        pytest.param(0.1, b"0.1", id="float shortest repr"),
        pytest.param(1.0, b"1.0", id="float keeps point"),
        pytest.param(datetime(2024, 5, 1, 12, 0, tzinfo=UTC), b'"2024-05-01T12:00:00.000000Z"', id="utc"),
        pytest.param(
            datetime(2024, 5, 1, 14, 0, 0, 42, tzinfo=timezone(timedelta(hours=2))),
            b'"2024-05-01T12:00:00.000042Z"',
            id="offset converted to utc",
        ),
        pytest.param(Color.RED, b'"red"', id="str enum as value"),
        pytest.param(Level.HIGH, b"3", id="int enum as value"),
        pytest.param(Plain.NESTED, b'["a",1]', id="enum value canonicalised"),
        pytest.param({Color.RED: 1}, b'{"red":1}', id="str enum key"),
        pytest.param({}, b"{}", id="empty"),
    ],
)
def test_canonical_bytes(value: object, expected: bytes) -> None:
    assert canonical_json(value) == expected


def test_equal_values_give_equal_bytes_whatever_the_input_form() -> None:
    a = {"x": [1, 2], "when": datetime(2024, 1, 1, tzinfo=UTC), "c": Color.RED}
    b = {"c": "red", "when": datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))), "x": (1, 2)}
    assert canonical_json(a) == canonical_json(b)


def test_output_round_trips_through_json() -> None:
    value = {"b": [1, 2.5, None, True], "a": {"ü": "x"}}
    assert json.loads(canonical_json(value)) == value


SECRET = "Jane Doe 555-0100"


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        pytest.param(object(), "object", id="unknown type"),
        pytest.param({"a": {SECRET.encode()}}, "set", id="set nested"),
        pytest.param(SECRET.encode(), "bytes", id="bytes"),
        pytest.param(Decimal("1.5"), "Decimal", id="decimal"),
        pytest.param(date(2024, 1, 1), "date", id="date without time"),
        pytest.param({1: SECRET}, "int", id="non-str key"),
        pytest.param({(SECRET,): 1}, "tuple", id="tuple key"),
    ],
)
def test_unsupported_type_raises_naming_type_not_value(value: object, type_name: str) -> None:
    with pytest.raises(CanonicalizationError) as info:
        canonical_json(value)
    assert type_name in str(info.value)
    assert SECRET not in str(info.value) and "Jane" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param(datetime(2024, 1, 1), "naive datetime", id="naive datetime"),
        pytest.param({"t": [datetime(2024, 1, 1)]}, "naive datetime", id="naive datetime nested"),
        pytest.param(float("nan"), "non-finite", id="nan"),
        pytest.param(float("inf"), "non-finite", id="inf"),
        pytest.param([-float("inf")], "non-finite", id="-inf nested"),
        pytest.param("\ud800", "surrogate", id="lone surrogate"),
    ],
)
def test_invalid_values_raise(value: object, fragment: str) -> None:
    with pytest.raises(CanonicalizationError, match=fragment):
        canonical_json(value)


def test_self_referencing_container_raises_instead_of_recursing_forever() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(CanonicalizationError, match="nested deeper"):
        canonical_json(loop)
