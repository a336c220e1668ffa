"""Client IP allow-list middleware, shared by the gateway and the instance.

A pure ASGI middleware (Starlette's ``BaseHTTPMiddleware`` costs time and breaks streaming).
Each component passes the names of its own settings (for the refusal message), its name, and
the key of its error body (``detail`` in the gateway's FastAPI dialect, ``message`` in the
instance's GitLab dialect).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from enclave.common.netrules import IPNetwork, forwarded_client, in_networks, parse_ip

# Scope key set when the request came through a trusted proxy.
VIA_TRUSTED_PROXY: Final = "enclave.via_trusted_proxy"


class ClientAddressMiddleware:
    """Client IP allow-list (e.g. ``gateway.allowed_client_cidrs``), pure ASGI and cheap.

    The client is the TCP peer, or, when the peer is a trusted proxy (e.g.
    ``gateway.trusted_proxies``), the rightmost ``X-Forwarded-For`` hop that is not one. Verdicts
    for direct peers are cached per address, so the usual request costs one dict look-up.
    Refused requests get 403 ``{<error_key>: ...}`` (``detail`` for the gateway, ``message``
    for the instance) naming the address and the setting to change.
    """

    _CACHE_MAX: Final = 4096

    def __init__(
        self,
        app: ASGIApp,
        allowed: Sequence[IPNetwork],
        trusted_proxies: Sequence[IPNetwork] = (),
        setting: str = "ENCLAVE_GATEWAY__ALLOWED_CLIENT_CIDRS",
        proxy_setting: str = "ENCLAVE_GATEWAY__TRUSTED_PROXIES",
        service: str = "AI gateway",
        error_key: str = "detail",
    ) -> None:
        self.app = app
        self._service = service
        self._error_key = error_key
        self._allowed = tuple(allowed)
        self._proxies = tuple(trusted_proxies)
        self._setting = setting
        self._proxy_setting = proxy_setting
        # peer host -> None (allowed, not a proxy), a refusal message, or _PROXY
        self._verdicts: dict[str, str | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        host = client[0] if client else None
        verdict = _UNKNOWN if host is None else self._verdicts.get(host, _UNKNOWN)
        if verdict is None:  # the usual case: a known, allowed, direct peer
            await self.app(scope, receive, send)
            return
        if verdict is _UNKNOWN or verdict is _PROXY:
            verdict = self._judge(scope, host)
        if verdict is not None:
            await _refuse(scope, send, {self._error_key: verdict})
            return
        await self.app(scope, receive, send)

    def passes(self, scope: Scope) -> bool:
        """Whether the request comes straight from a peer already judged allowed (not a
        proxy): the check would hand it on unchanged. False means "ask ``__call__``"."""
        client = scope.get("client")
        return client is not None and self._verdicts.get(client[0], _UNKNOWN) is None

    def _judge(self, scope: Scope, host: str | None) -> str | None:
        """Refusal message, or None when allowed (may rewrite ``scope['client']``)."""
        if host is None:
            return (
                f"The {self._service} cannot tell the client's address (no TCP peer); it only "
                "serves clients it can check against " + self._setting
            )
        peer = parse_ip(host)
        if peer is None:
            return self._remember(host, self._not_allowed(host))
        if self._proxies and in_networks(peer, self._proxies):
            self._remember(host, _PROXY)
            forwarded = [
                value.decode("latin-1")
                for name, value in scope.get("headers", ())
                if name == b"x-forwarded-for"
            ]
            client, written = forwarded_client(peer, forwarded, self._proxies)
            if client is None:
                return (
                    f"The {self._service} cannot read the client address {written!r} in "
                    f"X-Forwarded-For sent by the trusted proxy {host}"
                )
            if not in_networks(client, self._allowed):
                return self._not_allowed(str(client), via=host)
            scope["client"] = (str(client), 0)
            # Its other X-Forwarded-* headers may be believed too (the instance's web UI reads
            # X-Forwarded-Proto for Secure cookies); from anyone else they are ignored.
            scope[VIA_TRUSTED_PROXY] = True
            return None
        if in_networks(peer, self._allowed):
            return self._remember(host, None)
        return self._remember(host, self._not_allowed(host))

    def _remember(self, host: str, verdict: str | None) -> str | None:
        if len(self._verdicts) >= self._CACHE_MAX:
            self._verdicts.clear()
        self._verdicts[host] = verdict
        return None if verdict is _PROXY else verdict

    def _not_allowed(self, address: str, via: str | None = None) -> str:
        through = f" (forwarded by the trusted proxy {via})" if via else ""
        return (
            f"Client address {address}{through} is not allowed to use this {self._service}; the "
            f"administrator can add it or its network to {self._setting}"
            + ("" if via else f", or list the proxy in front of it in {self._proxy_setting}")
        )


_UNKNOWN: Final = "\0unknown"
_PROXY: Final = "\0proxy"


async def _refuse(scope: Scope, send: Send, content: dict[str, str]) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": "client not allowed"})
        return
    body = orjson.dumps(content)
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
