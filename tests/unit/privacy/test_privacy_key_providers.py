"""Key providers beyond the file: environment variable and PKCS#11 (against a temporary SoftHSM2 token)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from custos.audit import default_sqlite_url, make_engine, migrate
from custos.privacy.envelope import open_for_subject, open_sealed, seal, seal_for_subject
from custos.privacy.errors import DecryptionFailed, KeyFileError, KeyNotFound
from custos.privacy.keys import EnvKeyProvider, FileKeyProvider, software_unwrap, software_wrap
from custos.privacy.subject_keys import SubjectKeyStore
from custos.privacy.transcripts import transcript_binding

SOFTHSM_MODULES = [
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
]
PIN = "4321"


# ---- environment ------------------------------------------------------------------------------------


def test_env_provider_reads_the_key_document() -> None:
    document = FileKeyProvider.generate().to_json().decode()
    provider = EnvKeyProvider.from_environment("KEYS", {"KEYS": document})
    assert provider.kind == "env" and provider.versions == [1]
    blob = seal(b"hello", aad=b"row", keys=provider)
    again = EnvKeyProvider.from_environment("KEYS", {"KEYS": document})
    assert open_sealed(blob, aad=b"row", keys=again) == b"hello"
    assert "KEYS" not in repr(provider) and document[20:40] not in repr(provider)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "KEYS is not set"),
        ({"KEYS": ""}, "KEYS is not set"),
        ({"KEYS": "not json c2VjcmV0"}, r"\$KEYS is malformed \(not JSON\)"),
    ],
)
def test_env_provider_refusals_say_what_is_wrong(environ: dict[str, str], message: str) -> None:
    with pytest.raises(KeyFileError, match=message) as info:
        EnvKeyProvider.from_environment("KEYS", environ)
    assert "c2VjcmV0" not in str(info.value)


# ---- PKCS#11 on SoftHSM2 ----------------------------------------------------------------------------


def _module() -> Path | None:
    return next((m for m in SOFTHSM_MODULES if m.exists()), None)


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh SoftHSM2 token labelled 'custos' in a temporary directory (SOFTHSM2_CONF points at it)."""
    pytest.importorskip("pkcs11")
    module = _module()
    if module is None or shutil.which("softhsm2-util") is None:
        pytest.fail("SoftHSM2 is not installed; run make install-test (it installs the softhsm2 package)")
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "custos", "--pin", PIN, "--so-pin", "8765"],
        check=True,
        capture_output=True,
    )
    yield module
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture(scope="module")
def hsm(token: Path) -> Iterator[object]:
    from custos.privacy.pkcs11_provider import Pkcs11KeyProvider

    provider = Pkcs11KeyProvider.open(module=token, token_label="custos", pin=PIN, label="custos-master")
    provider.initialize()
    yield provider
    provider.close()


def test_pkcs11_master_key_is_non_extractable(hsm: object) -> None:
    from custos.privacy.pkcs11_provider import Pkcs11KeyProvider

    assert isinstance(hsm, Pkcs11KeyProvider)
    assert hsm.versions == [1] and hsm.current_version == 1 and hsm.kind == "pkcs11"
    assert hsm.is_extractable(1) is False
    assert len(hsm.index_key()) == 32


def test_pkcs11_wrap_is_rfc5649_and_round_trips(hsm: object, tmp_path: Path) -> None:
    from custos.privacy.pkcs11_provider import Pkcs11KeyProvider

    assert isinstance(hsm, Pkcs11KeyProvider)
    key = os.urandom(32)
    wrapped = hsm.wrap(1, key)
    assert len(wrapped) == 40 and key not in wrapped
    assert hsm.unwrap(1, wrapped) == key
    # A key wrapped in software under some other key does not unwrap on the token.
    with pytest.raises(DecryptionFailed):
        hsm.unwrap(1, software_wrap(b"k" * 32, key))
    tampered = bytearray(wrapped)
    tampered[5] ^= 1
    with pytest.raises(DecryptionFailed):
        hsm.unwrap(1, bytes(tampered))
    with pytest.raises(KeyNotFound):
        hsm.unwrap(9, wrapped)
    assert software_unwrap(b"k" * 32, software_wrap(b"k" * 32, key), "x") == key


