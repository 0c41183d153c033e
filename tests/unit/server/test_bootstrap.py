"""config_change records: keyed digests only, secrets split off, first-release records still compared."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import Field, SecretStr

from custos.audit import AuditEvent, AuditStore, default_sqlite_url, make_engine, migrate
from custos.server.bootstrap import record_config_change, settings_fingerprint, split_secrets
from custos.server.settings import Settings, load_settings

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


@pytest.fixture
def store(tmp_path: Path) -> AuditStore:
    engine = make_engine(default_sqlite_url(tmp_path))
    migrate(engine)
    return AuditStore(engine)


@pytest.mark.parametrize(
    ("url", "bare", "secret"),
    [
        (
            "postgresql+psycopg://app:s3cr%40t@db:5432/custos",
            "postgresql+psycopg://app@db:5432/custos",
            "s3cr@t",
        ),
        (
            "postgresql://app@db/custos?password=pw1&sslmode=verify-full",
            "postgresql://app@db/custos?sslmode=verify-full",
            "password=pw1",
        ),
        ("postgresql://app:a@db/c?sslpassword=b", "postgresql://app@db/c", "a\nsslpassword=b"),
        ("postgresql+psycopg://app@db/custos", "postgresql+psycopg://app@db/custos", None),
        ("sqlite:////var/lib/custos/custos.db", "sqlite:////var/lib/custos/custos.db", None),
    ],
)
def test_the_database_password_is_split_off_the_url(
    tmp_path: Path, url: str, bare: str, secret: str | None
) -> None:
    values, secrets = split_secrets(load_settings(data_dir=tmp_path, database_url=url))
    assert values["database_url"] == bare
    assert secrets.get("database_url.password") == secret
    fields = settings_fingerprint(load_settings(data_dir=tmp_path, database_url=url), KEY)
    assert ("database_url.password" in fields) == (secret is not None)


class _WithSecret(Settings):
    api_secret: SecretStr = Field(SecretStr("x"), description="A secret-typed setting, for the test.")


def test_secret_typed_fields_are_compared_by_their_value(tmp_path: Path) -> None:
    one = _WithSecret(data_dir=tmp_path, api_secret=SecretStr("first"))
    two = _WithSecret(data_dir=tmp_path, api_secret=SecretStr("second"))
    assert split_secrets(one)[0]["api_secret"] == "(secret)"  # the JSON dump would hide the change
    assert settings_fingerprint(one, KEY)["api_secret"] != settings_fingerprint(two, KEY)["api_secret"]


def test_digests_are_keyed(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, database_url="postgresql://app:pw-123456@db/custos")
    mine, other = settings_fingerprint(settings, KEY), settings_fingerprint(settings, OTHER_KEY)
    assert mine.keys() == other.keys() and all(mine[name] != other[name] for name in mine)
    assert mine == settings_fingerprint(settings, KEY)  # stable, so restarts compare
    unkeyed = {
        name: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
        for name, value in {**split_secrets(settings)[0], **split_secrets(settings)[1]}.items()
    }
    assert not any(unkeyed[name][:8] in digest for name, digest in mine.items())


def _first_release_record(store: AuditStore, settings: Settings) -> None:
    """What the first release wrote: unkeyed 16-digit SHA-256 of every value, the URL with its password."""
    fields = {
        name: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
        for name, value in sorted(settings.model_dump(mode="json").items())
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    now = datetime.now(UTC)
    store.append(
        AuditEvent(
            event_type="config_change",
            phase="event",
            start_time=now,
            end_time=now,
            actor="custos:bootstrap",
            rpc="start",
            status="OK",
            details={
                "digest": hashlib.sha256(canonical).hexdigest(),
                "previous_digest": None,
                "changed": sorted(fields),
                "fields": fields,
                "actor": {"principal": "custos:bootstrap"},
            },
        )
    )


def test_a_record_of_the_first_release_is_compared_then_replaced_by_keyed_digests(
    store: AuditStore, tmp_path: Path
) -> None:
    url = "postgresql://app:pw-old-123@db/custos"
    _first_release_record(store, load_settings(data_dir=tmp_path, database_url=url))
    # Same settings: recorded once more (the scheme changed) with nothing changed.
    assert record_config_change(store, load_settings(data_dir=tmp_path, database_url=url), index_key=KEY)
    upgraded = store.query(event_type="config_change", page_size=1)[0][0]
    assert upgraded.details["changed"] == [] and upgraded.details["previous_scheme"] == "sha256-16"
    assert upgraded.details["secret_fields"] == ["database_url.password"]
    assert "pw-old-123" not in upgraded.payload_json
    assert not record_config_change(store, load_settings(data_dir=tmp_path, database_url=url), index_key=KEY)
    # A change against a first-release record is named too.
    (tmp_path / "other").mkdir()
    store2 = AuditStore(make_engine(default_sqlite_url(tmp_path / "other")))
    migrate(store2.engine)
    _first_release_record(store2, load_settings(data_dir=tmp_path, database_url=url, max_messages=7))
    assert record_config_change(store2, load_settings(data_dir=tmp_path, database_url=url), index_key=KEY)
    assert store2.query(event_type="config_change", page_size=1)[0][0].details["changed"] == ["max_messages"]
    assert store.verify().ok and store2.verify().ok
