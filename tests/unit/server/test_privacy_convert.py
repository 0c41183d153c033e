"""Validation of the privacy policy fields: each bad value names its field."""

from __future__ import annotations

import pytest

from custos.api.convert import privacy_policy_from_pb
from custos.flows.errors import InvalidArgument
from custos.v1 import common_pb2


@pytest.mark.parametrize(
    ("mode", "types", "expected"),
    [
        (common_pb2.PRIVACY_MODE_UNSPECIFIED, [], ("mask", ())),
        (common_pb2.PRIVACY_MODE_MASK, [], ("mask", ())),
        (common_pb2.PRIVACY_MODE_BLOCK, [], ("block", ())),
        (common_pb2.PRIVACY_MODE_BLOCK, ["CREDIT_CARD", "US_SSN"], ("block", ("CREDIT_CARD", "US_SSN"))),
    ],
)
def test_valid_policies(mode: int, types: list[str], expected: tuple[str, tuple[str, ...]]) -> None:
    assert privacy_policy_from_pb(mode, types) == expected


@pytest.mark.parametrize(
    ("mode", "types", "field"),
    [
        (7, [], "privacy_mode"),
        (common_pb2.PRIVACY_MODE_MASK, ["CREDIT_CARD"], "block_entity_types"),
        (common_pb2.PRIVACY_MODE_BLOCK, ["credit card"], "block_entity_types[0]"),
        (common_pb2.PRIVACY_MODE_BLOCK, ["X"] * 33, "block_entity_types"),
    ],
)
def test_invalid_policies_name_the_field(mode: int, types: list[str], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        privacy_policy_from_pb(mode, types)
    assert info.value.field == field
