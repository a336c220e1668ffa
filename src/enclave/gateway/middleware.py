"""Request context: ``x-request-id`` / ``x-process-time`` on every response, one log line each.

A pure ASGI middleware (Starlette's ``BaseHTTPMiddleware`` costs time and breaks streaming).
It also turns an unexpected exception into a JSON 500 that names the request id, so no stack
trace ever reaches a client.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Collection, Sequence
from typing import Any, Final

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclave.common import wire
from enclave.common.logging import get_logger
from enclave.common.netrules import IPNetwork, forwarded_client, in_networks, parse_ip

log = get_logger("enclave.gateway.request")

_REQUEST_ID_HEADER: Final = wire.H_REQUEST_ID.encode()
# Accept the caller's request id only when it is short and plain (it ends up in our logs).
_VALID_REQUEST_ID: Final = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,128}$")


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == _REQUEST_ID_HEADER:
            return value.decode("ascii") if _VALID_REQUEST_ID.match(value) else None
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, routes: Collection[str] = ()) -> None:
        self.app = app
        self._routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        request_id_bytes = request_id.encode("ascii")
        status = 500
        started = False

        async def send_with_context(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                elapsed = time.perf_counter() - start
                headers = list(message.get("headers", ()))
                headers.append((_REQUEST_ID_HEADER, request_id_bytes))
                headers.append((b"x-process-time", f"{elapsed:.6f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_context)
        except Exception:
            log.exception("unhandled_error", path=scope.get("path"))
            status = 500
            if not started:
                await send_with_context(_internal_error_start())
                await send(_internal_error_body(request_id))
        finally:
            path: str = scope.get("path", "")
            fields: dict[str, Any] = {
                "method": scope.get("method"),
                "route": path if path in self._routes else "<unmatched>",
                "status": status,
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
            }
            log.info("request", **fields)
            structlog.contextvars.reset_contextvars(**tokens)


def _internal_error_start() -> Message:
    return {
        "type": "http.response.start",
        "status": 500,
        "headers": [(b"content-type", b"application/json")],
    }


def _internal_error_body(request_id: str) -> Message:
    body = orjson.dumps(
        {
            "detail": f"Internal error in the AI gateway (request id {request_id}); the gateway "
            "log has the details"
        }
    )
    return {"type": "http.response.body", "body": body, "more_body": False}


class ClientAddressMiddleware:
    """Client IP allow-list (``gateway.allowed_client_cidrs``), pure ASGI and cheap.

    The client is the TCP peer, or, when the peer is a trusted proxy
    (``gateway.trusted_proxies``), the rightmost ``X-Forwarded-For`` hop that is not one. Verdicts
    for direct peers are cached per address, so the usual request costs one dict look-up.
    Refused requests get 403 ``{"detail": ...}`` naming the address and the setting to change.
    """

    _CACHE_MAX: Final = 4096

    def __init__(
        self,
        app: ASGIApp,
        allowed: Sequence[IPNetwork],
        trusted_proxies: Sequence[IPNetwork] = (),
        setting: str = "ENCLAVE_GATEWAY__ALLOWED_CLIENT_CIDRS",
        proxy_setting: str = "ENCLAVE_GATEWAY__TRUSTED_PROXIES",
    ) -> None:
        self.app = app
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
            await _refuse(scope, send, verdict)
            return
        await self.app(scope, receive, send)

    def _judge(self, scope: Scope, host: str | None) -> str | None:
        """Refusal message, or None when allowed (may rewrite ``scope['client']``)."""
        if host is None:
            return (
                "The AI gateway cannot tell the client's address (no TCP peer); it only serves "
                "clients it can check against " + self._setting
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
                    f"The AI gateway cannot read the client address {written!r} in "
                    f"X-Forwarded-For sent by the trusted proxy {host}"
                )
            if not in_networks(client, self._allowed):
                return self._not_allowed(str(client), via=host)
            scope["client"] = (str(client), 0)
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
            f"Client address {address}{through} is not allowed to use this AI gateway; the "
            f"administrator can add it or its network to {self._setting}"
            + ("" if via else f", or list the proxy in front of it in {self._proxy_setting}")
        )


_UNKNOWN: Final = "\0unknown"
_PROXY: Final = "\0proxy"


async def _refuse(scope: Scope, send: Send, message: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": "client not allowed"})
        return
    body = orjson.dumps({"detail": message})
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
