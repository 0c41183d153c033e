"""The manifest of a model cache, and the file hashing that pins a cache and a model directory.

A cache directory is complete when its ``manifest.json`` exists (it is written last); the manifest lists
every other file by name, size and SHA-256, and a digest over that list. These checks are shared by
``cache`` (prepare), ``weights`` (the single-read loader) and ``sources`` (hashing a model directory).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from custos.engine.types import ModelCacheError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
PREPARE_HINT = "run `custos model prepare` to build it"

SourceKind = Literal["bundled", "gguf", "hf-dir"]
"""What a cache was built from: the bundled GGUF package, a GGUF file or a Hugging Face directory."""


@dataclass(frozen=True)
class CachedFile:
    """One saved file of a cache, by name relative to the cache directory."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a cache directory holds and where it came from; written last, so its presence means complete.

    ``cache_digest`` is the SHA-256 of the canonical JSON list of ``[name, size, sha256]`` of every file
    in the directory except the manifest, sorted by name, so it covers every name and every byte.
    """

    format_version: int
    model_name: str
    source_kind: SourceKind
    source_path: str
    source_sha256: str
    source_quantization: str
    precision: str
    prompt_format_id: str
    prompt_format_version: int
    prompt_format_sha256: str
    transformers_version: str
    torch_version: str
    created_at: str
    files: tuple[CachedFile, ...]
    cache_digest: str
    quality: dict[str, Any] | None = None
    """The quality gate's report (see ``quality.QualityReport``); None in caches from before the gate."""
    selection: dict[str, Any] | None = None
    """With ``precision = "auto"``: every candidate's measured speed and quality, and the choice."""

    def to_json(self) -> str:
        """The manifest as pretty, key-sorted JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, *, path: Path) -> Manifest:
        """Parse a manifest; any missing or mistyped field raises ModelCacheError naming ``path``."""
        try:
            raw = json.loads(text)
            if raw.get("format_version") != MANIFEST_FORMAT_VERSION:
                raise ModelCacheError(
                    f"{path}: manifest format version {raw.get('format_version')!r} is not "
                    f"{MANIFEST_FORMAT_VERSION}; {PREPARE_HINT}"
                )
            files = tuple(
                CachedFile(name=str(f["name"]), size=int(f["size"]), sha256=str(f["sha256"]))
                for f in raw["files"]
            )
            manifest = cls(**{**raw, "files": files})
        except ModelCacheError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ModelCacheError(f"{path}: manifest is unreadable ({exc}); {PREPARE_HINT}") from exc
        for name in ("source_sha256", "cache_digest", "model_name", "precision", "prompt_format_id"):
            if not isinstance(getattr(manifest, name), str):
                raise ModelCacheError(f"{path}: manifest field {name} is not a string; {PREPARE_HINT}")
        return manifest


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's contents, streamed."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _list_files(directory: Path, *, hidden: bool = True) -> list[str]:
    """Every regular file below ``directory`` (relative POSIX names, sorted), except the manifest.

    ``hidden=False`` skips names with a component starting with a dot (download tools' metadata).
    """
    names = []
    for path in directory.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        rel = path.relative_to(directory)
        if rel.as_posix() == MANIFEST_NAME or (not hidden and any(p.startswith(".") for p in rel.parts)):
            continue
        names.append(rel.as_posix())
    return sorted(names)


def hash_files(directory: Path, *, hidden: bool = True) -> tuple[CachedFile, ...]:
    """Name, size and SHA-256 of every file in ``directory`` except the manifest."""
    return tuple(
        CachedFile(name, (directory / name).stat().st_size, sha256_file(directory / name))
        for name in _list_files(directory, hidden=hidden)
    )


def files_digest(files: tuple[CachedFile, ...]) -> str:
    """The digest over a file listing (see :class:`Manifest`)."""
    return hashlib.sha256(_canonical([[f.name, f.size, f.sha256] for f in files])).hexdigest()


def load_manifest(cache_dir: Path) -> Manifest:
    """Read ``cache_dir/manifest.json`` without checking the files; ModelCacheError if absent or invalid."""
    path = Path(cache_dir) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelCacheError(
            f"no model cache at {cache_dir} (missing {MANIFEST_NAME}); {PREPARE_HINT}"
        ) from None
    except OSError as exc:
        raise ModelCacheError(f"cannot read {path}: {exc.strerror}; {PREPARE_HINT}") from exc
    return Manifest.from_json(text, path=path)


def verify_cache(cache_dir: Path) -> Manifest:
    """Re-hash every file and compare with the manifest; ModelCacheError names the first difference."""
    cache_dir = Path(cache_dir)
    manifest = load_manifest(cache_dir)
    check_file_set(cache_dir, manifest)
    for entry in manifest.files:
        check_file(cache_dir / entry.name, entry)
    check_cache_digest(cache_dir, manifest)
    return manifest


def check_file_set(cache_dir: Path, manifest: Manifest) -> None:
    """ModelCacheError unless ``cache_dir`` holds exactly the files the manifest lists."""
    expected = {f.name for f in manifest.files}
    present = set(_list_files(cache_dir))
    missing = sorted(expected - present)
    extra = sorted(present - expected)
    if missing:
        raise ModelCacheError(
            f"model cache {cache_dir} is incomplete: {missing[0]} is missing; {PREPARE_HINT}"
        )
    if extra:
        raise ModelCacheError(
            f"model cache {cache_dir} holds a file the manifest does not list: {extra[0]}; {PREPARE_HINT}"
        )


def check_file(path: Path, entry: CachedFile) -> None:
    """ModelCacheError unless the file at ``path`` has the size and SHA-256 its manifest entry lists."""
    if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
        raise ModelCacheError(f"model cache file {path} was altered (digest mismatch); {PREPARE_HINT}")


def check_cache_digest(cache_dir: Path, manifest: Manifest) -> None:
    """ModelCacheError unless the manifest's cache digest matches its file list."""
    if files_digest(manifest.files) != manifest.cache_digest:
        raise ModelCacheError(
            f"model cache {cache_dir}: manifest cache_digest does not match; {PREPARE_HINT}"
        )
