"""Phone regions are checked against phonenumbers at start: an unknown code stops the server by name."""

from __future__ import annotations

from pathlib import Path

import phonenumbers
import pytest

from custos.privacy.analyzer import DEFAULT_PHONE_REGIONS
from custos.server.settings import SettingsError, load_settings


def test_default_regions_are_all_known_and_gb_not_uk(tmp_path: Path) -> None:
    regions = load_settings(data_dir=tmp_path).pii_phone_regions
    assert set(regions) <= phonenumbers.SUPPORTED_REGIONS
    assert "GB" in regions and "UK" not in regions and "FE" not in regions
    assert tuple(regions) == DEFAULT_PHONE_REGIONS  # the analyzer's default is the same list


@pytest.mark.parametrize(
    ("regions", "named"),
    [(["US", "UK"], ["'UK'", "GB"]), (["FE"], ["'FE'"]), (["DE", "XX", "ZZ"], ["'XX'", "'ZZ'"])],
)
def test_unknown_region_is_refused_by_name(tmp_path: Path, regions: list[str], named: list[str]) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(data_dir=tmp_path, pii_phone_regions=regions)
    message = str(refused.value)
    assert "pii_phone_regions" in message
    assert all(part in message for part in named)


def test_environment_is_checked_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOS_PII_PHONE_REGIONS", '["UK"]')
    with pytest.raises(SettingsError, match="UK"):
        load_settings(data_dir=tmp_path)
