"""Key file handling and blind indexes."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from custos.privacy.errors import KeyFileError, KeyNotFound
from custos.privacy.keys import FileKeyProvider, MasterKeyProvider, blind_index

KEY_A = base64.b64encode(b"\x01" * 32).decode()
KEY_B = base64.b64encode(b"\x02" * 32).decode()


def write_key_file(path: Path, document: object, mode: int = 0o600) -> Path:
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    os.chmod(path, mode)
    return path


def valid_document() -> dict[str, object]:
    return {"format": 1, "primary": 2, "master_keys": {"1": KEY_A, "2": KEY_B}, "index_key": KEY_A}


def test_create_writes_a_0600_file_that_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    created = FileKeyProvider.create(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = FileKeyProvider.load(path)
    assert loaded.current_version == created.current_version == 1
    assert loaded.key(1) == created.key(1) and len(loaded.key(1)) == 32
    assert loaded.index_key() == created.index_key() != created.key(1)
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]  # no temporary file left behind
    assert isinstance(loaded, MasterKeyProvider)


def test_create_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        FileKeyProvider.create(tmp_path / "keys.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600


def test_two_created_files_hold_different_keys(tmp_path: Path) -> None:
    a = FileKeyProvider.create(tmp_path / "a.json")
    b = FileKeyProvider.create(tmp_path / "b.json")
    assert a.key(1) != b.key(1) and a.index_key() != b.index_key()


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "keys.json", valid_document())
    before = path.read_bytes()

    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        FileKeyProvider.create(path)
    assert path.read_bytes() == before


def test_load_of_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        FileKeyProvider.load(tmp_path / "missing.json")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o666, 0o610, 0o601])
def test_load_refuses_group_or_other_access_and_says_chmod(tmp_path: Path, mode: int) -> None:
    path = write_key_file(tmp_path / "keys.json", valid_document(), mode)
    with pytest.raises(KeyFileError) as info:
        FileKeyProvider.load(path)
    message = str(info.value)
    assert f"chmod 600 {path}" in message
    assert KEY_A not in message and KEY_B not in message


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_load_accepts_owner_only_modes(tmp_path: Path, mode: int) -> None:
    provider = FileKeyProvider.load(write_key_file(tmp_path / "keys.json", valid_document(), mode))
    assert provider.current_version == 2
    assert provider.key(1) == b"\x01" * 32 and provider.key(2) == b"\x02" * 32
    assert provider.versions == [1, 2]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_load_of_an_unreadable_file_says_how_to_fix(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "keys.json", valid_document(), 0o000)
    with pytest.raises(KeyFileError, match="chmod 600"):
        FileKeyProvider.load(path)


def test_load_refuses_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError):
        FileKeyProvider.load(path)


def _with(**changes: object) -> dict[str, object]:
    document = valid_document()
    for key, value in changes.items():
        if value is None:
            document.pop(key)
        else:
            document[key] = value
    return document


@pytest.mark.parametrize(
    "document",
    [
        pytest.param("not json at all", id="not-json"),
        pytest.param("[1, 2]", id="json-list"),
        pytest.param("", id="empty"),
        pytest.param(_with(format=2), id="format-2"),
        pytest.param(_with(format=None), id="no-format"),
        pytest.param(_with(primary=None), id="no-primary"),
        pytest.param(_with(primary=3), id="primary-without-key"),
        pytest.param(_with(primary="2"), id="primary-string"),
        pytest.param(_with(primary=True), id="primary-bool"),
        pytest.param(_with(master_keys={}), id="no-master-keys"),
        pytest.param(_with(master_keys={"2": base64.b64encode(b"short").decode()}), id="short-key"),
        pytest.param(_with(master_keys={"2": "!!not base64!!"}), id="bad-base64"),
        pytest.param(_with(master_keys={"02": KEY_B}), id="version-leading-zero"),
        pytest.param(_with(master_keys={"0": KEY_B}, primary=0), id="version-zero"),
        pytest.param(_with(index_key=None), id="no-index-key"),
        pytest.param(_with(index_key=123), id="index-key-not-string"),
        pytest.param(_with(extra="x"), id="unknown-field"),
    ],
)
def test_load_refuses_malformed_files_without_echoing_keys(tmp_path: Path, document: object) -> None:
    path = write_key_file(tmp_path / "keys.json", document)
    with pytest.raises(KeyFileError, match="malformed") as info:
        FileKeyProvider.load(path)
    assert KEY_A not in str(info.value) and KEY_B not in str(info.value)


def test_load_or_create_creates_once_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = FileKeyProvider.load_or_create(path)
    second = FileKeyProvider.load_or_create(path)
    assert first.key(1) == second.key(1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_load_or_create_still_refuses_a_loose_existing_file(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "keys.json", valid_document(), 0o644)
    with pytest.raises(KeyFileError, match="chmod"):
        FileKeyProvider.load_or_create(path)


def test_unknown_version_raises_key_not_found() -> None:
    provider = FileKeyProvider(primary=1, master_keys={1: b"k" * 32}, index_key=b"i" * 32)
    with pytest.raises(KeyNotFound, match="version 7"):
        provider.key(7)


def test_repr_shows_no_key_material() -> None:
    provider = FileKeyProvider(primary=1, master_keys={1: b"k" * 32}, index_key=b"i" * 32)
    assert "kkkk" not in repr(provider) and "aWlp" not in repr(provider)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(
            {"primary": 2, "master_keys": {1: b"k" * 32}, "index_key": b"i" * 32}, id="primary-missing"
        ),
        pytest.param(
            {"primary": 1, "master_keys": {1: b"k" * 31}, "index_key": b"i" * 32}, id="short-master"
        ),
        pytest.param({"primary": 1, "master_keys": {1: b"k" * 32}, "index_key": b"i" * 16}, id="short-index"),
        pytest.param(
            {"primary": 0, "master_keys": {0: b"k" * 32}, "index_key": b"i" * 32}, id="version-zero"
        ),
    ],
)
def test_constructor_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FileKeyProvider(**kwargs)  # type: ignore[arg-type]


# --- blind indexes ------------------------------------------------------------------------------------------

INDEX_KEY = bytes(range(32))


def test_blind_index_known_answer() -> None:
    # Pinned: changing the construction silently breaks every index already stored in audit rows.
    assert blind_index(INDEX_KEY, "subject", "alice") == (
        "ad7d4bdfd56041dfd15de3279f87c8f2948d5877fd3d2259b9a7d19d3456b35c"
    )


def test_blind_index_is_deterministic_hex() -> None:
    first = blind_index(INDEX_KEY, "conversation", "conv-42")
    assert first == blind_index(INDEX_KEY, "conversation", "conv-42")
    assert len(first) == 64 and int(first, 16) >= 0


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param(("conversation", "x"), ("subject", "x"), id="kind-separates"),
        pytest.param(("subject", "alice"), ("subject", "Alice"), id="value-case-matters"),
        pytest.param(("subject", "ab"), ("subjecta", "b"), id="no-kind-value-shift"),
        pytest.param(("subject", ""), ("subject", " "), id="empty-vs-space"),
    ],
)
def test_blind_index_separates(a: tuple[str, str], b: tuple[str, str]) -> None:
    assert blind_index(INDEX_KEY, *a) != blind_index(INDEX_KEY, *b)


def test_blind_index_depends_on_the_key() -> None:
    assert blind_index(INDEX_KEY, "subject", "alice") != blind_index(bytes(32), "subject", "alice")


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        (b"short", "subject"),
        (INDEX_KEY, ""),
        (INDEX_KEY, "sub ject"),
        (INDEX_KEY, "subj\x00ect"),
        (INDEX_KEY, "ß"),
    ],
)
def test_blind_index_rejects_bad_arguments(key: bytes, kind: str) -> None:
    with pytest.raises(ValueError):
        blind_index(key, kind, "v")
