"""The GGUF header reader that finds the source quantization without parsing the token table."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from custos.engine.gguf_meta import GGUFFormatError, file_type_name, is_gguf, read_gguf_metadata


def write_gguf(path: Path, *, file_type: int | None = 15, tokens: int = 5000) -> Path:
    writer = gguf.GGUFWriter(path, "gemma3")
    writer.add_name("Tiny Test")
    writer.add_context_length(2048)
    writer.add_token_list([f"tok{i}" for i in range(tokens)])  # a long string array to skip
    writer.add_token_scores([0.5] * tokens)  # a long numeric array to skip
    writer.add_bool("custom.flag", True)
    writer.add_float32("custom.scale", 0.25)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_tensor("w", np.ones((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_reads_scalars_after_long_arrays(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf")
    meta = read_gguf_metadata(
        path,
        [
            "general.file_type",
            "general.name",
            "gemma3.context_length",
            "custom.flag",
            "custom.scale",
            "absent",
        ],
    )
    assert meta == {
        "general.file_type": 15,
        "general.name": "Tiny Test",
        "gemma3.context_length": 2048,
        "custom.flag": True,
        "custom.scale": 0.25,
    }
    assert is_gguf(path)


def test_missing_key_is_left_out(tmp_path: Path) -> None:
    assert read_gguf_metadata(write_gguf(tmp_path / "m.gguf", file_type=None), ["general.file_type"]) == {}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"NOPE" + b"\0" * 40, "not a GGUF"),
        (b"GGUF" + (9).to_bytes(4, "little") + b"\0" * 16, "version"),
        (
            b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (5).to_bytes(8, "little"),
            "truncated",
        ),
    ],
)
def test_bad_files_raise(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFFormatError, match=match):
        read_gguf_metadata(path, ["general.file_type"])


def test_is_gguf_checks_magic(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"PK\3\4")
    assert not is_gguf(tmp_path / "x.gguf")
    assert not is_gguf(tmp_path)
    assert not is_gguf(tmp_path / "missing.gguf")


@pytest.mark.parametrize(
    ("file_type", "name"),
    [
        (0, "F32"),
        (1, "F16"),
        (7, "Q8_0"),
        (15, "Q4_K_M"),
        (14, "Q4_K_S"),
        (17, "Q5_K_M"),
        (32, "BF16"),
        (999, "file_type_999"),
    ],
)
def test_file_type_names(file_type: int, name: str) -> None:
    assert file_type_name(file_type) == name
