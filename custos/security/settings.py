"""Settings of the transport-neutral security code, and the listen-address check.

Composed into :class:`custos.server.settings.Settings`; every listener's setting uses the address check.
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, Field, field_validator


def check_host_port(value: str, field: str) -> str:
    """``value`` as a listen address ``HOST:PORT``; the error names ``field``."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{field} must be HOST:PORT (port 0..65535), got {value!r}")
    return value


class AuthLoadSettings(BaseModel):
    """Authentication and load: failed attempts, proxies, server-wide caps (docs/auth-and-load.md)."""

    auth_failure_rate_per_s: float = Field(
        0.5,
        gt=0,
        le=1_000_000,
        description="Failed authentication attempts allowed per second, per client address and per "
        "presented token id (token bucket); past it a caller gets RESOURCE_EXHAUSTED without a lookup.",
    )
    auth_failure_burst: int = Field(
        10, ge=1, le=1_000_000, description="Failed attempts a client address or token id may make at once."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="CIDRs of proxies (e.g. the Kubernetes Service / ingress range) whose X-Forwarded-For "
        "names the client; from any other peer the header is ignored.",
    )
    max_concurrent_streams: int = Field(
        100, ge=1, le=1_000_000, description="HTTP/2 streams one gRPC connection may have open at once."
    )
    max_calls_in_flight: int = Field(
        512,
        ge=1,
        le=1_000_000,
        description="Calls the server runs at once, per listener (gRPC and HTTP); past it new calls are "
        "refused (RESOURCE_EXHAUSTED / 503) before any work.",
    )
    denied_aggregate_interval_s: float = Field(
        10.0,
        gt=0,
        le=86_400,
        description="Refusals of unauthenticated callers are audited as one 'denied' record per client "
        "address, status and interval, with a count; the first of an interval is written at once.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {cidr!r} is not an IP network (CIDR)") from None
        return value
