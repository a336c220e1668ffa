"""What the OpenAI-compatible endpoints share: auth, errors, body checks, the upstream call.

Per request: authenticate (401/503; the instance-signed token of
``POST /api/v4/ai/openai/direct_access``, ``Authorization: Bearer`` alone is enough; 401
``token_revoked`` once its PAT is revoked or its user blocked, 503 ``routes_unavailable`` when
the gateway can no longer know — see :meth:`RoutesTable.check_principal`) → rate
limits (429) → the instance's routes from memory (503 when never loaded or too old) → the
feature named by ``model`` (404 unknown, 403 without its unit primitive or when the instance
does not serve it) → the body (413 too big, 400 not a JSON object or carrying credentials, 422
bad fields) → the gateway's one model chain (``Gateway.models``: egress check → metrics →
the provider of the feature's model, with its key and its own model name; OpenAI-compatible
servers get the client's body as is, the others its equivalent) → OpenAI's answer object with
``model`` set to the feature id, or OpenAI's stream chunks, one per delta.

Errors are OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``, so OpenAI
clients raise the right exception. Every token of this API is a user's, so a model-server
failure (bad answer, unreachable, refused key, timeout, refused endpoint, its own error) is one
generic 503 ``model_unavailable`` with the request id, 429 with ``Retry-After`` for its rate
limit; the precise cause goes to the gateway's log under that request id.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from enclave.common import wire
from enclave.common.body import read_body
from enclave.common.logging import get_logger
from enclave.common.request_id import new_short_id
from enclave.gateway import usage
from enclave.gateway.answers import JsonAnswer
from enclave.gateway.auth.jws import TokenError, parse_token
from enclave.gateway.auth.verify import AuthError, Principal
from enclave.gateway.http import BodyTooLarge, json_response
from enclave.gateway.models.base import (
    ChatMessage,
    EndpointNotAllowed,
    ModelError,
    ModelRequest,
    ModelResult,
    TextStream,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from enclave.gateway.models.providers import AZURE, OPENAI
from enclave.gateway.rate_limit import RateLimited
from enclave.gateway.request_headers import first_value
from enclave.gateway.routes_table import FeatureRoute, RoutesUnavailable
from enclave.gateway.streaming import run_until_disconnect
from enclave.gateway.targets import messages_as_text
from enclave.gateway.user_access import model_unavailable_message

if TYPE_CHECKING:
    from enclave.gateway.api.openai.tools import ToolSpec
    from enclave.gateway.runtime import Gateway

log = get_logger(__name__)

Api = Literal["chat", "completions"]

# The claim the instance puts in tokens for this API (see instance/api/openai_access.py).
SURFACE_CLAIM: Final = wire.CLAIM_SURFACE
SURFACE_OPENAI: Final = wire.SURFACE_OPENAI
ACCESS_HINT: Final = (
    "create a personal editor key on the instance's page /-/user_settings/editor_keys (or "
    "get a one-hour token with POST /api/v4/ai/openai/direct_access, authenticated with a "
    "personal access token)"
)
# GitLab's PAT prefixes (and Enclave's former one): a PAT is for the instance, not this API.
PAT_PREFIXES: Final = ("glpat-", "enclpat-")
PAT_SENT: Final = (
    "This is a personal access token, which the instance accepts but this API does not: "
    + ACCESS_HINT
)

MAX_REQUEST_BYTES: Final = 4 * 1024 * 1024
# One choice per request: the model chain answers one (every provider can), and each choice
# would be a full generation on a self-hosted model.
MAX_N: Final = 1
MAX_BEST_OF: Final = 4
MAX_STOPS: Final = 4
MAX_TOKENS_CAP: Final = 4096  # larger asks are lowered to this
DEFAULT_MAX_TOKENS: Final = 1024  # when the client sets none (else a model may run to its ctx)
MAX_MESSAGES: Final = 1000
MAX_PROMPTS: Final = 1
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
# Providers that speak OpenAI's API themselves: they get the client's body as is.
PASSTHROUGH_PROVIDERS: Final = frozenset({OPENAI, AZURE})


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


# The headers a token's claims stand in for (header, claim).
_CLAIM_HEADERS: Final = (
    (wire.H_REALM, "gitlab_realm"),
    (wire.H_INSTANCE_ID, "gitlab_instance_id"),
    (wire.H_GLOBAL_USER_ID, "sub"),
)
# token -> its claims' stand-in headers. Parsing a token (base64 and JSON of ~800 bytes, 10 µs)
# cost more than the rest of the view, and a client sends the same token on every request;
# the result depends on the token alone. Bounded: cleared when full.
_STAND_INS_MAX: Final = 1024
_stand_ins: dict[str, tuple[tuple[str, str], ...]] = {}


def _claim_stand_ins(token: str) -> tuple[tuple[str, str], ...] | None:
    """The headers ``token``'s (unverified) claims fill in; None when it does not parse."""
    found = _stand_ins.get(token)
    if found is not None:
        return found
    try:
        claims = parse_token(token).claims
    except TokenError:
        return None
    found = tuple(
        (header, value)
        for header, claim in _CLAIM_HEADERS
        if isinstance(value := claims.get(claim), str)
    )
    if len(_stand_ins) >= _STAND_INS_MAX:
        _stand_ins.clear()
    _stand_ins[token] = found
    return found


