"""Relaying a gateway response to the client: status, body and content type, as they came.

Streamed answers are passed on chunk by chunk as they arrive (no buffering), and the upstream
request is aborted as soon as the client goes away, so the model stops generating for nobody.

Failures are told apart by who asks (:func:`caller_message`, the one place that decides):
administrators get the precise cause (which gateway, which model endpoint, what the model
server said); everyone else gets one generic "model unavailable" message with the request id,
the same status code and, in chat, the same error code — a model's host, port or error text
says nothing a user can act on and maps the internal network for whoever asks. The precise
cause always goes to the log, under the request id, and to the admin's "test connection".

A gateway stream that breaks after the status was sent ends in the client's dialect: an
``{"type": "error", ...}`` line for ndjson, an ``event: error`` for GitLab's SSE
(``X-Streaming-Format: sse``); raw text streams have no error event, so the response is left
incomplete (the connection closes without the last chunk: clients report a broken transfer,
never a short answer that looks whole). Every case is logged as ``gateway_stream_interrupted``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from enclave.common import wire
from enclave.common.http1 import HttpClientError
from enclave.common.http1 import Response as UpstreamResponse
from enclave.common.logging import get_logger
from enclave.instance.api.errors import InstanceAPIError, status_message
from enclave.instance.gateway_client import GatewayUnavailableError
from enclave.instance.pats import Principal

log = get_logger(__name__)

DEFAULT_CONTENT_TYPE = "application/json"
GENERIC_MODEL_ERROR = (
    "The AI model is not available right now. Try again later; if it keeps happening, give "
    "an administrator the request id {request_id}."
)


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", None) or "unknown")


def caller_message(request: Request, principal: Principal, precise: str, *, status: int) -> str:
    """What the caller is told about a gateway or model failure (see the module docstring).

    ``precise`` must already be free of secrets (:func:`gateway_reason` strips the model key;
    the log filter redacts tokens as well).
    """
    log.warning("model_request_failed", status=status, cause=precise, admin=principal.is_admin)
    if principal.is_admin:
        return precise
    return GENERIC_MODEL_ERROR.format(request_id=request_id_of(request))


class UpstreamStreamError(Exception):
    """The gateway's stream broke after the response started; the connection is aborted so the
    client sees an incomplete response instead of a silently truncated one."""


NDJSON = "application/x-ndjson"
STREAM_BROKE = (
    "the AI gateway's stream broke off in the middle of the answer ({cause}); retry, and if it "
    "happens again check the gateway and model server logs"
)


def error_frame(headers: Mapping[str, str], cause: str, tail: bytes) -> bytes | None:
    """The error event that ends a broken stream in the dialect of ``headers``; None for raw
    text (no error event exists). ``tail`` (the last bytes sent) decides whether a separator
    is needed first, so the event never glues onto a half-sent frame."""
    message = STREAM_BROKE.format(cause=cause)
    content_type = headers.get("Content-Type", "")
    if content_type.startswith(NDJSON):
        sep = b"" if not tail or tail.endswith(b"\n") else b"\n"
        return sep + orjson.dumps({"type": "error", "data": {"message": message}}) + b"\n"
    if headers.get("X-Streaming-Format", "").lower() == "sse":
        sep = b"" if not tail or tail.endswith(b"\n\n") else b"\n\n"
        return sep + b"event: error\ndata: " + orjson.dumps({"message": message}) + b"\n\n"
    return None


class DisconnectAwareStreamingResponse(StreamingResponse):
    """A streaming response that always watches for the client going away.

    Starlette only does so for servers speaking ASGI < 2.4; newer ones report a disconnect on
    the next write, which for a slow model can be many seconds later. Watching ``receive``
    cancels the body iterator at once, whatever the server.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream_then_stop() -> None:
                    await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream_then_stop)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        except BaseExceptionGroup as errors:  # anyio wraps task errors; unwrap a single one
            if len(errors.exceptions) == 1:
                if isinstance(errors.exceptions[0], UpstreamStreamError):
                    # Logged already; returning without the last chunk makes the server close
                    # the connection (an incomplete body for the client), without a traceback.
                    return
                raise errors.exceptions[0] from None
            raise


