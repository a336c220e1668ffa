"""What the OpenAI-compatible endpoints share: auth, errors, body checks, the upstream call.

Per request: authenticate (401/503; the instance-signed token of
``POST /api/v4/ai/openai/direct_access``, ``Authorization: Bearer`` alone is enough; 401
``token_revoked`` once its PAT is revoked or its user blocked, 503 ``routes_unavailable`` when
the gateway can no longer know — see :meth:`RoutesTable.check_principal`) → rate
limits (429) → the instance's routes from memory (503 when never loaded or too old) → the
feature named by ``model`` (404 unknown, 403 without its unit primitive or when the instance
does not serve it) → the body (413 too big, 400 not a JSON object or carrying credentials, 422
bad fields) → the egress guard (403) → the model server, through the pooled session, with its
API key and its own model name → its answer with ``model`` set back to the feature id, or its
SSE frames relayed one by one.

Errors are OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``, so OpenAI
clients raise the right exception. Every token of this API is a user's, so a model-server
failure (bad answer, unreachable, refused key, timeout, refused endpoint, its own error) is one
generic 503 ``model_unavailable`` with the request id, 429 with ``Retry-After`` for its rate
limit; the precise cause goes to the gateway's log under that request id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import aiohttp
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from enclave.common import wire
from enclave.common.logging import get_logger
from enclave.gateway.auth.jws import TokenError, parse_token
from enclave.gateway.auth.verify import AuthError, Principal
from enclave.gateway.egress import EgressRefused, display_url
from enclave.gateway.http import (
    BodyTooLarge,
    connect_failure,
    json_response,
    read_body,
    read_limited,
)
from enclave.gateway.models.base import EndpointNotAllowed
from enclave.gateway.models.openai_compat import clean_error_message, upstream_error_message
from enclave.gateway.rate_limit import RateLimited
from enclave.gateway.routes_table import FeatureRoute, RoutesUnavailable
from enclave.gateway.streaming import run_until_disconnect
from enclave.gateway.user_access import model_unavailable_message

if TYPE_CHECKING:
    from enclave.gateway.app import Gateway

log = get_logger(__name__)

Api = Literal["chat", "completions"]

# The claim the instance puts in tokens for this API (see instance/api/openai_access.py).
SURFACE_CLAIM: Final = wire.CLAIM_SURFACE
SURFACE_OPENAI: Final = wire.SURFACE_OPENAI
ACCESS_HINT: Final = (
    "get a token for the OpenAI-compatible API with POST /api/v4/ai/openai/direct_access on "
    "the instance (authenticated with a personal access token)"
)

MAX_REQUEST_BYTES: Final = 4 * 1024 * 1024
MAX_RESPONSE_BYTES: Final = 8 * 1024 * 1024
MAX_ERROR_BODY_BYTES: Final = 64 * 1024
MAX_N: Final = 4  # choices per request: each is a full generation on a self-hosted model
MAX_TOKENS_CAP: Final = 4096  # larger asks are lowered to this
DEFAULT_MAX_TOKENS: Final = 1024  # when the client sets none (else a model may run to its ctx)
MAX_MESSAGES: Final = 1000
MAX_PROMPTS: Final = MAX_N
CHAT_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Top-level fields that would carry credentials or redirect the call: refused, never forwarded.
DENIED_FIELDS: Final = frozenset(
    {
        "api_key",
        "api_base",
        "base_url",
        "api_version",
        "organization",
        "headers",
        "extra_headers",
        "extra_query",
        "extra_body",
        "endpoint",
        "model_endpoint",
        "model_api_key",
        "model_identifier",
        "authorization",
        "secret",
        "password",
        "token",
        "access_token",
    }
)
_PATHS: Final[dict[Api, str]] = {"chat": "/chat/completions", "completions": "/completions"}


# -- errors ---------------------------------------------------------------------------------

_TYPES: Final = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error(
    status: int,
    message: str,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An OpenAI-shaped error response."""
    kind = _TYPES.get(status, "api_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return json_response(body, status, headers)


class RequestError(Exception):
    """The request cannot be served; :meth:`response` is what to answer."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers

    def response(self) -> Response:
        return error(self.status, self.message, self.code, self.param, self.headers)


# -- authentication -------------------------------------------------------------------------


def _auth_view(headers: Mapping[str, str]) -> dict[str, str]:
    """The request's headers, completed from the token where the client left them out.

    An OpenAI client sends only ``Authorization``. The authenticator demands GitLab's headers
    and matches them against the verified claims; filling the absent ones from the (not yet
    verified) claims makes "absent" mean "not checked" while a header that *is* sent must still
    match, and the signature check still covers the claims themselves.
    """
    view = {name.lower(): value for name, value in headers.items()}
    view.setdefault(wire.H_AUTH_TYPE, wire.AUTH_TYPE_OIDC)
    scheme, _, token = view.get(wire.H_AUTHORIZATION, "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return view
    try:
        claims = parse_token(token.strip()).claims
    except TokenError:
        return view  # the authenticator says what is wrong with it
    for header, claim in (
        (wire.H_REALM, "gitlab_realm"),
        (wire.H_INSTANCE_ID, "gitlab_instance_id"),
        (wire.H_GLOBAL_USER_ID, "sub"),
    ):
        value = claims.get(claim)
        if isinstance(value, str):
            view.setdefault(header, value)
    return view


async def authenticate(request: Request) -> tuple[Principal, Mapping[str, FeatureRoute]]:
    """The verified caller (within its rate limits) and the routes; raises :class:`RequestError`."""
    gateway: Gateway = request.app.state.gateway
    if wire.H_AUTHORIZATION not in request.headers:
        raise RequestError(
            401,
            f"No API key provided: send Authorization: Bearer <token>; {ACCESS_HINT}",
            "invalid_api_key",
        )
    try:
        principal = await gateway.authenticator.authenticate(_auth_view(request.headers))
    except AuthError as exc:
        # Revoked (401 token_revoked) and revocation state unknown (503) keep their own code.
        if exc.status == 503:
            raise RequestError(503, exc.message, exc.code or "issuer_unavailable") from None
        raise RequestError(exc.status, exc.message, exc.code or "invalid_api_key") from None
    table = gateway.routes_table
    if (
        principal.user_token
        or principal.claims.get(SURFACE_CLAIM) != SURFACE_OPENAI
        or principal.issuer != table.issuer
    ):
        # A valid token, but minted for something else (the instance's own calls, direct
        # access for code completions): deny by default.
        raise RequestError(
            401,
            f"This token is not for the OpenAI-compatible API; {ACCESS_HINT}",
            "invalid_api_key",
        )
    limiter = gateway.rate_limiter
    if limiter.enabled:
        try:
            limiter.check(principal.issuer, principal.instance_id, principal.subject)
        except RateLimited as exc:
            raise RequestError(
                429,
                exc.detail,
                "rate_limit_exceeded",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from None
    try:
        routes = table.routes()
    except RoutesUnavailable as exc:
        raise RequestError(503, exc.message, "routes_unavailable") from None
    return principal, routes


def usable_routes(principal: Principal, routes: Mapping[str, FeatureRoute]) -> list[FeatureRoute]:
    """The routes this token may call now, by feature name."""
    return sorted(
        (r for r in routes.values() if r.available and principal.can(r.unit_primitive)),
        key=lambda r: r.feature,
    )


def select_route(
    principal: Principal, routes: Mapping[str, FeatureRoute], model: str
) -> FeatureRoute:
    """The route of the feature ``model`` names; raises :class:`RequestError` (404/403)."""
    route = routes.get(model)
    if route is None:
        raise RequestError(
            404,
            f"The model '{model}' does not exist. Model ids are AI feature names "
            "(duo_chat, code_completions, code_generations, ...); GET /v1/models lists yours.",
            "model_not_found",
            "model",
        )
    if not principal.can(route.unit_primitive):
        raise RequestError(
            403,
            f"This token does not grant the '{model}' feature (unit primitive "
            f"'{route.unit_primitive}'); ask for it in the features of "
            "POST /api/v4/ai/openai/direct_access",
            "insufficient_scope",
            "model",
        )
    if not route.available:
        raise RequestError(
            403, route.message or f"'{model}' is not available", "model_unavailable", "model"
        )
    return route


# -- request bodies -------------------------------------------------------------------------


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; raises :class:`RequestError` (413/400)."""
    try:
        raw = await read_body(request, MAX_REQUEST_BYTES)
    except BodyTooLarge:
        raise RequestError(
            413, f"The request body is larger than {MAX_REQUEST_BYTES} bytes", "request_too_large"
        ) from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestError(400, "The request body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object", "invalid_json")
    for name in body:
        if name.lower() in DENIED_FIELDS:
            raise RequestError(
                400,
                f"The field '{name}' is not accepted: the gateway calls the model with the "
                "credentials and endpoint the instance assigns",
                "field_not_allowed",
                name,
            )
    return body


def _invalid(param: str, message: str) -> RequestError:
    return RequestError(422, message, "invalid_value", param)


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(name, f"'{name}' must be a positive integer")
    return value


def check_common(body: dict[str, Any], default_model: str) -> tuple[str, bool]:
    """Checks and normalizes the fields both endpoints share; returns (feature, stream).

    ``max_tokens``/``max_completion_tokens`` are lowered to :data:`MAX_TOKENS_CAP` (a default
    is set when both are absent); ``n`` and ``best_of`` may be at most :data:`MAX_N`.
    """
    model = body.get("model")
    if model is None or model == "":
        model = default_model
    if not isinstance(model, str):
        raise _invalid("model", "'model' must be a string (an AI feature name)")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _invalid("stream", "'stream' must be true or false")
    for name in ("n", "best_of"):
        count = _positive_int(body, name)
        if count is not None and count > MAX_N:
            raise _invalid(name, f"'{name}' may be at most {MAX_N} on this gateway")
    capped = False
    for name in ("max_tokens", "max_completion_tokens"):
        limit = _positive_int(body, name)
        if limit is not None:
            body[name] = min(limit, MAX_TOKENS_CAP)
            capped = True
    if not capped:
        body["max_tokens"] = DEFAULT_MAX_TOKENS
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _invalid("stream_options", "'stream_options' must be an object")
    if stream and options is None:
        # Token counts in the last chunk, as the gateway's other streams ask for them.
        body["stream_options"] = {"include_usage": True}
    elif not stream:
        body.pop("stream_options", None)  # some servers refuse it without stream
    return model, stream


def check_messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "'messages' is required: a non-empty list of messages")
    if len(messages) > MAX_MESSAGES:
        raise _invalid("messages", f"at most {MAX_MESSAGES} messages are accepted")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise _invalid(
                f"messages[{index}]",
                f"messages[{index}] must be an object with a role "
                f"({', '.join(sorted(CHAT_ROLES))})",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _invalid(f"messages[{index}].content", "content must be a string or a list")


def check_prompt(body: dict[str, Any]) -> None:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return
    if (
        isinstance(prompt, list)
        and 0 < len(prompt) <= MAX_PROMPTS
        and all(isinstance(item, str) for item in prompt)
    ):
        return
    raise _invalid(
        "prompt", f"'prompt' is required: a string or a list of at most {MAX_PROMPTS} strings"
    )


# -- the upstream call ----------------------------------------------------------------------


def _status_error(route: FeatureRoute, status: int, headers: Any, body: bytes) -> RequestError:
    shown = display_url(route.endpoint or "")
    said = upstream_error_message(body, route.api_key)
    suffix = f": {said}" if said else ""
    if status in (401, 403):
        return RequestError(
            502,
            f"The model server of '{route.feature}' ({shown}) refused the gateway's API key "
            f"(HTTP {status}); an administrator must fix the model's API key on the instance",
            "upstream_auth_failed",
        )
    if status == 429:
        retry = headers.get("Retry-After")
        return RequestError(
            429,
            f"The model server of '{route.feature}' is rate limiting requests; retry later",
            "upstream_rate_limited",
            headers={"Retry-After": retry} if retry else None,
        )
    if status == 404:
        return RequestError(
            502,
            f"The model server of '{route.feature}' ({shown}) answered HTTP 404{suffix}; the "
            "model's endpoint or identifier on the instance is wrong",
            "upstream_not_found",
        )
    if status in (400, 413, 422):
        return RequestError(
            400,
            f"The model server of '{route.feature}' rejected the request (HTTP {status}){suffix}",
            "upstream_rejected",
        )
    return RequestError(
        502,
        f"The model server of '{route.feature}' ({shown}) failed (HTTP {status}){suffix}",
        "upstream_error",
    )


def _transport_error(route: FeatureRoute, exc: BaseException, timeout_s: float) -> RequestError:
    shown = display_url(route.endpoint or "")
    if isinstance(exc, TimeoutError):
        return RequestError(
            504,
            f"The model server of '{route.feature}' ({shown}) did not answer within "
            f"{timeout_s:g} s",
            "upstream_timeout",
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, EgressRefused):
            return RequestError(
                403,
                f"The model endpoint {shown} is not allowed by this gateway: {exc.os_error}",
                "endpoint_not_allowed",
            )
        return RequestError(
            502,
            f"Cannot connect to the model server of '{route.feature}' ({shown}: "
            f"{connect_failure(exc.os_error)})",
            "upstream_unreachable",
        )
    return RequestError(
        502,
        f"The request to the model server of '{route.feature}' ({shown}) failed "
        f"({type(exc).__name__})",
        "upstream_error",
    )


def _has_finish_reason(event: dict[str, Any]) -> bool:
    choices = event.get("choices")
    return isinstance(choices, list) and any(
        isinstance(choice, dict) and choice.get("finish_reason") for choice in choices
    )


def _stream_error(route: FeatureRoute, exc: BaseException, timeout_s: float) -> RequestError:
    """The error event for a stream that broke after the status was sent (the endpoint and
    the exact cause go to the log only: these callers are users, not administrators)."""
    if isinstance(exc, TimeoutError):
        return _transport_error(route, exc, timeout_s)
    log.warning(
        "model_stream_broken",
        feature=route.feature,
        endpoint=display_url(route.endpoint or ""),
        error=type(exc).__name__,
    )
    return RequestError(
        502,
        f"The model server of '{route.feature}' stopped in the middle of the answer; retry the "
        "request, and if it happens again ask an administrator to check the model server",
        "upstream_stream_broken",
    )


@dataclass(frozen=True, slots=True)
class Call:
    """One forwarded request."""

    route: FeatureRoute
    api: Api
    body: dict[str, Any]
    stream: bool


def _unavailable(request: Request, failure: RequestError) -> RequestError:
    """The generic error a user gets for any model failure; the precise one goes to the log."""
    log.warning("model_call_failed", reason=failure.message, code=failure.code, caller="user")
    if failure.status == 429:  # the model's rate limit: "retry later", with its Retry-After
        return RequestError(
            429, model_unavailable_message(request), "model_unavailable", headers=failure.headers
        )
    return RequestError(503, model_unavailable_message(request), "model_unavailable")


async def forward(request: Request, call: Call) -> Response | SSERelayResponse:
    """Send ``call`` to its model server; its answer, relayed (raises :class:`RequestError`).

    Every token of this API is a user's: model failures are answered generically.
    """
    try:
        return await _forward(request, call)
    except RequestError as exc:
        raise _unavailable(request, exc) from None


async def _forward(request: Request, call: Call) -> Response | SSERelayResponse:
    gateway: Gateway = request.app.state.gateway
    route = call.route
    endpoint = route.endpoint or ""
    try:
        await gateway.egress.check(endpoint)
    except EndpointNotAllowed as exc:
        log.warning("model_endpoint_refused", reason=exc.reason)
        raise RequestError(403, exc.reason, "endpoint_not_allowed") from None
    upstream_body = dict(call.body)
    upstream_body["model"] = route.upstream_model
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if call.stream else "application/json",
    }
    if route.api_key:
        headers["Authorization"] = f"Bearer {route.api_key}"  # only to this route's endpoint
    timeout_s = gateway.settings.gateway.model_timeout_s
    timeout = (
        # Streams: a deadline per read, so that long answers may flow.
        aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        if call.stream
        else aiohttp.ClientTimeout(total=timeout_s)
    )
    try:
        response = await gateway.http().post(
            endpoint + _PATHS[call.api],
            data=orjson.dumps(upstream_body),
            headers=headers,
            timeout=timeout,
            allow_redirects=False,  # the API key goes to this endpoint and nowhere else
        )
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise _transport_error(route, exc, timeout_s) from None
    if (
        call.stream
        and response.status == 200
        and "event-stream" in response.headers.get("Content-Type", "")
    ):
        return SSERelayResponse(response, route, timeout_s, model_unavailable_message(request))
    try:
        if response.status != 200:
            try:
                error_body = await response.content.read(MAX_ERROR_BODY_BYTES)
            except (aiohttp.ClientError, TimeoutError, OSError):
                error_body = b""
            raise _status_error(route, response.status, response.headers, error_body)
        try:
            raw = await read_limited(response, MAX_RESPONSE_BYTES)
        except ValueError:
            raise RequestError(
                502,
                f"The model server of '{route.feature}' sent an oversized answer",
                "upstream_error",
            ) from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise _transport_error(route, exc, timeout_s) from None
    finally:
        response.release()
    if call.stream:
        raise RequestError(
            502,
            f"The model server of '{route.feature}' did not stream its answer",
            "upstream_error",
        )
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise RequestError(
            502,
            f"The model server of '{route.feature}' sent an answer that is not an OpenAI "
            "completion",
            "upstream_error",
        )
    data["model"] = route.feature  # the id the client asked for, never the upstream name
    return json_response(data)


