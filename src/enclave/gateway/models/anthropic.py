"""Client for Anthropic's Messages API (``POST {endpoint}/v1/messages``).

Wire format: Anthropic API reference, "Messages" and "Streaming Messages": the system prompt is
the top-level ``system``, ``max_tokens`` is required, stops are ``stop_sequences``; headers
``x-api-key`` and ``anthropic-version: 2023-06-01``. The answer is ``content[]`` text blocks
with ``stop_reason`` and ``usage{input_tokens, output_tokens}``; a stream is server-sent events
``message_start`` (input tokens), ``content_block_start``, ``content_block_delta``
(``text_delta``), ``content_block_stop``, ``message_delta`` (stop reason, output tokens),
``message_stop``, ``ping`` and ``error``. The body and both readers are shared with Claude on
Vertex AI (:mod:`enclave.gateway.models.vertex`), which differs only in URL and auth.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import orjson

from enclave.gateway.egress import display_url
from enclave.gateway.models.base import (
    ModelRequest,
    ModelResult,
    ModelServerError,
    Usage,
)
from enclave.gateway.models.http_provider import (
    Call,
    HttpProvider,
    ProviderStream,
    clean_error_message,
    finish_reason,
    json_event,
    sse_events,
    usage_of,
)

ANTHROPIC_VERSION: Final = "2023-06-01"


def anthropic_messages(request: ModelRequest) -> tuple[str, list[dict[str, str]]]:
    """``(system, messages)`` as the Messages API wants them.

    System messages become the top-level system prompt; the rest must start with a user turn
    and alternate, so consecutive turns of one role are joined. A raw prompt (completions API)
    is one user turn.
    """
    if request.api == "completions":
        return "", [{"role": "user", "content": request.prompt or ""}]
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for message in request.messages:
        if message.role == "system":
            system.append(message.content)
            continue
        role = "assistant" if message.role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + message.content
        else:
            turns.append({"role": role, "content": message.content})
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": "."})  # the API refuses other openings
    return "\n\n".join(system), turns


def visible_stops(request: ModelRequest) -> list[str]:
    """Stop sequences Claude accepts: Anthropic (and Bedrock for Claude) refuse the request
    when one is only whitespace, as FIM templates' "\n\n" stops are."""
    return [stop for stop in request.stop if stop.strip()]


def anthropic_payload(request: ModelRequest, stream: bool, **fields: Any) -> bytes:
    """The Messages API body; ``fields`` adds, replaces or (None) drops top-level fields."""
    system, messages = anthropic_messages(request)
    payload: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": messages,
    }
    if system:
        payload["system"] = system
    if stream:
        payload["stream"] = True
    stops = visible_stops(request)
    if stops:
        payload["stop_sequences"] = stops
    if request.temperature is not None:
        payload["temperature"] = request.temperature
    if request.top_p is not None:
        payload["top_p"] = request.top_p
    for name, value in fields.items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    return orjson.dumps(payload)


def _usage(data: Any) -> Usage | None:
    return usage_of(data, "input_tokens", "output_tokens")


def parse_anthropic(provider: HttpProvider, request: ModelRequest, data: Any) -> ModelResult:
    content = data.get("content") if isinstance(data, dict) else None
    if not isinstance(content, list):
        raise provider.bad_response(request, "returned a message without content")
    texts = [
        block["text"]
        for block in content
        if isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    ]
    return ModelResult(
        text="".join(texts),
        finish_reason=finish_reason(data.get("stop_reason")),
        usage=_usage(data.get("usage")),
    )


async def anthropic_deltas(
    provider: HttpProvider,
    request: ModelRequest,
    response: aiohttp.ClientResponse,
    stream: ProviderStream,
) -> AsyncIterator[str]:
    """Text of the ``text_delta`` events; usage from ``message_start`` + ``message_delta``."""
    input_tokens = 0
    async for name, data in sse_events(response.content):
        event = json_event(provider, request, data)
        if not isinstance(event, dict):
            continue
        kind = event.get("type") or name
        if kind == "content_block_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                if isinstance(text, str) and text:
                    yield text
        elif kind == "message_start":
            message = event.get("message")
            usage = _usage(message.get("usage")) if isinstance(message, dict) else None
            if usage is not None:
                input_tokens = usage.input_tokens
                stream.usage = usage
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                stream.finish_reason = finish_reason(delta["stop_reason"])
            usage = _usage(event.get("usage"))
            if usage is not None:
                stream.usage = Usage(usage.input_tokens or input_tokens, usage.output_tokens)
        elif kind == "message_stop":
            return
        elif kind == "error":
            error = event.get("error")
            said = error.get("message") if isinstance(error, dict) else error
            raise ModelServerError(
                f"the model endpoint {display_url(request.endpoint)} failed while streaming: "
                f"{clean_error_message(said, provider.secret(request))}"
            )
        # ping, content_block_start / _stop: nothing to relay


class AnthropicClient(HttpProvider):
    """:class:`~enclave.gateway.models.base.TextModelClient` for Anthropic's Messages API."""

    api_hint = "is it Anthropic's API (https://api.anthropic.com) or a proxy of it?"

    @staticmethod
    def _headers(request: ModelRequest, accept: str) -> dict[str, str]:
        headers = {"Accept": accept, "anthropic-version": ANTHROPIC_VERSION}
        headers.update(request.extra_headers)
        if request.api_key:
            headers["x-api-key"] = request.api_key
        return headers

    @staticmethod
    def _v1(request: ModelRequest) -> str:
        # The registered endpoint is the API's base, with or without its /v1.
        endpoint = request.endpoint
        return endpoint if endpoint.endswith("/v1") else endpoint + "/v1"

    def build(self, request: ModelRequest, stream: bool) -> Call:
        headers = self._headers(request, "text/event-stream" if stream else "application/json")
        headers["Content-Type"] = "application/json"
        return self._v1(request) + "/messages", anthropic_payload(request, stream), headers

    def models_call(self, request: ModelRequest) -> tuple[str, dict[str, str]] | None:
        return self._v1(request) + "/models", self._headers(request, "application/json")

    def parse_result(self, request: ModelRequest, data: Any) -> ModelResult:
        return parse_anthropic(self, request, data)

    def deltas(
        self, request: ModelRequest, response: aiohttp.ClientResponse, stream: ProviderStream
    ) -> AsyncIterator[str]:
        return anthropic_deltas(self, request, response, stream)
