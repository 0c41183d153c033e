"""A sample ``custos.toml`` with every setting, its description and its default, made from the settings model.

``python -m custos.server.sample_config > deploy/custos.sample.toml`` (``make sample-config``) writes it; a
test checks the committed file is what the model makes now, so it never drifts from the settings.
Every line is commented out: a copy starts from the defaults, and a default that changes later still applies.
"""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path
from typing import Any

from custos.server.settings import ENV_PREFIX, Settings

SAMPLE_FILE = Path("deploy") / "custos.sample.toml"
_WIDTH = 100


def toml_value(value: Any) -> str:
    """``value`` in TOML: JSON's strings, numbers, booleans and arrays are TOML too; tables are inline."""
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def render_sample_config() -> str:
    """The sample file's text, one commented block per setting.

    The core settings come first in the model's order, then the groups declared beside their features.
    """
    lines = [
        "# Custos settings: every setting with its default. Generated from custos/server/settings.py by",
        "# `make sample-config`; do not edit by hand. Drop the '#' before a setting to change it.",
        f"# Environment variables {ENV_PREFIX}<NAME> override this file, command-line flags override both.",
        "",
    ]
    own = inspect.get_annotations(Settings)
    fields = Settings.model_fields
    names = [n for n in fields if n in own] + [n for n in fields if n not in own]
    for name in names:
        field = Settings.model_fields[name]
        description = field.description or ""
        lines.extend(f"# {line}" for line in textwrap.wrap(description, _WIDTH - 2))
        default = field.get_default(call_default_factory=True)
        if default is None:
            lines.append(f"#{name} = (unset)")
        else:
            lines.append(f"#{name} = {toml_value(default)}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    """Print the sample file."""
    print(render_sample_config(), end="")


if __name__ == "__main__":
    main()
