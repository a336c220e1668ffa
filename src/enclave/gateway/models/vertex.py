"""Client for Google Vertex AI: Gemini (``generateContent``) and Claude (``rawPredict``).

The model's endpoint is the regional base ``…/v1/projects/{project}/locations/{location}``
(built from the gateway's settings, :mod:`enclave.gateway.models.providers`); the model picks
the publisher:

* Gemini and other Google models — Vertex AI API reference, "projects.locations.publishers.
  models.generateContent" and "streamGenerateContent" (``?alt=sse``): ``contents[{role,
  parts[{text}]}]``, ``systemInstruction``, ``generationConfig{maxOutputTokens, temperature,
  topP, stopSequences, seed, presencePenalty, frequencyPenalty}``; answers
  ``candidates[0].content.parts[].text`` with ``finishReason`` and
  ``usageMetadata{promptTokenCount, candidatesTokenCount}``. Function calling ("Function
  calling" reference): ``tools[{functionDeclarations[{name, description, parameters}]}]``,
  ``toolConfig.functionCallingConfig{mode: AUTO|ANY|NONE, allowedFunctionNames}``, whole
  ``functionCall{name, args}`` parts in answers and stream events (no pieces), answered with
  ``functionResponse{name, response}`` parts.
* Claude (``claude-…``) — Vertex AI documentation, "Use Anthropic's Claude models"
  (``:rawPredict`` / ``:streamRawPredict``): the Anthropic Messages body without ``model`` and
  with ``anthropic_version: vertex-2023-10-16``; answers and streams are Anthropic's, read by
  :mod:`enclave.gateway.models.anthropic`.

Auth: ``Authorization: Bearer`` with an OAuth access token. The model's key is either a
service-account key (its JSON), exchanged for a token (a JWT assertion signed locally with
google-auth, RFC 7523) at ``gateway.vertex_token_url`` only — never a default Google endpoint —
and cached until shortly before it expires; or an access token as is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from secrets import token_hex
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson
from google.auth import crypt, jwt

from enclave.common.http1 import Response
from enclave.gateway.egress import display_url
from enclave.gateway.models.anthropic import (
    anthropic_deltas,
    anthropic_payload,
    parse_anthropic,
    tool_arguments,
)
from enclave.gateway.models.base import (
    ChatMessage,
    ModelAuthRefused,
    ModelRequest,
    ModelResult,
    ModelServerError,
    ModelUnreachable,
    ToolCall,
    ToolCallDelta,
)
from enclave.gateway.models.http_provider import (
    Call,
    HttpProvider,
    ProviderStream,
    clean_error_message,
    finish_reason,
    json_event,
    sse_events,
    upstream_error_message,
    usage_of,
)

VERTEX_ANTHROPIC_VERSION: Final = "vertex-2023-10-16"
SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_TOKEN_MARGIN_S: Final = 300  # renew tokens this long before they expire
_ASSERTION_LIFETIME_S: Final = 3600
_MAX_TOKENS_CACHED: Final = 256


def is_claude(model: str) -> bool:
    return model.startswith("claude")


def _gemini_parts(message: ChatMessage) -> list[dict[str, Any]]:
    """A turn's parts: text, ``functionCall`` parts, or a ``functionResponse``."""
    if message.role == "tool":
        try:
            value = orjson.loads(message.content)
        except orjson.JSONDecodeError:
            value = None
        response = value if isinstance(value, dict) else {"content": message.content}
        return [{"functionResponse": {"name": message.name or "", "response": response}}]
    parts: list[dict[str, Any]] = [{"text": message.content}]
    if message.tool_calls:
        if not message.content:
            parts = []
        parts.extend(
            {"functionCall": {"name": call.name, "args": tool_arguments(call.arguments)}}
            for call in message.tool_calls
        )
    return parts


# JSON Schema keywords outside Vertex AI's Schema object (an OpenAPI 3.0 subset, per its
# reference) that OpenAI clients send (strict mode always): left out, since the API refuses
# fields it does not know ("Unknown name").
_NOT_IN_GEMINI_SCHEMA: Final = frozenset(
    {"$schema", "$id", "$comment", "additionalProperties", "strict"}
)


