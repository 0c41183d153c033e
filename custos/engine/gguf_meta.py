"""Reading a GGUF file's metadata header without loading its tensors.

``gguf.GGUFReader`` parses every value, including the 262k-entry token table, which takes over ten
seconds here; this reader skips arrays by length and returns only the scalar keys asked for.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Collection
from pathlib import Path

from custos.engine.types import EngineError

GGUF_MAGIC = b"GGUF"

# GGUF value types (gguf.GGUFValueType): id -> struct format of a scalar, or None for string/array.
_SCALARS: dict[int, str] = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING = 8
_ARRAY = 9


class GGUFFormatError(EngineError):
    """The file is not a GGUF file this reader understands."""


def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a regular file starting with the GGUF magic bytes."""
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


def read_gguf_metadata(path: Path, keys: Collection[str]) -> dict[str, str | int | float | bool]:
    """The scalar or string values of ``keys`` found in the GGUF header (missing keys are left out)."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _parse(buf, set(keys), path)


def _parse(buf: mmap.mmap, wanted: set[str], path: Path) -> dict[str, str | int | float | bool]:
    if buf[:4] != GGUF_MAGIC:
        raise GGUFFormatError(f"{path} is not a GGUF file")
    (version,) = struct.unpack_from("<I", buf, 4)
    if version not in (2, 3):
        raise GGUFFormatError(f"{path}: unsupported GGUF version {version} (expected 2 or 3, little-endian)")
    _tensor_count, kv_count = struct.unpack_from("<QQ", buf, 8)
    pos = 24
    found: dict[str, str | int | float | bool] = {}

    def read_string(at: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", buf, at)
        start = at + 8
        return bytes(buf[start : start + length]).decode("utf-8", errors="replace"), start + length

    def skip_value(vtype: int, at: int) -> int:
        if vtype in _SCALARS:
            return at + struct.calcsize("<" + _SCALARS[vtype])
        if vtype == _STRING:
            (length,) = struct.unpack_from("<Q", buf, at)
            return at + 8 + length
        if vtype == _ARRAY:
            elem_type, count = struct.unpack_from("<IQ", buf, at)
            at += 12
            if elem_type in _SCALARS:
                return at + count * struct.calcsize("<" + _SCALARS[elem_type])
            for _ in range(count):
                at = skip_value(elem_type, at)
            return at
        raise GGUFFormatError(f"{path}: unknown GGUF value type {vtype}")

    try:
        for _ in range(kv_count):
            key, pos = read_string(pos)
            (vtype,) = struct.unpack_from("<I", buf, pos)
            pos += 4
            if key in wanted and vtype in _SCALARS:
                (found[key],) = struct.unpack_from("<" + _SCALARS[vtype], buf, pos)
            elif key in wanted and vtype == _STRING:
                found[key], _ = read_string(pos)
            pos = skip_value(vtype, pos)
            if len(found) == len(wanted):
                break
    except struct.error as exc:
        raise GGUFFormatError(f"{path}: truncated GGUF header") from exc
    return found


def file_type_name(file_type: int) -> str:
    """The quantization name of GGUF ``general.file_type`` (15 -> ``Q4_K_M``), as llama.cpp names it."""
    from gguf import LlamaFileType

    try:
        name = LlamaFileType(file_type).name
    except ValueError:
        return f"file_type_{file_type}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")
