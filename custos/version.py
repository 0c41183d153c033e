"""The version of the installed Custos distribution, for ``custos --version`` and the info metric."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "custos"


def custos_version() -> str:
    """The installed distribution's version; a source tree that was never installed says so."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+not-installed"
