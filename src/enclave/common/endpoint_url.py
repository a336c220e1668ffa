"""The one rule set for URLs that Enclave connects to (model endpoints, the AI gateway URL).

Shared by the instance (checked when an administrator saves a model or a setting) and the
gateway (checked again before any call), so that what the instance accepts is exactly what the
gateway will call. Pure: no DNS, no I/O. Messages never repeat the URL's user-info, since that
part is where people paste credentials.
"""

from __future__ import annotations

import ipaddress
from typing import Final
from urllib.parse import urlsplit

from enclave.common.netrules import blocked_ip, parse_ip

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
