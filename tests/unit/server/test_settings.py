"""Settings: precedence file < environment < flags, and clear errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from custos.server.settings import SettingsError, load_settings


def test_defaults_derive_paths_from_data_dir(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.listen == "127.0.0.1:50051"
    assert settings.precision == "bf16"
    assert settings.resolved_database_url == f"sqlite:///{(tmp_path / 'custos.db').resolve()}"
    assert settings.resolved_key_file == tmp_path / "keys" / "master.json"
    assert settings.resolved_model_cache_dir == tmp_path / "models"


def test_precedence_file_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "custos.toml"
    config.write_text('listen = "127.0.0.1:6000"\nmax_new_tokens_limit = 100\nprecision = "fp32"\n')
    assert load_settings(config).listen == "127.0.0.1:6000"
    monkeypatch.setenv("CUSTOS_LISTEN", "127.0.0.1:7000")
    monkeypatch.setenv("CUSTOS_PRECISION", "bf16")
    settings = load_settings(config)
    assert (settings.listen, settings.precision, settings.max_new_tokens_limit) == (
        "127.0.0.1:7000",
        "bf16",
        100,
    )
    assert load_settings(config, listen="127.0.0.1:8000").listen == "127.0.0.1:8000"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"listen": "nonsense"}, "listen"),
        ({"listen": "127.0.0.1:70000"}, "listen"),
        ({"precision": "int3"}, "precision"),
        ({"max_new_tokens_limit": 0}, "max_new_tokens_limit"),
        ({"default_max_new_tokens": 600}, "default_max_new_tokens"),
        ({"pii_score_threshold": 1.5}, "pii_score_threshold"),
        ({"pii_languages": ["en", "xx"]}, "pii_languages"),
        ({"pii_languages": ["de", "de"]}, "pii_languages"),
        ({"no_such_setting": 1}, "no_such_setting"),
        ({"idempotency_ttl_s": 10}, "idempotency_ttl_s"),
        ({"idempotency_ttl_s": 2 * 86400, "transcript_retention_days": 1}, "idempotency_ttl_s"),
    ],
)
def test_bad_settings_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(SettingsError, match=field):
        load_settings(**overrides)


def test_idempotency_ttl_within_transcript_retention() -> None:
    assert load_settings(idempotency_ttl_s=86400, transcript_retention_days=1).idempotency_ttl_s == 86400
    assert load_settings(idempotency_ttl_s=30 * 86400).idempotency_ttl_s == 30 * 86400  # retention off


def test_bad_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    config = tmp_path / "bad.toml"
    config.write_text("listen = \n")
    with pytest.raises(SettingsError, match=r"bad\.toml"):
        load_settings(config)
    config.write_text('typo_setting = "x"\n')
    with pytest.raises(SettingsError, match="typo_setting"):
        load_settings(config)


def test_readme_documents_every_setting() -> None:
    from custos.server.settings import Settings

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"| `{name}` |" not in readme]
    assert missing == []