_AUTHORIZATION: Final = wire.H_AUTHORIZATION.encode()


def _auth_view(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request's headers (the raw ASGI pairs), completed from the token where the client
    left them out. A name sent twice keeps its last value.

    An OpenAI client sends only ``Authorization``. The authenticator demands GitLab's headers
    and matches them against the verified claims; filling the absent ones from the (not yet
    verified) claims makes "absent" mean "not checked" while a header that *is* sent must still
    match, and the signature check still covers the claims themselves.
    """
    view = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw}
    view.setdefault(wire.H_AUTH_TYPE, wire.AUTH_TYPE_OIDC)
    scheme, _, token = view.get(wire.H_AUTHORIZATION, "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return view
    stand_ins = _claim_stand_ins(token.strip())
    if stand_ins is None:
        return view  # the authenticator says what is wrong with it
    for header, value in stand_ins:
        view.setdefault(header, value)
    return view


async def authenticate(request: Request) -> tuple[Principal, Mapping[str, FeatureRoute]]:
    """The verified caller (within its rate limits) and the routes; raises :class:`RequestError`."""
    gateway: Gateway = request.app.state.gateway
    raw = request.scope["headers"]
    authorization = first_value(raw, _AUTHORIZATION)
    if authorization is None:
        raise RequestError(
            401,
            f"No API key provided: send Authorization: Bearer <token>; {ACCESS_HINT}",
            "invalid_api_key",
        )
    scheme, _, presented = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and presented.strip().startswith(PAT_PREFIXES):
        raise RequestError(401, PAT_SENT, "invalid_api_key")
    try:
        principal = await gateway.authenticator.authenticate(_auth_view(raw))
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
    limiter = gateway.rate_limiter_for(principal.issuer)
    if limiter.enabled:
        try:
            await limiter.check(principal.issuer, principal.instance_id, principal.subject)
        except RateLimited as exc:
            raise RequestError(
                exc.status,
                exc.detail,
                "rate_limit_exceeded" if exc.status == 429 else "rate_limits_unavailable",
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
    usage.claim(principal.subject, route.feature, route.model_name)  # a user's call: counted
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
    for name, most in (("n", MAX_N), ("best_of", MAX_BEST_OF)):
        count = _positive_int(body, name)
        if count is not None and count > most:
            raise _invalid(name, f"'{name}' may be at most {most} on this gateway")
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise _invalid(name, f"'{name}' must be a number")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _invalid("seed", "'seed' must be an integer")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str)
        or (
            isinstance(stop, list)
            and len(stop) <= MAX_STOPS
            and all(isinstance(item, str) for item in stop)
        )
    ):
        raise _invalid("stop", f"'stop' must be a string or a list of at most {MAX_STOPS} strings")
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
        "prompt",
        f"'prompt' is required: a string (or a list of {MAX_PROMPTS} string; this gateway "
        "answers one prompt per request)",
    )


# -- the model call -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One request for the feature's model."""

    route: FeatureRoute
    api: Api
    body: dict[str, Any]
    stream: bool
    tools: ToolSpec | None = None  # checked by .tools.check_tools


def _text_of(content: Any, param: str) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
                continue
        raise _invalid(
            param,
            f"{param} holds a part that is not text; the model of this feature takes text only",
        )
    return "".join(texts)


_ROLES: Final = {"developer": "system", "function": "tool"}


def _tool_error(param: str, message: str) -> RequestError:
    return RequestError(400, message, "invalid_tool_message", param)


def _calls_of(message: dict[str, Any], index: int) -> tuple[ToolCall, ...]:
    """An assistant message's ``tool_calls``, checked (arguments must be a JSON object)."""
    raw = message.get("tool_calls")
    if raw is None:
        return ()
    param = f"messages[{index}].tool_calls"
    if not isinstance(raw, list):
        raise _tool_error(param, f"{param} must be a list")
    calls = []
    for position, entry in enumerate(raw):
        where = f"{param}[{position}]"
        function = entry.get("function") if isinstance(entry, dict) else None
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("id"), str)
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            raise _tool_error(
                where, f"{where} must have an id and a function with a name and arguments"
            )
        try:
            arguments = orjson.loads(function["arguments"] or "{}")
        except orjson.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            raise _tool_error(
                f"{where}.function.arguments", f"{where}.function.arguments must be a JSON object"
            )
        calls.append(ToolCall(entry["id"], function["name"], function["arguments"] or "{}"))
    return tuple(calls)


