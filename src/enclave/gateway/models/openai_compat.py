"""Client for OpenAI-compatible model servers (vLLM, Ollama, llama.cpp, LM Studio, TGI, ...).

Calls ``POST {endpoint}/completions`` (raw prompts, fill-in-the-middle) or
``POST {endpoint}/chat/completions`` (messages), either whole or streamed (server-sent events,
relayed delta by delta). Wire format: OpenAI API reference, "Completions" and "Chat
Completions" (``choices[].text`` / ``choices[].message.content``; streamed
``choices[].delta.content`` chunks ending with ``data: [DONE]``). Calls, retries and failures
are :class:`~enclave.gateway.models.http_provider.HttpProvider`'s; Azure OpenAI reuses the body
and the stream (:mod:`enclave.gateway.models.azure`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, Final

import orjson

from enclave.common.http1 import Response
from enclave.gateway.egress import display_url
from enclave.gateway.models.base import (
    ChatMessage,
    ModelRequest,
    ModelResult,
    ModelServerError,
    ToolCall,
    ToolCallDelta,
)
from enclave.gateway.models.http_provider import (
    MAX_RESPONSE_BYTES,
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

__all__ = [
    "MAX_RESPONSE_BYTES",
    "OpenAICompatClient",
    "clean_error_message",
    "openai_payload",
    "upstream_error_message",
]

_PATHS: Final = {"completions": "/completions", "chat": "/chat/completions"}
_DONE: Final = b"[DONE]"


def _message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["content"] = message.content or None
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def openai_tools(request: ModelRequest) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` in OpenAI's shape (empty without tools)."""
    if not request.tools:
        return {}
    fields: dict[str, Any] = {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description else {}),
                    "parameters": tool.parameters,
                },
            }
            for tool in request.tools
        ]
    }
    if request.tool_choice == "function":
        fields["tool_choice"] = {"type": "function", "function": {"name": request.tool_name}}
    elif request.tool_choice:
        fields["tool_choice"] = request.tool_choice
    return fields


def openai_payload(request: ModelRequest, stream: bool, *, with_model: bool = True) -> bytes:
    """The body of an OpenAI (or Azure OpenAI) completions / chat completions call.

    A client's OpenAI body (:attr:`ModelRequest.openai_body`) is sent as is, so every field
    the server knows passes through; only the model and the stream options are the gateway's.
    """
    payload: dict[str, Any]
    if request.openai_body is not None:
        payload = dict(request.openai_body)
        payload["stream"] = stream
        payload.pop("stream_options", None)
        payload.pop("model", None)
    else:
        payload = {"max_tokens": request.max_tokens, "n": 1, "stream": stream}
    if with_model:  # Azure names the model (deployment) in the URL instead
        payload["model"] = request.model
    if stream:
        # Ask for token counts in the final chunk (OpenAI, vLLM, Ollama and llama.cpp honour
        # it; servers that don't know the option ignore it) so streams report usage too.
        payload["stream_options"] = {"include_usage": True}
    if request.openai_body is not None:
        return orjson.dumps(payload)
    if request.api == "completions":
        payload["prompt"] = request.prompt or ""
    else:
        payload["messages"] = [_message(m) for m in request.messages]
    if request.temperature is not None:
        payload["temperature"] = request.temperature
    if request.top_p is not None:
        payload["top_p"] = request.top_p
    if request.stop:
        payload["stop"] = list(request.stop)
    for name in ("seed", "presence_penalty", "frequency_penalty"):
        value = getattr(request, name)
        if value is not None:
            payload[name] = value
    payload.update(openai_tools(request))
    return orjson.dumps(payload)