# -- streaming ------------------------------------------------------------------------------


class SSERelayResponse:
    """Relays a model server's SSE stream event by event, with ``model`` set to the feature.

    Each event goes out as soon as its blank-line terminator arrives (no buffering of the
    answer). If the client goes away the upstream connection is dropped, so the model server
    stops generating; if the model server fails mid-answer, an OpenAI-style error event ends it.
    """

    media_type: Final = "text/event-stream; charset=utf-8"

    def __init__(
        self,
        upstream: aiohttp.ClientResponse,
        route: FeatureRoute,
        timeout_s: float,
        unavailable: str,
    ):
        self._upstream = upstream
        self._route = route
        self._timeout_s = timeout_s
        self._unavailable = unavailable  # the generic message a user gets for failures
        self._complete = False
        self._ended = False  # [DONE] or a finish_reason seen: a close after it is no break
        self.status_code = 200
        self.client_disconnected = False

    def _frame(self, lines: list[bytes]) -> bytes:
        """One event, rewritten where it carries a JSON object."""
        out: list[bytes] = []
        for line in lines:
            if line.startswith(b"data:"):
                data = line[5:].strip()
                self._ended = self._ended or data == b"[DONE]"
                if data and data != b"[DONE]":
                    try:
                        event = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        event = None
                    if isinstance(event, dict):
                        self._ended = self._ended or _has_finish_reason(event)
                        if "model" in event:
                            event["model"] = self._route.feature
                        inner = event.get("error")
                        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
                            key = self._route.api_key
                            said = clean_error_message(inner["message"], key)
                            log.warning("model_stream_failed", reason=said, caller="user")
                            inner["message"] = self._unavailable
                        line = b"data: " + orjson.dumps(event)
            out.append(line)
        return b"\n".join(out) + b"\n\n"

    async def _pump(self, send: Send) -> None:
        headers = [
            (b"content-type", self.media_type.encode()),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        pending: list[bytes] = []
        try:
            async for raw in self._upstream.content:
                line = raw.rstrip(b"\r\n")
                if line:
                    pending.append(line)
                    continue
                if pending:
                    frame, pending = self._frame(pending), []
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
            if pending:
                frame = self._frame(pending)
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            if not self._ended:  # closed before the answer ended: the server went away
                raise aiohttp.ClientPayloadError("the stream ended before data: [DONE]")
            self._complete = True
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            failure = _stream_error(self._route, exc, self._timeout_s)
            log.warning(
                "model_stream_failed", reason=failure.message, dialect="openai_sse", caller="user"
            )
            event = {
                "error": {
                    "message": self._unavailable,
                    "type": "api_error",
                    "param": None,
                    "code": "model_unavailable",
                }
            }
            body = b"data: " + orjson.dumps(event) + b"\n\n"
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            pump, self.client_disconnected = await run_until_disconnect(self._pump(send), receive)
        finally:
            if self._complete:
                self._upstream.release()  # back to the pool
            else:
                self._upstream.close()  # drop it: the model server stops generating
        if pump.cancelled():
            return
        error_raised = pump.exception()
        if isinstance(error_raised, OSError):
            self.client_disconnected = True
            return
        if error_raised is not None:
            raise error_raised