def gemini_schema(schema: Any) -> Any:
    """A JSON-schema object as Vertex AI's Schema takes it (unknown keywords left out)."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _NOT_IN_GEMINI_SCHEMA:
            continue
        if key == "properties" and isinstance(value, dict):  # keys are names, not keywords
            out[key] = {name: gemini_schema(item) for name, item in value.items()}
        elif key == "items":
            out[key] = gemini_schema(value)
        elif key in ("anyOf", "oneOf", "allOf") and isinstance(value, list):
            out[key] = [gemini_schema(item) for item in value]
        else:
            out[key] = value
    return out


def gemini_tools(request: ModelRequest) -> dict[str, Any]:
    """``tools[{functionDeclarations}]`` and ``toolConfig.functionCallingConfig``."""
    declarations = []
    for tool in request.tools:
        declaration: dict[str, Any] = {
            "name": tool.name,
            "parameters": gemini_schema(tool.parameters),
        }
        if tool.description:
            declaration["description"] = tool.description
        declarations.append(declaration)
    fields: dict[str, Any] = {"tools": [{"functionDeclarations": declarations}]}
    choice = request.tool_choice
    if choice in _GEMINI_MODES:
        config: dict[str, Any] = {"mode": _GEMINI_MODES[choice]}
        if choice == "function":
            config["allowedFunctionNames"] = [request.tool_name]
        fields["toolConfig"] = {"functionCallingConfig": config}
    return fields


_GEMINI_MODES: Final = {"auto": "AUTO", "none": "NONE", "required": "ANY", "function": "ANY"}


def gemini_payload(request: ModelRequest) -> bytes:
    turns: list[dict[str, Any]]
    if request.api == "completions":
        system, turns = "", [{"role": "user", "parts": [{"text": request.prompt or ""}]}]
    else:
        texts: list[str] = []
        turns = []  # user/model turns; consecutive ones of a role are joined
        for message in request.messages:
            if message.role == "system":
                texts.append(message.content)
                continue
            role = "model" if message.role == "assistant" else "user"
            parts = (
                _gemini_parts(message)
                if message.tool_calls or message.role == "tool"
                else [{"text": message.content}]
            )
            if turns and turns[-1]["role"] == role:
                turns[-1]["parts"].extend(parts)
            else:
                turns.append({"role": role, "parts": parts})
        system = "\n\n".join(texts)
    config: dict[str, Any] = {"maxOutputTokens": request.max_tokens}
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    if request.stop:
        config["stopSequences"] = list(request.stop)
    if request.seed is not None:
        config["seed"] = request.seed
    if request.presence_penalty is not None:
        config["presencePenalty"] = request.presence_penalty
    if request.frequency_penalty is not None:
        config["frequencyPenalty"] = request.frequency_penalty
    payload: dict[str, Any] = {"contents": turns, "generationConfig": config}
    if system:
        payload["systemInstruction"] = {"parts": [{"text": system}]}
    if request.tools:
        payload.update(gemini_tools(request))
    return orjson.dumps(payload)


def _function_calls(parts: Any) -> list[ToolCall]:
    """The ``functionCall`` parts of a candidate (Gemini gives whole calls, ids optional)."""
    calls = []
    for part in parts or ():
        call = part.get("functionCall") if isinstance(part, dict) else None
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            call_id = call.get("id")
            calls.append(
                ToolCall(
                    call_id if isinstance(call_id, str) and call_id else f"call_{token_hex(12)}",
                    call["name"],
                    orjson.dumps(call.get("args") or {}).decode(),
                )
            )
    return calls


class TokenSource:
    """Access tokens for service-account keys, from the configured token endpoint only."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        token_url: str | None,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._token_url = token_url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def token(self, key: str) -> str:
        """An access token for ``key``: a service-account key's JSON, or a token already."""
        if not key.lstrip().startswith("{"):
            return key
        try:
            info = orjson.loads(key)
            email, key_id = str(info["client_email"]), str(info.get("private_key_id", ""))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise ModelAuthRefused(
                "the Vertex AI model's key is not a service-account key (JSON with "
                "client_email and private_key) nor an access token"
            ) from None
        cache_key = (email, key_id)
        cached = self._tokens.get(cache_key)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        lock = self._locks.setdefault(cache_key, asyncio.Lock())
        async with lock:  # one exchange per key at a time, however many calls wait
            cached = self._tokens.get(cache_key)
            if cached is not None and cached[1] > self._clock():
                return cached[0]
            token, expires_in = await self._exchange(info)
            if len(self._tokens) >= _MAX_TOKENS_CACHED:
                self._tokens.clear()  # bounded; a cleared key just fetches a new token
                self._locks = {cache_key: lock}
            self._tokens[cache_key] = (token, self._clock() + expires_in - _TOKEN_MARGIN_S)
            return token

    def _assertion(self, info: dict[str, Any], url: str) -> bytes:
        try:
            signer = crypt.RSASigner.from_service_account_info(info)
        except (ValueError, KeyError, TypeError):
            raise ModelAuthRefused(
                "the private key of the Vertex AI model's service-account key cannot be read"
            ) from None
        now = int(self._clock())
        claims = {
            "iss": info["client_email"],
            "scope": SCOPE,
            "aud": url,
            "iat": now,
            "exp": now + _ASSERTION_LIFETIME_S,
        }
        return bytes(jwt.encode(signer, claims))

    async def _exchange(self, info: dict[str, Any]) -> tuple[str, float]:
        url = self._token_url
        if not url:
            raise ModelAuthRefused(
                "the gateway has no token endpoint for Vertex AI service-account keys: set "
                "ENCLAVE_GATEWAY__VERTEX_TOKEN_URL (https://oauth2.googleapis.com/token, or "
                "your own endpoint when air-gapped)"
            )
        form = {"grant_type": JWT_BEARER, "assertion": self._assertion(info, url).decode()}
        where = display_url(url)
        try:
            async with self._session().post(
                url, data=form, timeout=self._timeout, allow_redirects=False
            ) as response:
                body = await response.content.read(64 * 1024)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ModelUnreachable(
                f"cannot get an access token from {where} ({type(exc).__name__})"
            ) from None
        if status != 200:
            said = upstream_error_message(body, None)
            if status in (400, 401, 403):
                raise ModelAuthRefused(
                    f"the token endpoint {where} refused the Vertex AI service-account key "
                    f"(HTTP {status}){': ' + said if said else ''}; check the key"
                )
            raise ModelServerError(f"the token endpoint {where} failed (HTTP {status})")
        try:
            data = orjson.loads(body)
            token, expires_in = str(data["access_token"]), float(data.get("expires_in", 3600))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ModelServerError(
                f"the token endpoint {where} answered without an access_token"
            ) from None
        return token, expires_in


