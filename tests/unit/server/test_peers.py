"""Client addresses: X-Forwarded-For is believed only from trusted proxies, read from the right."""

from __future__ import annotations

import pytest

from custos.security.peers import ClientAddresses, peer_host

PROXIES = ClientAddresses(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:1.2.3.4:5678", "1.2.3.4"),
        ("ipv6:[::1]:5678", "::1"),
        ("ipv4:1.2.3.4", "1.2.3.4"),
        ("unix:/s", "unix:/s"),
    ],
)
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("ipv4:203.0.113.5:4000", ["198.51.100.1"], "ipv4:203.0.113.5:4000"),  # not a proxy: header ignored
        ("ipv4:10.1.2.3:4000", [], "ipv4:10.1.2.3:4000"),  # a proxy that forwarded nothing
        ("ipv4:10.1.2.3:4000", ["198.51.100.1"], "ipv4:198.51.100.1"),
        # The client wrote the leftmost entry itself; the first untrusted hop from the right is the client.
        ("ipv4:10.1.2.3:4000", ["6.6.6.6, 198.51.100.1, 10.9.9.9"], "ipv4:198.51.100.1"),
        ("ipv4:10.1.2.3:4000", ["6.6.6.6", "198.51.100.1"], "ipv4:198.51.100.1"),  # several headers
        ("ipv4:10.1.2.3:4000", ["not-an-address"], "ipv4:10.1.2.3:4000"),  # garbage: the proxy is the client
        ("ipv6:[fd00::1]:4000", ["2001:db8::7"], "ipv6:[2001:db8::7]"),
    ],
)
def test_resolve(peer: str, forwarded: list[str], client: str) -> None:
    assert PROXIES.resolve(peer, forwarded) == client


def test_no_trusted_proxies_means_the_transport_peer() -> None:
    assert ClientAddresses([]).resolve("ipv4:10.1.2.3:4000", ["198.51.100.1"]) == "ipv4:10.1.2.3:4000"


def test_a_bad_proxy_network_is_refused_naming_the_setting() -> None:
    from custos.server.settings import SettingsError, load_settings

    with pytest.raises(SettingsError) as info:
        load_settings(trusted_proxies=["10.0.0.0/8", "not-a-network"])
    assert "trusted_proxies" in str(info.value)
    assert "not-a-network" in str(info.value)
