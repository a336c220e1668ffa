"""Per-request plumbing as plain ASGI middleware (no per-request overhead of BaseHTTPMiddleware,
and streaming and client-disconnect handling pass through untouched).

* a request id: the client's ``X-Request-ID`` when it is sane, else a new one; bound to every
  log line of the request, returned as ``X-Request-Id`` and forwarded to the gateway;
* one structured log line per request: method, route, status, duration_ms, request_id;
* a GitLab-style 500 with ``X-GitLab-Error-Origin: monolith`` for any unhandled error, without
  the exception text (it goes to the log).
"""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclave.common.logging import REQUEST_FIELDS, get_logger, log_request
from enclave.common.request_id import new_request_id
from enclave.instance.api.errors import error_response, status_message
from enclave.instance.api.relay import UpstreamStreamError
from enclave.instance.usage import record_request

log = get_logger("enclave.instance.request")

# A request whose AI answer outlives it (GraphQL aiAction) records its usage itself.
USAGE_DEFERRED = "usage_deferred"

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _REQUEST_ID.match(candidate):
                return candidate
            break
    return new_request_id()


def annotate(request: Request, **fields: Any) -> None:
    """Add fields to the request's log line (and to every later log line of the request: the
    middleware made this dict the request's ``REQUEST_FIELDS``)."""
    request.scope.setdefault("state", {}).setdefault("log_fields", {}).update(fields)


def _route(scope: Scope) -> str:
    # The route template, not the raw path: bounded cardinality, and no ids in log keys.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        # What every line of this request carries; annotate() adds to it.
        log_fields: dict[str, Any] = state.setdefault("log_fields", {})
        log_fields["request_id"] = request_id
        status = 0
        started = False

        recorded = False

        def record_usage() -> None:
            # Once per request, and before the last body byte leaves: a client that has the
            # whole answer finds its usage counted (flushed in the background later).
            nonlocal recorded
            if recorded:
                return
            recorded = True
            state = scope.get("state", {})
            app = scope.get("app")
            ctx = getattr(getattr(app, "state", None), "ctx", None)
            if ctx is not None and not state.get(USAGE_DEFERRED):
                seconds = time.perf_counter() - start
                record_request(ctx.usage, state, status=status, seconds=seconds)

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                record_usage()
            await send(message)

        # The request's lines carry its fields until its request line is written.
        fields_token = REQUEST_FIELDS.set(log_fields)
        try:
            await self.app(scope, receive, send_with_id)
        except UpstreamStreamError:
            pass  # logged where it happened; returning unfinished aborts the response
        except Exception:
            if started:
                log.exception("response_aborted")
            else:
                log.exception("unhandled_error")
                response = error_response(
                    500,
                    status_message(
                        500,
                        f"unexpected error; the instance log has the details under "
                        f"request_id {request_id}",
                    ),
                )
                await response(scope, receive, send_with_id)
        finally:
            record_usage()  # an aborted or unanswered request counts too
            seconds = time.perf_counter() - start
            # The request id and what annotate() added, then who asked, by id (never the
            # e-mail): set once the token authenticated.
            fields = {**log_fields, "user_id": state.get("user_id")}
            fields["method"] = scope["method"]
            fields["route"] = _route(scope)
            fields["status"] = status
            fields["duration_ms"] = round(seconds * 1000, 2)
            log_request(log, fields)
            REQUEST_FIELDS.reset(fields_token)
