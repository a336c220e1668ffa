"""Which model endpoints the gateway may call (SSRF safety).

The model endpoint comes with the instance's requests (or its routes), so the gateway must not
become a way to reach things the caller could not reach itself. Rules: the URL rules the instance
applies to models (:func:`~enclave.common.endpoint_url.check_endpoint_url`: http(s) only, no
user-info, query or fragment); then (:class:`~enclave.common.netrules.EgressPolicy`, from
``gateway.model_egress_allow``) link-local and cloud metadata addresses always refused;
otherwise the host must be allowed by name, or every address it resolves to must be in the
allow-list. The check runs twice, cheaply: before the call (clear 403, verdicts cached
for a minute) and inside the HTTP client's resolver (:class:`GuardedResolver`) for the very
addresses it is about to connect to, so a DNS answer that changes between the two (rebinding)
still cannot reach anything outside the list. Address literals are not resolved at all, so the
pre-call check is the whole story for them; redirects are never followed.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from enclave.common.endpoint_url import EndpointUrlError, check_endpoint_url
from enclave.common.http1.client import DnsCache
from enclave.common.netrules import (
    BLOCKED_NETWORKS,
    DEFAULT_EGRESS,
    EgressPolicy,
    blocked_ip,
    parse_ip,
)
from enclave.gateway.models.base import (
    EndpointNotAllowed,
    ModelRequest,
    ModelResult,
    TextModelClient,
    TextStream,
)

__all__ = [
    "BLOCKED_NETWORKS",
    "BlockedAddressError",
    "EgressGuard",
    "EgressRefused",
    "GuardedLookup",
    "GuardedResolver",
    "blocked_address",
    "check_addresses",
    "display_url",
]

ALLOWED_SCHEMES: Final = ("http", "https")
SETTING: Final = "ENCLAVE_GATEWAY__MODEL_EGRESS_ALLOW"
_RESOLVE_TTL_S: Final = 60.0
_RESOLVE_CACHE_MAX: Final = 1024
_RESOLVE_TIMEOUT_S: Final = 5.0


def blocked_address(address: str) -> bool:
    """True when ``address`` (an IP literal, possibly with a zone) is never to be called."""
    ip = parse_ip(address)
    return ip is not None and blocked_ip(ip)


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


def _not_listed(endpoint: str, why: str) -> EndpointNotAllowed:
    return EndpointNotAllowed(
        f"The model endpoint {display_url(endpoint)} is not allowed: {why}. The gateway "
        f"administrator can allow it by adding the host, host:port or its network to {SETTING}."
    )


def _metadata(host: str, address: str | None = None) -> str:
    if address is None:
        return f"{host} is a link-local or cloud metadata address"
    return f"{host} resolves to {address}, a link-local or cloud metadata address"


class EgressGuard:
    """Pre-call check of model endpoints, with small TTL caches of verdicts and resolutions."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, policy: EgressPolicy | None = None
    ) -> None:
        self._clock = clock
        self.policy = policy if policy is not None else DEFAULT_EGRESS
        # (host, port) -> (until, reason it is refused or None)
        self._cache: dict[tuple[str, int], tuple[float, str | None]] = {}
        # Endpoints found allowed, until when: the same few endpoints come with every request.
        self._allowed: dict[str, float] = {}
        self.resolutions = 0  # DNS look-ups made, for tests and metrics

    def allowed_now(self, endpoint: str) -> bool:
        """Whether ``endpoint`` was found allowed recently enough to skip :meth:`check`."""
        until = self._allowed.get(endpoint)
        return until is not None and until > self._clock()

    async def check(self, endpoint: str) -> None:
        """Raise :class:`EndpointNotAllowed` when ``endpoint`` must not be called."""
        if self.allowed_now(endpoint):
            return
        await self._check(endpoint)
        if len(self._allowed) >= _RESOLVE_CACHE_MAX:
            self._allowed.clear()
        self._allowed[endpoint] = self._clock() + _RESOLVE_TTL_S

    async def _check(self, endpoint: str) -> None:
        try:
            # The rules the instance applies when an administrator saves a model: whatever
            # reaches this point (a body, a route) is held to the same ones.
            check_endpoint_url(endpoint, "the URL")
        except EndpointUrlError as exc:
            raise _refusal(endpoint, str(exc)) from None
        try:
            parts = urlsplit(endpoint)
            port = parts.port
        except ValueError:
            raise _refusal(endpoint, "it is not a valid URL") from None
        scheme = parts.scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            raise _refusal(endpoint, "only http and https URLs are called")
        host = parts.hostname
        if not host:
            raise _refusal(endpoint, "it has no host")
        if port is None:
            port = 443 if scheme == "https" else 80
        ip = parse_ip(host)
        if ip is not None and blocked_ip(ip):
            raise _refusal(endpoint, _metadata(host))
        if self.policy.deny_all:
            raise _not_listed(endpoint, "the allow-list of model endpoints is empty")
        if ip is not None:
            if not self.policy.allows_ip(ip, port):
                raise _not_listed(endpoint, f"{host} port {port} is not in the allow-list")
            return
        refused = await self._check_name(host, port)
        if refused is not None:
            if "metadata" in refused:
                raise _refusal(endpoint, refused)
            raise _not_listed(endpoint, refused)

    async def _check_name(self, host: str, port: int) -> str | None:
        """Why ``host:port`` is refused, or None; cached for a minute."""
        key = (host.lower(), port)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        reason = await self._judge_name(host, port)
        if len(self._cache) >= _RESOLVE_CACHE_MAX:
            self._cache.clear()  # rare; a full clear keeps this O(1) and bounded
        self._cache[key] = (now + _RESOLVE_TTL_S, reason)
        return reason

    async def _judge_name(self, host: str, port: int) -> str | None:
        by_name = self.policy.allows_name(host, port)
        loop = asyncio.get_running_loop()
        self.resolutions += 1
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), _RESOLVE_TIMEOUT_S
            )
        except (OSError, TimeoutError, UnicodeError):
            # Unresolvable now: the model call reports it precisely, and the resolver checks
            # whatever answer it gets then.
            return None
        for info in infos:
            address = str(info[4][0])
            ip = parse_ip(address)
            if ip is None:
                return f"{host} resolves to {address}, which is not an IP address"
            if blocked_ip(ip):
                return _metadata(host, address)
            if not by_name and not self.policy.allows_ip(ip, port):
                return f"{host} resolves to {address}, which is not in the allow-list"
        return None


