"""The one rule set for URLs that Enclave connects to (model endpoints, the AI gateway URL).

Shared by the instance (checked when an administrator saves a model or a setting) and the
gateway (checked again before any call), so that what the instance accepts is exactly what the
gateway will call. :func:`check_endpoint_url` is pure (no DNS, no I/O);
:func:`check_endpoint_address` adds the address rules of the gateway's egress allow-list and
resolves a host name (bounded time), for the instance to run when a model is *saved*, never on
the hot path. Messages never repeat the URL's user-info, since that part is where people paste
credentials.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Final
from urllib.parse import urlsplit

from enclave.common.netrules import EgressPolicy, blocked_ip, parse_ip

MAX_URL_CHARS: Final = 2048
ALLOWED_SCHEMES: Final = ("http", "https")


class EndpointUrlError(ValueError):
    """``url`` breaks one of the rules; the message says which and what to do (no secrets)."""


def _shown(url: str) -> str:
    """The URL for a message: user-info and query stripped (they may carry secrets)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else host + parts.path


# The gateway checks the model endpoint of every request; it is nearly always the same few URLs.
# A pure function of its arguments, so a bounded memo of the accepted ones (refusals are
# recomputed: an exception is never cached) spares urlsplit and ipaddress (~25 µs a call).
@functools.lru_cache(maxsize=1024)
def check_endpoint_url(url: str, field: str = "endpoint") -> str:
    """``url`` stripped of surrounding blanks and trailing slashes, or :class:`EndpointUrlError`.

    Rules: at most :data:`MAX_URL_CHARS`; http or https; a host; no user name or password (the
    key goes in its own field); no query string or fragment (a ``?`` would swallow the path the
    gateway appends); a port other than 0; not an unspecified, multicast, link-local or cloud
    metadata address.
    """
    url = url.strip()
    if not url:
        raise EndpointUrlError(f"{field} is empty: give an http:// or https:// URL")
    if len(url) > MAX_URL_CHARS:
        raise EndpointUrlError(
            f"{field} is too long ({len(url)} characters; at most {MAX_URL_CHARS})"
        )
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise EndpointUrlError(f"{field} must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EndpointUrlError(f"{field} {_shown(url)!r} is not a valid URL: {exc}") from None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise EndpointUrlError(
            f"{field} must not contain a user name or password; give the model's API key in "
            "its own field"
        )
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise EndpointUrlError(
            f"{field} must be an http:// or https:// URL (got {got} in {_shown(url)!r})"
        )
    host = parts.hostname
    if not host:
        raise EndpointUrlError(f"{field} {_shown(url)!r} has no host name")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise EndpointUrlError(
            f"{field} must not have a query string or fragment (got {_shown(url)!r}); give "
            "the API base URL only, e.g. http://model-host:8000/v1"
        )
    if port == 0:
        raise EndpointUrlError(f"{field} has port 0, which cannot be reached")
    ip = parse_ip(host)
    if ip is not None:
        if ip.is_unspecified or ip.is_multicast:
            raise EndpointUrlError(f"{field} host {host} cannot be connected to")
        if blocked_ip(ip) or (isinstance(ip, ipaddress.IPv4Address) and ip.is_link_local):
            raise EndpointUrlError(
                f"{field} host {host} is a link-local or cloud metadata address, which Enclave "
                "never calls; use the model server's own address"
            )
    return url.rstrip("/")


# Where an administrator can widen the allow-list (both roles must agree: `enclave up` gives
# them the same list).
EGRESS_SETTINGS: Final = (
    "ENCLAVE_INSTANCE__MODEL_EGRESS_ALLOW and ENCLAVE_GATEWAY__MODEL_EGRESS_ALLOW"
)
# A few threads for look-ups: getaddrinfo cannot be cancelled, so a slow one is abandoned to its
# thread when the timeout passes (bounded by this pool's size).
_RESOLVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="endpoint-resolve")


def _not_allowed(field: str, what: str) -> EndpointUrlError:
    return EndpointUrlError(
        f"{field} {what} outside the model egress allow-list, so the AI gateway would refuse "
        f"to call it; use a model server inside your network, or have an administrator add the "
        f"host, host:port or network to {EGRESS_SETTINGS}"
    )


def check_endpoint_address(
    url: str, policy: EgressPolicy, *, field: str = "endpoint", timeout_s: float = 3.0
) -> None:
    """Apply the gateway's address rules to an endpoint :func:`check_endpoint_url` accepted.

    The host must be allowed by ``policy``: an address literal directly; a host name either by
    name, or by resolving it (at most ``timeout_s``) and requiring every address to be allowed.
    A name that resolves to a link-local or cloud metadata address is refused whatever the
    list says. A name that does not resolve now is accepted (the model server may not exist
    yet); the gateway checks its addresses again at every connect. Raises
    :class:`EndpointUrlError` saying what to do.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    if policy.deny_all:
        raise EndpointUrlError(
            f"{field} cannot be saved: the model egress allow-list is empty, so the AI gateway "
            f"calls no model endpoint; set {EGRESS_SETTINGS}"
        )
    ip = parse_ip(host)
    if ip is not None:
        if not policy.allows_ip(ip, port):
            raise _not_allowed(field, f"host {host} port {port} is")
        return
    by_name = policy.allows_name(host, port)
    try:
        infos = _RESOLVER.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM).result(
            timeout=timeout_s
        )
    except (OSError, UnicodeError, FutureTimeout):
        return
    for info in infos:
        address = str(info[4][0])
        resolved = parse_ip(address)
        if resolved is None or blocked_ip(resolved):
            raise EndpointUrlError(
                f"{field} host {host} resolves to {address}, a link-local or cloud metadata "
                "address, which Enclave never calls; use the model server's own address"
            )
        if not by_name and not policy.allows_ip(resolved, port):
            raise _not_allowed(field, f"host {host} resolves to {address}, which is")
