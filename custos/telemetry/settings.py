"""The OpenTelemetry settings group, composed into :class:`custos.server.settings.Settings`."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator


class TelemetrySettings(BaseModel):
    """OpenTelemetry traces (docs/observability.md)."""

    otel_endpoint: str | None = Field(
        None,
        description="OTLP/gRPC endpoint of the on-prem trace collector, e.g. 'http://otel-collector:4317' "
        "('https://' verifies it with otel_ca_file or the system roots). Unset: no traces are made.",
    )
    otel_service_name: str = Field(
        "custos", min_length=1, max_length=128, description="service.name of the traces."
    )
    otel_sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of new traces recorded; a caller's sampled traceparent is followed.",
    )
    otel_ca_file: Path | None = Field(
        None, description="CA bundle (PEM) that signs an 'https://' otel_endpoint's certificate."
    )

    @field_validator("otel_endpoint")
    @classmethod
    def _otel_endpoint_is_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ("http", "https") or not rest or "/" in rest.rstrip("/"):
            raise ValueError("must be http://HOST:PORT or https://HOST:PORT (the collector's OTLP/gRPC port)")
        return value