def test_pkcs11_subject_keys_and_transcripts_round_trip(hsm: object, tmp_path: Path) -> None:
    from custos.privacy.pkcs11_provider import Pkcs11KeyProvider

    assert isinstance(hsm, Pkcs11KeyProvider)
    engine = make_engine(default_sqlite_url(tmp_path))
    migrate(engine)
    store = SubjectKeyStore(engine, hsm)
    subject_key = store.get_or_create("subject-a")
    binding = transcript_binding("t-1", "subject-a")
    blob = seal_for_subject(b"transcript", binding=binding, subject_key=subject_key)
    # A second session (another replica) reads it through the token.
    again = Pkcs11KeyProvider.open(
        module=Path(str(_module())), token_label="custos", pin=PIN, label="custos-master"
    )
    try:
        reread = SubjectKeyStore(engine, again).get("subject-a")
        assert open_for_subject(blob, binding=binding, subject_key=reread) == b"transcript"
        # Format-1 envelopes work through the token too.
        assert open_sealed(seal(b"v1", aad=b"row", keys=hsm), aad=b"row", keys=again) == b"v1"

        # Rotation on the token: version 2 is generated there and becomes primary; rewrap moves the key.
        assert hsm.add_version() == 2 and hsm.current_version == 2 and hsm.is_extractable(2) is False
        assert store.rewrap() == 1 and store.usage() == {2: 1}
        again.reload()
        assert open_for_subject(
            blob, binding=binding, subject_key=SubjectKeyStore(engine, again).get("subject-a")
        ) == (b"transcript")
    finally:
        again.close()
        engine.dispose()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM subject_keys")).scalar_one() == 1


def test_pkcs11_wrong_pin_is_refused(token: Path) -> None:
    # In a fresh process: login state is shared by every session of a process that has logged in.
    script = (
        "from pathlib import Path\n"
        "from custos.privacy.errors import KeyFileError\n"
        "from custos.privacy.pkcs11_provider import Pkcs11KeyProvider\n"
        "try:\n"
        f"    Pkcs11KeyProvider.open(module=Path({str(token)!r}), token_label='custos', pin='0000', "
        "label='custos-master')\n"
        "except KeyFileError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert "check the PIN" in result.stdout


def test_pkcs11_from_settings_through_the_commands(hsm: object, token: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from custos.cli.main import app
    from custos.server.keys import open_master_keys
    from custos.server.settings import load_settings

    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN)
    pin_file.chmod(0o600)
    options = {
        "data_dir": tmp_path / "d",
        "key_provider": "pkcs11",
        "pkcs11_module": token,
        "pkcs11_pin_file": pin_file,
        "pkcs11_key_label": "custos-cli",
    }
    config = tmp_path / "custos.toml"
    config.write_text("".join(f'{k} = "{v}"\n' for k, v in options.items()))
    runner = CliRunner()
    result = runner.invoke(app, ["keys", "init", "--config", str(config)])
    assert result.exit_code == 0, result.output
    keys = open_master_keys(load_settings(config), create=False)
    assert keys.kind == "pkcs11" and keys.versions == [1]
    assert keys.unwrap(1, keys.wrap(1, b"k" * 32)) == b"k" * 32
    assert not (tmp_path / "d" / "keys" / "master.json").exists()  # nothing on disk
    listing = runner.invoke(app, ["keys", "list", "--config", str(config)])
    assert listing.exit_code == 0 and "pkcs11" in listing.output, listing.output

    pin_file.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        open_master_keys(load_settings(config), create=False)
