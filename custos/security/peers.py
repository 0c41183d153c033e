"""Who is on the other end: the client address of a call, through trusted proxies only.

Peers are written in gRPC's notation (``ipv4:10.0.0.7:51234``, ``ipv6:[::1]:51234``) on both edges. Behind a
load balancer or a Kubernetes Service every call comes from the proxy; its ``X-Forwarded-For`` names the
client, but only a configured proxy may say so: from any other peer the header is ignored, so a caller
cannot pick the address its failed attempts are counted against.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

FORWARDED_FOR = "x-forwarded-for"

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def peer_host(peer: str) -> str:
    """The address part of a gRPC-notation peer (no port): ``ipv4:1.2.3.4:5`` -> ``1.2.3.4``.

    Anything else (``unix:``, ``unknown``) is returned as it is: the whole peer is then the key.
    """
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        host = rest.rsplit(":", 1)[0] if rest.startswith("[") else rest
        return host.strip("[]")
    return peer


def _parse(value: str) -> _Address | None:
    try:
        return ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None


def _peer_of(address: _Address) -> str:
    return f"ipv6:[{address}]" if address.version == 6 else f"ipv4:{address}"


class ClientAddresses:
    """Resolves the client address of a call from its peer and ``X-Forwarded-For`` values."""

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._trusted: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in trusted_proxies
        )

    def trusts(self, address: _Address) -> bool:
        """Whether ``address`` is a configured proxy."""
        return any(address in network for network in self._trusted)

    def resolve(self, peer: str, forwarded_for: Sequence[str]) -> str:
        """The client's peer: ``peer`` itself unless it is a trusted proxy that forwarded the call.

        Through a chain of proxies the header is read from the right: the first address that is not a
        trusted proxy is the client (addresses to its left were written by the client and prove nothing).
        Forwarded addresses carry no port, so the result is ``ipv4:ADDRESS`` / ``ipv6:[ADDRESS]``.
        """
        direct = _parse(peer_host(peer))
        if direct is None or not self._trusted or not self.trusts(direct) or not forwarded_for:
            return peer
        hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
        client = direct
        for hop in reversed(hops):
            address = _parse(hop)
            if address is None:
                break  # a malformed entry: trust stops at the last proxy that wrote a good one
            client = address
            if not self.trusts(address):
                break
        return peer if client == direct else _peer_of(client)