def openai_tool_calls(value: Any) -> tuple[ToolCall, ...]:
    """The ``message.tool_calls`` of an OpenAI answer (malformed entries skipped)."""
    if not isinstance(value, list):
        return ()
    calls: list[ToolCall] = []
    for entry in value:
        function = entry.get("function") if isinstance(entry, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            continue
        arguments = function.get("arguments")
        calls.append(
            ToolCall(
                id=str(entry.get("id") or f"call_{len(calls)}"),
                name=function["name"],
                arguments=arguments
                if isinstance(arguments, str)
                else orjson.dumps(arguments or {}).decode(),
            )
        )
    return tuple(calls)


def openai_tool_deltas(value: Any) -> list[ToolCallDelta]:
    """The ``delta.tool_calls`` pieces of an OpenAI stream chunk."""
    if not isinstance(value, list):
        return []
    pieces = []
    for position, entry in enumerate(value):
        if not isinstance(entry, dict):
            continue
        function = entry.get("function")
        function = function if isinstance(function, dict) else {}
        index = entry.get("index")
        name, arguments, call_id = function.get("name"), function.get("arguments"), entry.get("id")
        pieces.append(
            ToolCallDelta(
                index=index if isinstance(index, int) else position,
                id=call_id if isinstance(call_id, str) else None,
                name=name if isinstance(name, str) else None,
                arguments=arguments if isinstance(arguments, str) else "",
            )
        )
    return pieces


class OpenAICompatClient(HttpProvider):
    """:class:`~enclave.gateway.models.base.TextModelClient` for the OpenAI-compatible API."""

    api_hint = "is it an OpenAI-compatible API base (usually ending in /v1)?"

    def build(self, request: ModelRequest, stream: bool) -> Call:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
        }
        headers.update(request.extra_headers)
        if request.api_key:
            # Only ever sent to this request's own endpoint.
            headers["Authorization"] = f"Bearer {request.api_key}"
        return request.endpoint + _PATHS[request.api], openai_payload(request, stream), headers

    def models_call(self, request: ModelRequest) -> tuple[str, dict[str, str]] | None:
        headers = {"Accept": "application/json", **request.extra_headers}
        if request.api_key:
            headers["Authorization"] = f"Bearer {request.api_key}"
        return request.endpoint + "/models", headers

    def not_found(self, request: ModelRequest, said: str) -> str:
        return (
            f" for {_PATHS[request.api]}{said}; check that the endpoint URL is the API base "
            f"(usually ending in /v1) and that the model '{request.model}' is served there"
        )

    def parse_result(self, request: ModelRequest, data: Any) -> ModelResult:
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self.bad_response(request, "returned a response without choices")
        choice = choices[0]
        calls: tuple[ToolCall, ...] = ()
        if request.api == "completions":
            text = choice.get("text")
        else:
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
            if isinstance(message, dict) and message.get("tool_calls"):
                calls = openai_tool_calls(message["tool_calls"])
        if text is not None and not isinstance(text, str):
            raise self.bad_response(request, "returned a choice whose text is not a string")
        return ModelResult(
            text=text or "",
            finish_reason=finish_reason(choice.get("finish_reason")),
            usage=usage_of(data.get("usage"), "prompt_tokens", "completion_tokens"),
            tool_calls=calls,
        )

    async def deltas(
        self, request: ModelRequest, response: Response, stream: ProviderStream
    ) -> AsyncIterator[str]:
        chat = request.api == "chat"
        async with aclosing(sse_events(response.content)) as events:
            async for _, data in events:
                if data == _DONE:
                    return
                event = json_event(self, request, data)
                if not isinstance(event, dict):
                    continue
                if event.get("error"):
                    said = upstream_error_message(data, request.api_key)
                    raise ModelServerError(
                        f"the model endpoint {display_url(request.endpoint)} failed while "
                        f"streaming: {said}"
                    )
                usage = usage_of(event.get("usage"), "prompt_tokens", "completion_tokens")
                if usage is not None:
                    stream.usage = usage
                choices = event.get("choices")
                if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                    continue
                choice = choices[0]
                if choice.get("finish_reason"):
                    stream.finish_reason = finish_reason(choice["finish_reason"])
                if chat:
                    delta = choice.get("delta")
                    text = delta.get("content") if isinstance(delta, dict) else None
                    if isinstance(delta, dict) and delta.get("tool_calls"):
                        stream.tool_deltas.extend(openai_tool_deltas(delta["tool_calls"]))
                        if not text:
                            yield ""
                else:
                    text = choice.get("text")
                if isinstance(text, str) and text:
                    yield text
        if stream.finish_reason is None:
            # Neither [DONE] nor a finish_reason: the server went away mid-answer (a
            # connection closed without chunked framing ends the loop quietly).
            raise ModelServerError(
                f"the model endpoint {display_url(request.endpoint)} ended its stream "
                "before the answer was complete"
            )
