"""Address rules, parsed once at start-up: client allow-lists and model egress allow-lists.

Pure functions and small immutable objects (``ipaddress`` only), so the settings can validate
entries early and the hot path only does a few precompiled network comparisons.

Client rules: a list of CIDRs (or single addresses). Egress rules: a list of entries, each one of

* a CIDR or an address: ``10.0.0.0/8``, ``192.168.1.20``, ``fd12::/16``;
* an address with a port: ``10.1.2.3:8000``, ``[fd12::5]:8000``;
* a host name, optionally with a port: ``models.internal``, ``vllm.internal:8000``;
* a wildcard domain, optionally with a port: ``*.models.internal`` (any subdomain, not the
  domain itself).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Loopback and the private ranges: what a local `enclave up` and an intranet deployment use.
LOOPBACK_AND_PRIVATE: Final = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)

# Never reachable from the gateway, whatever the configuration: link-local (includes the
# AWS/GCP/Azure metadata address 169.254.169.254), AWS's IPv6 metadata address, Alibaba's
# metadata address.
BLOCKED_NETWORKS: Final = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
    ipaddress.ip_network("100.100.100.200/32"),
)


# Per request for the client address (ban checks): a bounded memo spares ipaddress's parser
# (about 10 µs a call); addresses are immutable, and a flood of distinct ones only evicts.
@functools.lru_cache(maxsize=4096)
def parse_ip(text: str) -> IPAddress | None:
    """``text`` as an address (zone dropped, IPv4-mapped IPv6 unwrapped), or None."""
    try:
        ip: IPAddress = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:10.0.0.1 is the same host as 10.0.0.1
    return ip


def blocked_ip(ip: IPAddress) -> bool:
    return any(ip.version == net.version and ip in net for net in BLOCKED_NETWORKS)


def parse_networks(entries: Iterable[str], setting: str) -> tuple[IPNetwork, ...]:
    """CIDRs or single addresses; ValueError naming ``setting`` and the bad entry."""
    networks: list[IPNetwork] = []
    for entry in entries:
        text = str(entry).strip()
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(
                f"{setting}: {entry!r} is not an IP network (write CIDRs such as 10.0.0.0/8 "
                "or single addresses such as 10.1.2.3)"
            ) from None
    return tuple(networks)


def in_networks(ip: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


# -- client addresses ----------------------------------------------------------------------


def forwarded_client(
    peer: IPAddress, forwarded_for: Sequence[str], trusted_proxies: Sequence[IPNetwork]
) -> tuple[IPAddress | None, str]:
    """The client behind trusted proxies: the rightmost X-Forwarded-For hop that is untrusted.

    ``forwarded_for`` is every X-Forwarded-For header value in order. Only consulted when
    ``peer`` is a trusted proxy; every hop right of the answer is a trusted proxy too. Returns
    the address (None when the hop is not an address) and the hop as written, for messages.
    """
    if not trusted_proxies or not in_networks(peer, trusted_proxies):
        return peer, str(peer)
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    hops = [hop for hop in hops if hop]
    current: IPAddress = peer
    for hop in reversed(hops):
        ip = parse_ip(_strip_port(hop))
        if ip is None:
            return None, hop
        current = ip
        if not in_networks(ip, trusted_proxies):
            return ip, hop
    return current, str(current)  # every hop is a proxy: the leftmost one is the client


def _strip_port(hop: str) -> str:
    """``[v6]:port`` and ``v4:port`` (some proxies add the port) to the bare address."""
    if hop.startswith("["):
        return hop[1:].split("]", 1)[0]
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop


# -- egress ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NetworkRule:
    network: IPNetwork
    port: int | None


@dataclass(frozen=True, slots=True)
class NameRule:
    name: str  # lower case, no trailing dot; for a wildcard the suffix with its leading dot
    wildcard: bool
    port: int | None

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.wildcard:
            return host.endswith(self.name)
        return host == self.name


def normalize_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"model_egress_allow: {entry!r} has an invalid port {text!r}")
    return int(text)


def parse_egress_entry(entry: str) -> NetworkRule | NameRule:
    """One allow-list entry (see the module docstring); ValueError says what is wrong."""
    text = str(entry).strip()
    if not text:
        raise ValueError("model_egress_allow: empty entry")
    if "://" in text:
        raise ValueError(
            f"model_egress_allow: {entry!r} is a URL; write the host (models.internal), "
            "host:port or a CIDR"
        )
    try:
        return NetworkRule(ipaddress.ip_network(text, strict=False), None)
    except ValueError:
        pass
    if text.startswith("["):  # [v6]:port
        address, _, rest = text[1:].partition("]")
        if not rest.startswith(":"):
            raise ValueError(f"model_egress_allow: {entry!r} should be [IPv6 address]:port")
        ip = parse_ip(address)
        if ip is None:
            raise ValueError(f"model_egress_allow: {address!r} is not an IPv6 address")
        return NetworkRule(ipaddress.ip_network(ip), _port(rest[1:], entry))
    host, colon, port_text = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    port = _port(port_text, entry) if colon else None
    ip = parse_ip(host)
    if ip is not None:
        return NetworkRule(ipaddress.ip_network(ip), port)
    name = normalize_host(host)
    wildcard = name.startswith("*.")
    label_text = name[2:] if wildcard else name
    labels = label_text.split(".")
    if not label_text or not all(
        label and len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label)
        for label in labels
    ):
        raise ValueError(
            f"model_egress_allow: {entry!r} is neither a CIDR, an address nor a host name"
        )
    return NameRule(name[1:] if wildcard else name, wildcard, port)


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """Which model endpoints may be called (metadata addresses are refused regardless)."""

    networks: tuple[NetworkRule, ...]
    names: tuple[NameRule, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> EgressPolicy:
        rules = [parse_egress_entry(entry) for entry in entries]
        return cls(
            tuple(rule for rule in rules if isinstance(rule, NetworkRule)),
            tuple(rule for rule in rules if isinstance(rule, NameRule)),
        )

    @property
    def deny_all(self) -> bool:
        return not self.networks and not self.names

    def allows_ip(self, ip: IPAddress, port: int) -> bool:
        if blocked_ip(ip):
            return False
        return any(
            ip.version == rule.network.version
            and ip in rule.network
            and (rule.port is None or rule.port == port)
            for rule in self.networks
        )

    def allows_name(self, host: str, port: int) -> bool:
        """True when ``host`` is allowed by name (its addresses then need no allow-listing)."""
        name = normalize_host(host)
        return any(rule.matches(name, port) for rule in self.names)


DEFAULT_EGRESS: Final = EgressPolicy.parse([*LOOPBACK_AND_PRIVATE, "localhost"])