async def upstream_chunks(upstream: UpstreamResponse) -> AsyncGenerator[bytes, None]:
    finished = False
    tail = b""
    try:
        # One piece per HTTP chunk of the gateway: reading "whatever is buffered" merged a
        # fast model's pieces whenever two arrived before the instance read them.
        async for chunk in upstream.content.http_chunks():
            tail = chunk[-2:]
            yield chunk
        finished = True
    except HttpClientError as exc:
        cause = type(exc).__name__
        frame = error_frame(upstream.headers, cause, tail)
        log.warning("gateway_stream_interrupted", error=cause, error_event=frame is not None)
        if frame is None:
            raise UpstreamStreamError(cause) from exc
        yield frame  # the stream ends properly, its last event saying what went wrong
    finally:
        if finished:
            upstream.release()  # back to the pool
        else:
            upstream.close()  # client gone or stream broken: drop the connection upstream


def _response_headers(upstream: UpstreamResponse) -> dict[str, str]:
    headers = {"content-type": upstream.headers.get("Content-Type", DEFAULT_CONTENT_TYPE)}
    if "X-Streaming-Format" in upstream.headers:  # says "SSE" where the type cannot (v4)
        headers["x-streaming-format"] = upstream.headers["X-Streaming-Format"]
    return headers


async def relay(upstream: UpstreamResponse, *, stream: bool) -> Response:
    """The client response for ``upstream``; streams successful answers when ``stream``."""
    headers = _response_headers(upstream)
    if stream and upstream.status < 300:
        return DisconnectAwareStreamingResponse(
            upstream_chunks(upstream),
            status_code=upstream.status,
            headers=headers,
        )
    content = await read_body(upstream)
    return Response(content, status_code=upstream.status, headers=headers)


async def read_body(upstream: UpstreamResponse) -> bytes:
    """The whole body; a gateway that stalls or breaks off mid-body becomes 504/502.

    ``read()`` hands the connection back (or closes it when the body did not end) either way.
    """
    try:
        return await upstream.read()
    except TimeoutError as exc:
        raise InstanceAPIError(
            504,
            "the AI gateway stopped answering in the middle of a response. Check the gateway "
            "and model server logs; for slow models raise ENCLAVE_INSTANCE__GATEWAY_TIMEOUT_S.",
        ) from exc
    except (HttpClientError, ValueError) as exc:
        raise InstanceAPIError(
            502, f"the AI gateway's response broke off ({type(exc).__name__}); check its logs."
        ) from exc


def json_or_text(content: bytes) -> Any:
    """The body as JSON, or ``{"message": <text>}`` (cut short) when it is not JSON."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return {"message": content.decode("utf-8", "replace")[:2000]}


def gateway_reason(content: bytes, secret: str | None, limit: int = 500) -> str:
    """The reason in a gateway error body (``detail``, ``message`` or ``error``), cut short and
    without ``secret`` (the model's key, should a model server echo it into its error)."""
    data = json_or_text(content)
    reason: Any = data
    if isinstance(data, dict):
        reason = data.get("detail") or data.get("message") or data.get("error") or data
    text = reason if isinstance(reason, str) else orjson.dumps(reason).decode()
    if secret:
        text = text.replace(secret, "[redacted]")
    return text[:limit]


def gateway_error(
    error: GatewayUnavailableError, request: Request, principal: Principal
) -> InstanceAPIError:
    """The client-facing error for a gateway that could not be reached."""
    message = caller_message(request, principal, error.message, status=error.status)
    return InstanceAPIError(error.status, message)


async def relay_to_caller(
    upstream: UpstreamResponse,
    *,
    stream: bool,
    request: Request,
    principal: Principal,
    secret: str | None,
) -> Response:
    """:func:`relay`, except that a failure's text reaches administrators only.

    Others get the same status (and ``Retry-After``, origin header) with the generic message.
    ``secret`` is the model's API key, kept out of the log should a model server echo it.
    """
    if upstream.status < 400:
        return await relay(upstream, stream=stream)
    content = await read_body(upstream)
    precise = f"the AI gateway answered HTTP {upstream.status}: " + gateway_reason(content, secret)
    message = caller_message(request, principal, precise, status=upstream.status)
    headers = _response_headers(upstream)
    for name in ("Retry-After", wire.H_ERROR_ORIGIN):  # so clients back off / see the origin
        if name in upstream.headers:
            headers[name.lower()] = upstream.headers[name]
    if principal.is_admin:
        return Response(content, status_code=upstream.status, headers=headers)
    headers["content-type"] = DEFAULT_CONTENT_TYPE
    body = orjson.dumps({"message": status_message(upstream.status, message)})
    return Response(body, status_code=upstream.status, headers=headers)