class EgressRefused(OSError):
    """Raised inside the HTTP client when a host resolves to an address that is not allowed."""

    def __init__(self, host: str, address: str, why: str) -> None:
        super().__init__(f"{host} resolves to {address}, {why}")
        self.host = host
        self.address = address


class BlockedAddressError(EgressRefused):
    """Raised inside the HTTP client when a hostname resolves to a blocked address."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(host, address, "a link-local or cloud metadata address")


class EgressCheckedClient:
    """A model client that runs the pre-call check first, so no endpoint can forget it.

    Raises :class:`EndpointNotAllowed` before any connection when the request's endpoint is
    refused; each endpoint maps that to its own API's error.
    """

    def __init__(self, inner: TextModelClient, guard: EgressGuard) -> None:
        self._inner = inner
        self._guard = guard

    # An endpoint allowed a moment ago (the usual request) goes straight to the inner
    # client's coroutine: no await level of this wrapper's own for the whole call.

    def complete(self, request: ModelRequest) -> Coroutine[Any, Any, ModelResult]:
        if self._guard.allowed_now(request.endpoint):
            return self._inner.complete(request)
        return self._checked_complete(request)

    def stream(self, request: ModelRequest) -> Coroutine[Any, Any, TextStream]:
        if self._guard.allowed_now(request.endpoint):
            return self._inner.stream(request)
        return self._checked_stream(request)

    async def _checked_complete(self, request: ModelRequest) -> ModelResult:
        await self._guard.check(request.endpoint)
        return await self._inner.complete(request)

    async def _checked_stream(self, request: ModelRequest) -> TextStream:
        await self._guard.check(request.endpoint)
        return await self._inner.stream(request)


def check_addresses(
    host: str, port: int, addresses: list[str], policy: EgressPolicy | None
) -> list[str]:
    """``addresses`` (what ``host`` resolved to) when every one may be connected to; else
    :class:`BlockedAddressError` (always for metadata and link-local addresses) or
    :class:`EgressRefused` (outside ``policy``, unless the host is allowed by name)."""
    by_name = policy is not None and policy.allows_name(host, port)
    for address in addresses:
        ip = parse_ip(address)
        if ip is None or blocked_ip(ip):
            raise BlockedAddressError(host, address)
        if policy is not None and not by_name and not policy.allows_ip(ip, port):
            raise EgressRefused(host, address, f"which is not in {SETTING}")
    return addresses


class GuardedLookup:
    """The model-call client's resolver (:data:`enclave.common.http1.Resolve`): the addresses
    a connection is about to be opened to, each checked (the DNS rebinding guard).

    ``lookup`` answers ``host, port`` with addresses (the system resolver, cached for a
    minute, by default); address literals are checked the same way.
    """

    def __init__(
        self,
        policy: EgressPolicy | None = None,
        lookup: Callable[[str, int], Awaitable[list[str]]] | None = None,
    ) -> None:
        self._policy = policy
        self._lookup = lookup if lookup is not None else DnsCache()

    async def __call__(self, host: str, port: int) -> list[str]:
        addresses = [host] if parse_ip(host) is not None else await self._lookup(host, port)
        return check_addresses(host, port, addresses, self._policy)


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that checks the addresses it is about to connect to (DNS rebinding guard).

    Blocked addresses are always refused; with a ``policy``, addresses outside it too (unless the
    host is allowed by name).
    """

    def __init__(
        self, inner: AbstractResolver | None = None, policy: EgressPolicy | None = None
    ) -> None:
        self._inner: AbstractResolver = inner if inner is not None else DefaultResolver()
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        check_addresses(host, port, [str(result["host"]) for result in results], self._policy)
        return results

    async def close(self) -> None:
        await self._inner.close()