def chat_messages(messages: list[dict[str, Any]]) -> tuple[ChatMessage, ...]:
    """The checked OpenAI messages as the model chain's (for providers that are not OpenAI's).

    A tool result keeps the id of the call it answers and that call's function name (Gemini
    answers by name).
    """
    out = []
    names: dict[str, str] = {}  # tool call id -> function name
    for index, message in enumerate(messages):
        role = _ROLES.get(message["role"], message["role"])
        content = _text_of(message.get("content"), f"messages[{index}].content")
        if role == "assistant" and message.get("tool_calls"):
            calls = _calls_of(message, index)
            names.update((call.id, call.name) for call in calls)
            out.append(ChatMessage(role, content, tool_calls=calls))
        elif role == "tool":
            call_id = message.get("tool_call_id")
            name = message.get("name")
            if not isinstance(call_id, str) or not call_id:
                if not isinstance(name, str):  # the legacy "function" role names its function
                    raise _tool_error(
                        f"messages[{index}].tool_call_id",
                        f"messages[{index}] (role tool) needs the tool_call_id it answers",
                    )
                call_id = next((i for i, n in reversed(names.items()) if n == name), name)
            if not isinstance(name, str):
                name = names.get(call_id, "")
            out.append(ChatMessage(role, content, tool_call_id=call_id, name=name))
        else:
            out.append(ChatMessage(role, content))
    return tuple(out)


