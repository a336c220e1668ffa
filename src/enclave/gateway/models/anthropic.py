"""Client for Anthropic's Messages API (``POST {endpoint}/v1/messages``).

Wire format: Anthropic API reference, "Messages" and "Streaming Messages": the system prompt is
the top-level ``system``, ``max_tokens`` is required, stops are ``stop_sequences``; headers
``x-api-key`` and ``anthropic-version: 2023-06-01``; "Tool use": ``tools[{name, description,
input_schema}]``, ``tool_choice{type: auto|any|tool|none}``, ``tool_use`` / ``tool_result``
content blocks, ``stop_reason: tool_use``. The answer is ``content[]`` text blocks
with ``stop_reason`` and ``usage{input_tokens, output_tokens}``; a stream is server-sent events
``message_start`` (input tokens), ``content_block_start`` (a ``tool_use`` block starts a tool
call), ``content_block_delta`` (``text_delta``, or ``input_json_delta`` for a tool call's
arguments), ``content_block_stop``, ``message_delta`` (stop reason, output tokens),
``message_stop``, ``ping`` and ``error``. The body and both readers are shared with Claude on
Vertex AI (:mod:`enclave.gateway.models.vertex`), which differs only in URL and auth.
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


def tool_arguments(text: str) -> Any:
    """A tool call's arguments (JSON text) as the object the APIs want; {} when unreadable."""
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _blocks(message: ChatMessage) -> list[dict[str, Any]]:
    """A turn with tool calls or a tool result as Messages API content blocks."""
    if message.role == "tool":
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        if message.content:
            block["content"] = message.content
        return [block]
    blocks: list[dict[str, Any]] = (
        [{"type": "text", "text": message.content}] if (message.content) else []
    )
    blocks.extend(
        {
            "type": "tool_use",
            "id": call.id,
            "name": call.name,
            "input": tool_arguments(call.arguments),
        }
        for call in message.tool_calls
    )
    return blocks


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def anthropic_messages(request: ModelRequest) -> tuple[str, list[dict[str, Any]]]:
    """``(system, messages)`` as the Messages API wants them.

    System messages become the top-level system prompt; the rest must start with a user turn
    and alternate, so consecutive turns of one role are joined. A raw prompt (completions API)
    is one user turn. Tool calls are ``tool_use`` blocks of the assistant's turn, tool results
    ``tool_result`` blocks of the next user turn.
    """
    if request.api == "completions":
        return "", [{"role": "user", "content": request.prompt or ""}]
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == "system":
            system.append(message.content)
            continue
        role = "assistant" if message.role == "assistant" else "user"
        content: str | list[dict[str, Any]] = (
            _blocks(message) if message.tool_calls or message.role == "tool" else message.content
        )
        if turns and turns[-1]["role"] == role:
            last = turns[-1]["content"]
            if isinstance(last, str) and isinstance(content, str):
                turns[-1]["content"] = last + "\n\n" + content
            else:
                turns[-1]["content"] = _as_blocks(last) + _as_blocks(content)
        else:
            turns.append({"role": role, "content": content})
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": "."})  # the API refuses other openings
    return "\n\n".join(system), turns


def anthropic_tools(request: ModelRequest) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` in the Messages API's shape (empty without tools)."""
    if not request.tools:
        return {}
    tools = []
    for tool in request.tools:
        entry: dict[str, Any] = {"name": tool.name, "input_schema": tool.parameters}
        if tool.description:
            entry["description"] = tool.description
        tools.append(entry)
    fields: dict[str, Any] = {"tools": tools}
    choice = request.tool_choice
    if choice == "required":
        fields["tool_choice"] = {"type": "any"}
    elif choice == "function":
        fields["tool_choice"] = {"type": "tool", "name": request.tool_name}
    elif choice in ("auto", "none"):
        fields["tool_choice"] = {"type": choice}
    if request.parallel_tool_calls is False and choice != "none":
        fields.setdefault("tool_choice", {"type": "auto"})["disable_parallel_tool_use"] = True
    return fields


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
    if request.tools:
        payload.update(anthropic_tools(request))
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
    texts = []
    calls = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use" and isinstance(block.get("name"), str):
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(ToolCall(str(block.get("id") or ""), block["name"], arguments))
    return ModelResult(
        text="".join(texts),
        finish_reason=finish_reason(data.get("stop_reason")),
        usage=_usage(data.get("usage")),
        tool_calls=tuple(calls),
    )


async def anthropic_deltas(
    provider: HttpProvider,
    request: ModelRequest,
    response: Response,
    stream: ProviderStream,
) -> AsyncIterator[str]:
    """Text of the ``text_delta`` events; usage from ``message_start`` + ``message_delta``.

    A ``tool_use`` block (``content_block_start``) starts a tool call, its ``input_json_delta``
    events are the pieces of its arguments.
    """
    input_tokens = 0
    tool_index: dict[Any, int] = {}  # content block index -> tool call index
    async with aclosing(sse_events(response.content)) as events:
        async for name, data in events:
            event = json_event(provider, request, data)
            if not isinstance(event, dict):
                continue
            kind = event.get("type") or name
            if kind == "content_block_delta":
                delta = event.get("delta")
                if not isinstance(delta, dict):
                    continue
                if delta.get("type") == "text_delta":
                    text = delta.get("text")
                    if isinstance(text, str) and text:
                        yield text
                elif delta.get("type") == "input_json_delta":
                    index = tool_index.get(event.get("index"))
                    partial = delta.get("partial_json")
                    if index is not None and isinstance(partial, str) and partial:
                        stream.tool_deltas.append(ToolCallDelta(index, arguments=partial))
                        yield ""
            elif kind == "content_block_start":
                block = event.get("content_block")
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    index = tool_index[event.get("index")] = len(tool_index)
                    stream.tool_deltas.append(
                        ToolCallDelta(
                            index, str(block.get("id") or ""), str(block.get("name") or "")
                        )
                    )
                    yield ""
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
            # ping, content_block_stop: nothing to relay


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
        self, request: ModelRequest, response: Response, stream: ProviderStream
    ) -> AsyncIterator[str]:
        return anthropic_deltas(self, request, response, stream)
