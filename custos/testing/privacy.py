"""Guards and assertions for tests of code that pseudonymizes text; not imported by production code.

Shared by the privacy unit tests and usable by server and integration tests: a socket guard that records and
refuses any non-loopback lookup or connection, and assertions that no raw value reaches model input or audit.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from presidio_analyzer import AnalyzerEngine

from custos.privacy.pseudonymize import PLACEHOLDER_PATTERN, Pseudonymized

_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


@dataclass(frozen=True)
class BuiltAnalyzer:
    """An analyzer plus what happened while it was built (for a session fixture under ``no_network``)."""

    analyzer: AnalyzerEngine
    network_attempts: list[str]
    build_seconds: float


def is_loopback(host: object) -> bool:
    """Return True for loopback addresses and names (and None, which getaddrinfo treats as local)."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@contextmanager
def no_network(attempts: list[str]) -> Iterator[list[str]]:
    """Record in ``attempts``, and refuse with ENETUNREACH, every non-loopback lookup or connection.

    Refusing (rather than only recording) lets code under test take its offline path, as it would on an
    air-gapped host; the caller asserts ``attempts`` is empty.
    """

    def refuse(what: str) -> OSError:
        attempts.append(what)
        return OSError(errno.ENETUNREACH, f"network disabled by test: {what}")

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_create_connection = socket.create_connection
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address[0]):
            raise refuse(f"connect {address[0]}:{address[1]}")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address[0]):
            raise refuse(f"connect_ex {address[0]}:{address[1]}")
        return real_connect_ex(self, address)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        if not is_loopback(address[0]):
            raise refuse(f"create_connection {address[0]}:{address[1]}")
        return real_create_connection(address, *args, **kwargs)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_loopback(host):
            raise refuse(f"getaddrinfo {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    socket.create_connection = create_connection
    socket.getaddrinfo = getaddrinfo
    try:
        yield attempts
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = real_connect_ex  # type: ignore[method-assign]
        socket.create_connection = real_create_connection
        socket.getaddrinfo = real_getaddrinfo


def assert_values_masked(result: Pseudonymized, values: Iterable[str]) -> None:
    """Assert no raw value appears in any anonymized message (case-insensitively)."""
    for text in result.texts:
        for value in values:
            assert value.lower() not in text.lower(), "a raw value reached the anonymized text"


def assert_only_issued_placeholders(result: Pseudonymized) -> None:
    """Assert every placeholder token in the output was issued for a finding of that same message."""
    for index, text in enumerate(result.texts):
        issued = {f.placeholder for f in result.findings if f.message_index == index}
        seen = {match.group(0) for match in PLACEHOLDER_PATTERN.finditer(text)}
        assert seen <= issued, f"message {index} carries placeholders nobody issued: {sorted(seen - issued)}"


def assert_audit_has_no_values(result: Pseudonymized, values: Iterable[str]) -> None:
    """Assert the findings' audit forms are strict JSON and mention none of the values."""
    for finding in result.findings:
        dumped = json.dumps(finding.to_audit(), allow_nan=False, sort_keys=True)
        for value in values:
            assert value.lower() not in dumped.lower(), "a raw value reached the audit form"