def model_request(call: Call) -> ModelRequest:
    """The model chain's request for ``call`` (body already checked)."""
    route, body = call.route, call.body
    provider = route.provider
    api: Api = call.api
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] = ()
    passthrough = provider in PASSTHROUGH_PROVIDERS
    if api == "chat":
        if route.force_text_completion:  # a text-completion-* model: the chat as one prompt
            prompt = messages_as_text(chat_messages(body["messages"]))
            api, passthrough = "completions", False
        elif not passthrough:
            messages = chat_messages(body["messages"])
    else:
        raw = body["prompt"]
        prompt = raw if isinstance(raw, str) else raw[0]
    stop = body.get("stop")
    spec = call.tools
    if spec is not None and api != "chat":
        raise RequestError(
            400,
            f"The model of '{route.feature}' takes raw prompts (a text-completion model), so "
            "it cannot call tools; ask an administrator for a chat model",
            "tools_not_supported",
            "tools",
        )
    if not passthrough and ("functions" in body or "function_call" in body):
        raise RequestError(
            400,
            "'functions' and 'function_call' are deprecated: use 'tools' and 'tool_choice'",
            "invalid_tools",
            "functions" if "functions" in body else "function_call",
        )
    return ModelRequest(
        endpoint=route.endpoint or "",
        model=route.upstream_model or "",
        api=api,
        api_key=route.api_key,
        prompt=prompt,
        messages=messages,
        max_tokens=body.get("max_completion_tokens") or body.get("max_tokens") or 0,
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        family=route.family or "other",
        provider=provider,
        seed=body.get("seed"),
        presence_penalty=body.get("presence_penalty"),
        frequency_penalty=body.get("frequency_penalty"),
        openai_body=body if passthrough else None,
        tools=spec.tools if spec is not None else (),
        tool_choice=spec.choice if spec is not None else None,
        tool_name=spec.name if spec is not None else None,
        parallel_tool_calls=spec.parallel if spec is not None else None,
    )


def _model_failure(request: Request, exc: ModelError | EndpointNotAllowed) -> RequestError:
    """The generic error a user gets for any model failure; the precise one goes to the log."""
    if isinstance(exc, EndpointNotAllowed):
        log.warning("model_endpoint_refused", reason=exc.reason, caller="user")
        return RequestError(503, model_unavailable_message(request), "model_unavailable")
    log.warning("model_call_failed", reason=exc.reason, status=exc.status, caller="user")
    if exc.status == 429:  # the model's rate limit: "retry later", with its Retry-After
        headers = {"Retry-After": exc.retry_after} if exc.retry_after else None
        return RequestError(
            429, model_unavailable_message(request), "model_unavailable", headers=headers
        )
    return RequestError(503, model_unavailable_message(request), "model_unavailable")


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _tool_calls(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for call in calls
    ]


def completion_body(call: Call, result: ModelResult, completion_id: str) -> dict[str, Any]:
    """OpenAI's answer object for ``result``: ``model`` is the feature, never the upstream name."""
    choice: dict[str, Any]
    if call.api == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": result.text}
        if result.tool_calls:
            message["content"] = result.text or None
            message["tool_calls"] = _tool_calls(result.tool_calls)
        choice = {"index": 0, "message": message, "logprobs": None}
        kind = "chat.completion"
    else:
        choice = {"text": result.text, "index": 0, "logprobs": None}
        kind = "text_completion"
    choice["finish_reason"] = result.finish_reason
    body: dict[str, Any] = {
        "id": completion_id,
        "object": kind,
        "created": int(time.time()),
        "model": call.route.feature,
        "choices": [choice],
    }
    if result.usage is not None:
        body["usage"] = _usage(result.usage)
    return body


def completion_id(api: Api) -> str:
    return ("chatcmpl-" if api == "chat" else "cmpl-") + new_short_id()


async def forward(request: Request, call: Call) -> JsonAnswer | OpenAIStreamResponse:
    """Answer ``call`` through the gateway's model chain (egress check → metrics → provider).

    Every token of this API is a user's: model failures are answered generically (raises
    :class:`RequestError`).
    """
    gateway: Gateway = request.app.state.gateway
    model_call = model_request(call)
    try:
        if call.stream:
            stream = await gateway.models.stream(model_call)
            options = call.body.get("stream_options")
            # Token counts in a last chunk unless the client declined them.
            usage = options is None or options.get("include_usage") is not False
            return OpenAIStreamResponse(stream, call, usage, model_unavailable_message(request))
        result = await gateway.models.complete(model_call)
    except (ModelError, EndpointNotAllowed) as exc:
        raise _model_failure(request, exc) from None
    return JsonAnswer(completion_body(call, result, completion_id(call.api)))


# -- streaming ------------------------------------------------------------------------------


