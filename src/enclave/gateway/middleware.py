"""Request context: ``x-request-id`` / ``x-process-time`` on every response, one log line each.

The client address allow-list lives in :mod:`enclave.common.client_address` (the instance uses
it too) and is re-exported here.

A pure ASGI middleware (Starlette's ``BaseHTTPMiddleware`` costs time and breaks streaming).
It also turns an unexpected exception into a JSON 500 that names the request id, so no stack
trace ever reaches a client.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Final

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclave.common import wire
from enclave.common.client_address import ClientAddressMiddleware
from enclave.common.logging import REQUEST_FIELDS, get_logger, log_request
from enclave.common.request_id import new_request_id
from enclave.gateway.models.base import REQUEST_MODEL_TIMEOUT
from enclave.gateway.usage import CURRENT, RequestUsage

if TYPE_CHECKING:
    from enclave.gateway.metrics import GatewayMetrics
    from enclave.gateway.usage import UsageCounter

log = get_logger("enclave.gateway.request")

_REQUEST_ID_HEADER: Final = wire.H_REQUEST_ID.encode()
_INPUT_TOKENS: Final = wire.H_ENCLAVE_INPUT_TOKENS.lower().encode()
_OUTPUT_TOKENS: Final = wire.H_ENCLAVE_OUTPUT_TOKENS.lower().encode()
# Accept the caller's request id only when it is short and plain (it ends up in our logs).
_VALID_REQUEST_ID: Final = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,128}$")


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == _REQUEST_ID_HEADER:
            return value.decode("ascii") if _VALID_REQUEST_ID.match(value) else None
    return None


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        routes: Collection[str] = (),
        *,
        metrics: GatewayMetrics | None = None,
        route_templates: Mapping[str, str] | None = None,
        endpoint_templates: Mapping[Any, str] | None = None,
        usage: UsageCounter | None = None,
    ) -> None:
        self.app = app
        self._usage = usage
        self._routes = frozenset(routes)
        self._metrics = metrics
        self._route_templates = dict(route_templates or {})
        self._endpoint_templates = dict(endpoint_templates or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send, self.app)

    async def handle(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        """Serve an HTTP request with ``app`` inside its context (the hot path names the
        dispatch directly, gateway/dispatch.py; the stack names the next middleware)."""
        start = time.perf_counter()
        request_id = _incoming_request_id(scope) or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        request_id_bytes = request_id.encode("ascii")
        status = 500
        started = False
        # The request's usage slot: endpoints serving a user's token claim it (gateway/usage.py).
        slot = RequestUsage()

        async def send_with_context(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                elapsed = time.perf_counter() - start
                # A new list and message: the app's own are left as they were.
                headers = [
                    *message.get("headers", ()),
                    (_REQUEST_ID_HEADER, request_id_bytes),
                    (b"x-process-time", f"{elapsed:.6f}".encode()),
                ]
                # The model's token counts when the answer is whole (not streamed): the
                # instance records them as the request's usage.
                if slot.input_tokens or slot.output_tokens:
                    headers.append((_INPUT_TOKENS, str(slot.input_tokens).encode()))
                    headers.append((_OUTPUT_TOKENS, str(slot.output_tokens).encode()))
                message = {**message, "headers": headers}
            await send(message)

        # Every line logged for this request carries its id (common/logging.py).
        fields_token = REQUEST_FIELDS.set({"request_id": request_id})
        slot_token = CURRENT.set(slot)
        # Per request: the instance's model budget, set by authentication (never inherited).
        budget_token = REQUEST_MODEL_TIMEOUT.set(None)
        try:
            await app(scope, receive, send_with_context)
        except Exception:
            log.exception("unhandled_error", path=scope.get("path"))
            status = 500
            if not started:
                await send_with_context(_internal_error_start())
                await send(_internal_error_body(request_id))
        finally:
            path: str = scope.get("path", "")
            elapsed = time.perf_counter() - start
            if self._metrics is not None:
                # The matched route's template (metrics label), never the raw path.
                template = self._route_templates.get(path)
                if template is None:
                    template = self._endpoint_templates.get(scope.get("endpoint"), "<unmatched>")
                self._metrics.observe_request(template, status, elapsed)
            CURRENT.reset(slot_token)
            REQUEST_MODEL_TIMEOUT.reset(budget_token)
            if self._usage is not None and slot.user is not None:
                self._usage.add(slot, status, elapsed)
            log_request(
                log,
                {
                    "method": scope.get("method"),
                    "route": path if path in self._routes else "<unmatched>",
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )
            REQUEST_FIELDS.reset(fields_token)


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


__all__ = ["ClientAddressMiddleware", "RequestContextMiddleware"]
