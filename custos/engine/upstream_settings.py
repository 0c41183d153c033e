"""The upstream engine's settings group (an OpenAI-compatible server runs the model).

Composed into :class:`custos.server.settings.Settings`; the engine itself takes plain values
(docs: deploy/README.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, field_validator, model_validator

from custos.engine.upstream import check_base_url


class UpstreamSettings(BaseModel):
    """Upstream engine: an OpenAI-compatible server (vLLM, TGI, Ollama, ...) runs the model."""

    engine_backend: Literal["local", "openai"] = Field(
        "local",
        description="Who runs the model: 'local' (the transformers engine in this process) or 'openai' (an "
        "OpenAI-compatible server at upstream_base_url; it only ever sees anonymized prompts).",
    )
    upstream_base_url: str | None = Field(
        None,
        description="engine_backend = 'openai': the upstream's API base URL, e.g. http://vllm:8000/v1 "
        "(http or https, no credentials in it).",
    )
    upstream_model: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="engine_backend = 'openai': the model name the upstream serves (its /v1/models id).",
    )
    upstream_api_key_file: Path | None = Field(
        None,
        description="File (mode 0600) holding the upstream's API key, sent as a Bearer token; unset: none.",
    )
    upstream_ca_file: Path | None = Field(
        None,
        description="CA bundle (PEM) the upstream's TLS certificate is verified with; default: system CAs.",
    )
    upstream_timeout_s: float = Field(
        60.0,
        gt=0.0,
        le=3600.0,
        description="Seconds the upstream may stay silent (connect, or between stream chunks) before the "
        "call fails with DEADLINE_EXCEEDED.",
    )
    upstream_max_in_flight: int = Field(
        16,
        ge=1,
        le=4096,
        description="Requests Custos sends the upstream at once; up to max_queued_requests more wait, "
        "beyond that RESOURCE_EXHAUSTED.",
    )
    upstream_probe_interval_s: float = Field(
        5.0,
        gt=0.0,
        le=300.0,
        description="Seconds between readiness probes of the upstream (/v1/models); the Inference "
        "service's health is NOT_SERVING while the served model is not listed.",
    )

    @field_validator("upstream_base_url")
    @classmethod
    def _upstream_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        return check_base_url(value)

    @model_validator(mode="after")
    def _upstream_complete(self) -> Self:
        if self.engine_backend != "openai":
            return self
        for name in ("upstream_base_url", "upstream_model"):
            if not getattr(self, name):
                raise ValueError(f"{name}: required when engine_backend = 'openai'")
        # prompt_format is declared on the composed settings, not in this group.
        prompt_format = getattr(self, "prompt_format", "auto")
        if prompt_format not in ("auto", "plain-customer-service"):
            raise ValueError(
                "prompt_format: engine_backend = 'openai' sends the plain-customer-service prompt; "
                f"{prompt_format!r} is not available there"
            )
        for name in ("upstream_api_key_file", "upstream_ca_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} does not exist or is not a file")
        return self
