"""Which model endpoints the gateway may call (minimal SSRF safety).

The model endpoint comes with each request, so the gateway must not become a way to reach
things the caller could not reach itself. For now it always refuses non-HTTP schemes and
link-local / cloud metadata addresses (a configurable allow-list comes later). The check runs
twice, cheaply: before the call (clear 403, hostname resolutions cached) and inside the HTTP
client's resolver (:class:`GuardedResolver`), so a DNS answer that changes between the two
(rebinding) still cannot reach a metadata address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import SplitResult, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from enclave.gateway.models.base import EndpointNotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Never reachable from the gateway, whatever the configuration: link-local (includes the
# AWS/GCP/Azure metadata address 169.254.169.254), AWS's IPv6 metadata address and Alibaba's.
BLOCKED_NETWORKS: Final = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
    ipaddress.ip_network("100.100.100.200/32"),
)
ALLOWED_SCHEMES: Final = ("http", "https")
_RESOLVE_TTL_S: Final = 60.0
_RESOLVE_CACHE_MAX: Final = 1024
_RESOLVE_TIMEOUT_S: Final = 5.0


def blocked_address(address: str) -> bool:
    """True when ``address`` (an IP literal, possibly with a zone) is never to be called."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is the same host
    return any(ip in network for network in BLOCKED_NETWORKS)


def display_url(url: str) -> str:
    """``url`` without credentials, query or fragment: safe for messages and logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return SplitResult(parts.scheme, f"{host}{port}", parts.path, "", "").geturl()


def _refusal(endpoint: str, why: str) -> EndpointNotAllowed:
    return EndpointNotAllowed(
        f"The model endpoint {display_url(endpoint)} is not allowed: {why}. Register the model "
        "with the address of the model server itself (http or https)."
    )


class EgressGuard:
    """Pre-call check of model endpoints, with a small TTL cache of hostname resolutions."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cache: dict[tuple[str, int], tuple[float, str | None]] = {}
        # Endpoints found allowed, until when: the same few endpoints come with every request.
        self._allowed: dict[str, float] = {}

    async def check(self, endpoint: str) -> None:
        """Raise :class:`EndpointNotAllowed` when ``endpoint`` must not be called."""
        until = self._allowed.get(endpoint)
        if until is not None and until > self._clock():
            return
        await self._check(endpoint)
        if len(self._allowed) >= _RESOLVE_CACHE_MAX:
            self._allowed.clear()
        self._allowed[endpoint] = self._clock() + _RESOLVE_TTL_S

    async def _check(self, endpoint: str) -> None:
        try:
            parts = urlsplit(endpoint)
            port = parts.port
        except ValueError:
            raise _refusal(endpoint, "it is not a valid URL") from None
        if parts.scheme.lower() not in ALLOWED_SCHEMES:
            raise _refusal(endpoint, "only http and https URLs are called")
        host = parts.hostname
        if not host:
            raise _refusal(endpoint, "it has no host")
        if port is None:
            port = 443 if parts.scheme.lower() == "https" else 80
        if blocked_address(host):
            raise _refusal(endpoint, f"{host} is a link-local or cloud metadata address")
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            return  # an allowed IP literal: nothing to resolve
        except ValueError:
            pass
        blocked = await self._resolve_blocked(host, port)
        if blocked is not None:
            raise _refusal(
                endpoint, f"{host} resolves to {blocked}, a link-local or cloud metadata address"
            )

    async def _resolve_blocked(self, host: str, port: int) -> str | None:
        key = (host.lower(), port)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), _RESOLVE_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            # Unresolvable now: the model call reports it precisely (and re-checks the answer).
            return None
        blocked = next(
            (str(info[4][0]) for info in infos if blocked_address(str(info[4][0]))), None
        )
        if len(self._cache) >= _RESOLVE_CACHE_MAX:
            self._cache.clear()  # rare; a full clear keeps this O(1) and bounded
        self._cache[key] = (now + _RESOLVE_TTL_S, blocked)
        return blocked


class BlockedAddressError(OSError):
    """Raised inside the HTTP client when a hostname resolves to a blocked address."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} resolves to {address}, a link-local or cloud metadata address")
        self.host = host
        self.address = address


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses blocked addresses at connect time (DNS rebinding guard)."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner: AbstractResolver = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if blocked_address(str(result["host"])):
                raise BlockedAddressError(host, str(result["host"]))
        return results

    async def close(self) -> None:
        await self._inner.close()
