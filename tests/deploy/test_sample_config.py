"""The sample deploy/custos.sample.toml is what the settings model makes, and its values are the defaults."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from custos.server.sample_config import SAMPLE_FILE, render_sample_config
from custos.server.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_sample_is_current() -> None:
    committed = (ROOT / SAMPLE_FILE).read_text()
    assert committed == render_sample_config(), "run `make sample-config` and commit the file"


def test_every_setting_is_in_the_sample_with_its_default(tmp_path: Path) -> None:
    text = render_sample_config()
    values = [line[1:] for line in text.splitlines() if re.match(r"#[a-z0-9_]+ = ", line)]
    named = {line.split(" = ", 1)[0] for line in values}
    assert named == set(Settings.model_fields)
    active = "\n".join(line for line in values if not line.endswith("(unset)"))
    parsed = tomllib.loads(active)  # valid TOML once uncommented
    config = tmp_path / "custos.toml"
    config.write_text(active)
    assert load_settings(config).model_dump() == load_settings().model_dump()
    assert set(parsed) < set(Settings.model_fields)