class OpenAIStreamResponse:
    """A model chain's stream as OpenAI's server-sent events, one event per delta.

    Each delta goes out as soon as the provider yields it (no buffering of the answer). Then a
    chunk with the finish reason, a usage chunk (unless ``stream_options.include_usage`` is
    false) and ``data: [DONE]``. If the client goes away the model call is dropped, so the
    model server stops generating; if the model fails mid-answer, an OpenAI-style error event
    (generic: these callers are users) ends the stream without ``[DONE]``, and the cause is
    logged.
    """

    media_type: Final = "text/event-stream; charset=utf-8"

    def __init__(self, stream: TextStream, call: Call, usage: bool, unavailable: str) -> None:
        self._stream = stream
        self._call = call
        self._usage = usage
        self._unavailable = unavailable
        self.status_code = 200
        self.client_disconnected = False

    def _chunk(self, head: bytes, choice: dict[str, Any]) -> bytes:
        return head + orjson.dumps(choice) + b"]}\n\n"

    async def _pump(self, send: Send) -> None:
        call, stream = self._call, self._stream
        chat = call.api == "chat"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", self.media_type.encode()),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        prefix = {
            "id": completion_id(call.api),
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": call.route.feature,
        }
        # Every chunk starts the same: its fixed fields, then its one choice.
        head = b"data: " + orjson.dumps(prefix)[:-1] + b',"choices":['
        tools: list[ToolCallDelta] | None = getattr(stream, "tool_deltas", None)
        try:
            if chat:
                first = {"index": 0, "delta": {"role": "assistant", "content": ""}}
                first["logprobs"] = first["finish_reason"] = None
                await send(self._body(self._chunk(head, first)))
            async for text in stream:
                if text:
                    choice: dict[str, Any] = (
                        {"index": 0, "delta": {"content": text}, "finish_reason": None}
                        if chat
                        else {"text": text, "index": 0, "finish_reason": None}
                    )
                    await send(self._body(self._chunk(head, choice)))
                if tools:
                    await send(self._body(self._chunk(head, _tool_choice(tools))))
                    tools.clear()
        except ModelError as exc:
            log.warning(
                "model_stream_failed", reason=exc.reason, dialect="openai_sse", caller="user"
            )
            event = {
                "error": {
                    "message": self._unavailable,
                    "type": "api_error",
                    "param": None,
                    "code": "model_unavailable",
                }
            }
            await send(self._body(b"data: " + orjson.dumps(event) + b"\n\n"))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        reason = getattr(stream, "finish_reason", None) or "stop"
        last: dict[str, Any] = (
            {"index": 0, "delta": {}, "finish_reason": reason}
            if chat
            else {"text": "", "index": 0, "finish_reason": reason}
        )
        await send(self._body(self._chunk(head, last)))
        usage: Usage | None = getattr(stream, "usage", None)
        if self._usage and usage is not None:
            data = head[:-1] + b'[],"usage":' + orjson.dumps(_usage(usage)) + b"}\n\n"
            await send(self._body(data))
        await send(self._body(b"data: [DONE]\n\n"))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    def _body(data: bytes) -> Message:
        return {"type": "http.response.body", "body": data, "more_body": True}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            outcome = await run_until_disconnect(self._pump(send), receive)
        finally:
            # Releases the connection when the answer was complete, drops it otherwise (the
            # model server stops generating).
            await self._stream.aclose()
        self.client_disconnected = outcome.client_left
        error_raised = outcome.error
        if isinstance(error_raised, OSError):
            self.client_disconnected = True
            return
        if error_raised is not None:
            raise error_raised


def _tool_choice(pieces: list[ToolCallDelta]) -> dict[str, Any]:
    """One chunk's choice with the tool-call pieces that arrived together."""
    calls = []
    for piece in pieces:
        entry: dict[str, Any] = {"index": piece.index}
        function: dict[str, Any] = {"arguments": piece.arguments}
        if piece.id is not None:
            entry["id"] = piece.id
            entry["type"] = "function"
        if piece.name is not None:
            function["name"] = piece.name
        entry["function"] = function
        calls.append(entry)
    return {"index": 0, "delta": {"tool_calls": calls}, "finish_reason": None}