class VertexClient(HttpProvider):
    """:class:`~enclave.gateway.models.base.TextModelClient` for Vertex AI (Gemini, Claude)."""

    credential_name = "the Google Cloud credentials"
    credential_hint = (
        "check the model's service-account key (or access token) and that the account has "
        "the Vertex AI User role in the project"
    )
    api_hint = "is it a Vertex AI endpoint (https://<location>-aiplatform.googleapis.com)?"

    def __init__(self, *args: Any, tokens: TokenSource, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._tokens = tokens
        self.authorize: Callable[[ModelRequest, dict[str, str]], Awaitable[None]] | None = (
            self._authorize
        )

    async def _authorize(self, request: ModelRequest, headers: dict[str, str]) -> None:
        if request.api_key:
            headers["Authorization"] = f"Bearer {await self._tokens.token(request.api_key)}"

    def secret(self, request: ModelRequest) -> str | None:
        key = request.api_key
        return None if key and key.lstrip().startswith("{") else key

    def build(self, request: ModelRequest, stream: bool) -> Call:
        model = quote(request.model, safe="@.-_")
        headers = {"Content-Type": "application/json"}
        headers.update(request.extra_headers)
        if is_claude(request.model):
            action = "streamRawPredict" if stream else "rawPredict"
            body = anthropic_payload(
                request, stream, model=None, anthropic_version=VERTEX_ANTHROPIC_VERSION
            )
            url = f"{request.endpoint}/publishers/anthropic/models/{model}:{action}"
            return url, body, headers
        action = "streamGenerateContent?alt=sse" if stream else "generateContent"
        url = f"{request.endpoint}/publishers/google/models/{model}:{action}"
        return url, gemini_payload(request), headers

    def parse_result(self, request: ModelRequest, data: Any) -> ModelResult:
        if is_claude(request.model):
            return parse_anthropic(self, request, data)
        text, reason, parts = self._candidate(request, data)
        if text is None:
            raise self.bad_response(request, "returned an answer without candidates")
        calls = tuple(_function_calls(parts)) if request.tools else ()
        return ModelResult(
            text=text,
            # Gemini stops with STOP after function calls: OpenAI says tool_calls.
            finish_reason="tool_calls" if calls else finish_reason(reason),
            usage=self._usage(data),
            tool_calls=calls,
        )

    @staticmethod
    def _usage(data: dict[str, Any]) -> Any:
        return usage_of(data.get("usageMetadata"), "promptTokenCount", "candidatesTokenCount")

    def _candidate(self, request: ModelRequest, data: Any) -> tuple[str | None, Any, Any]:
        """The text, finish reason and parts of the first candidate."""
        candidates = data.get("candidates") if isinstance(data, dict) else None
        if not isinstance(candidates, list) or not candidates:
            return None, None, None
        candidate = candidates[0]
        if not isinstance(candidate, dict):
            return None, None, None
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        text = "".join(
            part["text"]
            for part in parts or ()
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
        return text, candidate.get("finishReason"), parts

    def deltas(
        self, request: ModelRequest, response: Response, stream: ProviderStream
    ) -> AsyncIterator[str]:
        if is_claude(request.model):
            return anthropic_deltas(self, request, response, stream)
        return self._gemini_deltas(request, response, stream)

    async def _gemini_deltas(
        self, request: ModelRequest, response: Response, stream: ProviderStream
    ) -> AsyncIterator[str]:
        calls = 0
        async with aclosing(sse_events(response.content)) as events:
            async for _, data in events:
                event = json_event(self, request, data)
                if not isinstance(event, dict):
                    continue
                if event.get("error"):
                    error = event["error"]
                    said = error.get("message") if isinstance(error, dict) else error
                    raise ModelServerError(
                        f"the model endpoint {display_url(request.endpoint)} failed while "
                        f"streaming: {clean_error_message(said, self.secret(request))}"
                    )
                usage = self._usage(event)
                if usage is not None:
                    stream.usage = usage
                text, reason, parts = self._candidate(request, event)
                if reason:
                    stream.finish_reason = finish_reason(reason)
                if text:
                    yield text
                if request.tools and parts:
                    for call in _function_calls(parts):  # whole calls, one piece each
                        stream.tool_deltas.append(
                            ToolCallDelta(calls, call.id, call.name, call.arguments)
                        )
                        calls += 1
                    if stream.tool_deltas:
                        yield ""
        if calls and stream.finish_reason == "stop":
            stream.finish_reason = "tool_calls"
