"""Tool calling on the OpenAI-compatible API, for every provider that has it.

Per provider, one round trip replayed by the loopback fake from the wire fixtures
(``tests/unit/gateway/providers/wire_fixtures.py``, each from the provider's API reference):
the client offers a function in OpenAI's ``tools``; the provider gets it in its own API and
answers a call (whole, or streamed as its own pieces), which the client gets as OpenAI's
``tool_calls`` (``delta.tool_calls`` when streamed) with ``finish_reason: "tool_calls"``; then
the client sends the call and its result back, which the provider gets as its own tool-use and
tool-result blocks, and answers in text. Also: the checks of tool definitions (precise 400s)
and the real ``openai`` client driving a tool call through the gateway.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest
from openai_harness import OpenAIFactory, OpenAIHarness, make_openai, oai
from openai_providers import fake, routed
from provider_fakes import FakeProvider, Reply, json_reply
from provider_setup import success
from wire_fixtures import (
    ANSWER,
    ANTHROPIC_CALL_ID,
    ANTHROPIC_ROUND_TRIP,
    ANTHROPIC_TOOL_MESSAGE,
    ANTHROPIC_TOOLS,
    BEDROCK_CALL_ID,
    BEDROCK_ROUND_TRIP,
    BEDROCK_TOOL_ANSWER,
    BEDROCK_TOOL_CONFIG,
    GEMINI_ROUND_TRIP,
    GEMINI_TOOL_ANSWER,
    GEMINI_TOOL_CONFIG,
    GEMINI_TOOLS,
    OPENAI_CALL_ID,
    OPENAI_TOOL_ANSWER,
    OPENAI_TOOLS,
    TOOL_ARGUMENTS,
    TOOL_NAME,
    TOOL_QUESTION,
    anthropic_tool_stream,
    bedrock_tool_stream,
    gemini_tool_stream,
    openai_tool_stream,
    tool_round_trip,
)

__all__ = ["fake", "make_openai", "oai"]  # fixtures

pytestmark = pytest.mark.anyio

KINDS = ["openai", "azure", "anthropic", "vertex_claude", "bedrock", "vertex_gemini"]
SSE = "text/event-stream"


def tool_reply(kind: str, stream: bool) -> Reply:
    """The provider's answer that calls the tool (its wire fixture)."""
    if kind in ("openai", "azure"):
        return (
            Reply(content_type=SSE, chunks=openai_tool_stream())
            if stream
            else json_reply(OPENAI_TOOL_ANSWER)
        )
    if kind in ("anthropic", "vertex_claude"):
        return (
            Reply(content_type=SSE, chunks=anthropic_tool_stream())
            if stream
            else json_reply(ANTHROPIC_TOOL_MESSAGE)
        )
    if kind == "bedrock":
        return (
            Reply(content_type="application/vnd.amazon.eventstream", chunks=bedrock_tool_stream())
            if stream
            else json_reply(BEDROCK_TOOL_ANSWER)
        )
    return (
        Reply(content_type=SSE, chunks=gemini_tool_stream())
        if stream
        else json_reply(GEMINI_TOOL_ANSWER)
    )


def check_tools_sent(kind: str, sent: dict[str, Any]) -> None:
    """The function definition and choice in the provider's own API."""
    if kind in ("openai", "azure"):
        assert (sent["tools"], sent["tool_choice"]) == (OPENAI_TOOLS, "auto")
    elif kind in ("anthropic", "vertex_claude"):
        assert (sent["tools"], sent["tool_choice"]) == (ANTHROPIC_TOOLS, {"type": "auto"})
    elif kind == "bedrock":
        assert sent["toolConfig"] == BEDROCK_TOOL_CONFIG
    else:
        assert (sent["tools"], sent["toolConfig"]) == (GEMINI_TOOLS, GEMINI_TOOL_CONFIG)


def check_round_trip_sent(kind: str, sent: dict[str, Any], call_id: str) -> None:
    """The call and its result, as the provider's own tool-use and tool-result blocks."""
    if kind in ("openai", "azure"):
        assert sent["messages"] == tool_round_trip(call_id)  # as the client sent them
    elif kind in ("anthropic", "vertex_claude"):
        assert sent["messages"] == ANTHROPIC_ROUND_TRIP
    elif kind == "bedrock":
        assert sent["messages"] == BEDROCK_ROUND_TRIP
    else:
        assert sent["contents"] == GEMINI_ROUND_TRIP


CALL_IDS = {
    "openai": OPENAI_CALL_ID,
    "azure": OPENAI_CALL_ID,
    "anthropic": ANTHROPIC_CALL_ID,
    "vertex_claude": ANTHROPIC_CALL_ID,
    "bedrock": BEDROCK_CALL_ID,
}


def merge_stream(text: str) -> tuple[str, list[dict[str, Any]], str | None]:
    """Text, tool calls (pieces joined by index, as OpenAI's clients do) and finish reason."""
    data = [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]", text
    content, calls, finish = "", {}, None
    for event in map(orjson.loads, data[:-1]):
        assert event["object"] == "chat.completion.chunk" and event["model"] == "duo_chat"
        for choice in event["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            for piece in delta.get("tool_calls", ()):
                call = calls.setdefault(piece["index"], {"arguments": ""})
                if "id" in piece:
                    assert piece["type"] == "function"
                    call["id"] = piece["id"]
                if "name" in piece["function"]:
                    call["name"] = piece["function"]["name"]
                call["arguments"] += piece["function"].get("arguments", "")
            finish = choice["finish_reason"] or finish
    return content, [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", KINDS)
async def test_tool_call_round_trip(
    kind: str, stream: bool, make_openai: OpenAIFactory, fake: FakeProvider
) -> None:
    oai = await routed(make_openai, fake, kind)
    fake.script(tool_reply(kind, stream))
    question = [{"role": "user", "content": TOOL_QUESTION}]
    body = {"messages": question, "tools": OPENAI_TOOLS, "tool_choice": "auto", "stream": stream}
    response = await oai.post("/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    if stream:
        _, calls, finish = merge_stream(response.text)
    else:
        [choice] = response.json()["choices"]
        finish = choice["finish_reason"]
        assert choice["message"]["role"] == "assistant"
        calls = [
            {"id": c["id"], **c["function"]}
            for c in choice["message"]["tool_calls"]
            if c["type"] == "function"
        ]
    assert finish == "tool_calls"
    [call] = calls
    assert call["name"] == TOOL_NAME
    assert orjson.loads(call["arguments"]) == TOOL_ARGUMENTS
    assert call["id"] == CALL_IDS.get(kind, call["id"]) and call["id"]
    check_tools_sent(kind, fake.seen[-1].json)

    # The client runs the function and sends its result back; the model answers in text.
    fake.script(success(kind, stream=False))
    body = {"messages": tool_round_trip(call["id"]), "tools": OPENAI_TOOLS, "tool_choice": "auto"}
    response = await oai.post("/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    [choice] = response.json()["choices"]
    assert (choice["message"]["content"], choice["finish_reason"]) == (ANSWER, "stop")
    assert "tool_calls" not in choice["message"]
    check_round_trip_sent(kind, fake.seen[-1].json, call["id"])


@pytest.mark.parametrize(
    ("choice", "anthropic", "bedrock", "gemini"),
    [
        ("required", {"type": "any"}, {"any": {}}, {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": TOOL_NAME}},
            {"type": "tool", "name": TOOL_NAME},
            {"tool": {"name": TOOL_NAME}},
            {"mode": "ANY", "allowedFunctionNames": [TOOL_NAME]},
        ),
        ("none", {"type": "none"}, None, {"mode": "NONE"}),
    ],
)
async def test_tool_choice_maps_to_each_provider(
    choice: Any,
    anthropic: Any,
    bedrock: Any,
    gemini: Any,
    make_openai: OpenAIFactory,
    fake: FakeProvider,
) -> None:
    body = {
        "messages": [{"role": "user", "content": TOOL_QUESTION}],
        "tools": OPENAI_TOOLS,
        "tool_choice": choice,
    }
    for kind in ("anthropic", "bedrock", "vertex_gemini"):
        oai = await routed(make_openai, fake, kind)
        fake.script(success(kind, stream=False))
        response = await oai.post("/v1/chat/completions", body)
        assert response.status_code == 200, response.text
        sent = fake.seen[-1].json
        if kind == "anthropic":
            assert sent["tool_choice"] == anthropic
        elif kind == "bedrock":
            # Converse has no "none": the tools are left out (no tool blocks in the chat).
            assert sent.get("toolConfig", {}).get("toolChoice") == bedrock
            assert ("toolConfig" in sent) == (bedrock is not None)
        else:
            assert sent["toolConfig"]["functionCallingConfig"] == gemini


async def test_parallel_tool_calls_off_reaches_anthropic(
    make_openai: OpenAIFactory, fake: FakeProvider
) -> None:
    oai = await routed(make_openai, fake, "anthropic")
    fake.script(success("anthropic", stream=False))
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": OPENAI_TOOLS}
    response = await oai.post("/v1/chat/completions", {**body, "parallel_tool_calls": False})
    assert response.status_code == 200, response.text
    assert fake.seen[-1].json["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


async def test_strict_schemas_fit_gemini(make_openai: OpenAIFactory, fake: FakeProvider) -> None:
    # OpenAI clients in strict mode send additionalProperties (and some $schema), which
    # Vertex AI's Schema refuses; a property may still be called so.
    parameters = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "additionalProperties": {"type": "string"},
            "days": {"type": "array", "items": {"type": "object", "additionalProperties": False}},
        },
        "required": ["additionalProperties"],
        "additionalProperties": False,
    }
    tools = [{"type": "function", "function": {"name": TOOL_NAME, "parameters": parameters}}]
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": tools}
    oai = await routed(make_openai, fake, "vertex_gemini")
    fake.script(success("vertex_gemini", stream=False))
    assert (await oai.post("/v1/chat/completions", body)).status_code == 200
    [declaration] = fake.seen[-1].json["tools"][0]["functionDeclarations"]
    assert declaration["parameters"] == {
        "type": "object",
        "properties": {
            "additionalProperties": {"type": "string"},
            "days": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["additionalProperties"],
    }
    oai = await routed(make_openai, fake, "anthropic")  # Claude takes JSON Schema as is
    fake.script(success("anthropic", stream=False))
    assert (await oai.post("/v1/chat/completions", body)).status_code == 200
    assert fake.seen[-1].json["tools"][0]["input_schema"] == parameters


async def test_text_answers_have_no_tool_calls(
    make_openai: OpenAIFactory, fake: FakeProvider
) -> None:
    oai = await routed(make_openai, fake, "vertex_gemini")
    fake.script(success("vertex_gemini", stream=True))
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": OPENAI_TOOLS, "stream": True}
    response = await oai.post("/v1/chat/completions", body)
    content, calls, finish = merge_stream(response.text)
    assert (content, calls, finish) == (ANSWER, [], "stop")


# -- checks -----------------------------------------------------------------------------------


def tool(**function: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": TOOL_NAME, **function}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": "get_weather"}, "tools"),
        ({"tools": []}, "tools"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": [tool(name="get weather!")]}, "tools[0].function.name"),
        ({"tools": [tool(name="x" * 65)]}, "tools[0].function.name"),
        ({"tools": [tool(description=7)]}, "tools[0].function.description"),
        ({"tools": [tool(parameters={"type": "string"})]}, "tools[0].function.parameters"),
        ({"tools": [tool(parameters=[1])]}, "tools[0].function.parameters"),
        (
            {"tools": [tool(parameters={"type": "object", "properties": []})]},
            "tools[0].function.parameters",
        ),
        ({"tools": [tool(), tool()]}, "tools[1].function.name"),
        ({"tools": [tool()] * 129}, "tools"),
        ({"tools": [tool(description="x" * 5000)]}, "tools[0].function.description"),
        ({"tools": [tool(parameters={"type": "object", "x": "y" * 70_000})]}, "tools[0]"),
        ({"tools": [tool()], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tools": [tool()], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [tool()], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)
async def test_bad_tool_definitions_are_precise_400s(
    oai: OpenAIHarness, fields: dict[str, Any], param: str
) -> None:
    response = await oai.chat(**fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_tools",
        param,
    )
    assert oai.model.requests == []


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (
            [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}],
            "messages[0].tool_calls[0]",
        ),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "["}}
                    ],
                }
            ],
            "messages[0].tool_calls[0].function.arguments",
        ),
        ([{"role": "tool", "content": "18"}], "messages[0].tool_call_id"),
    ],
)
async def test_bad_tool_messages_are_400_for_translated_providers(
    make_openai: OpenAIFactory, fake: FakeProvider, messages: list[Any], param: str
) -> None:
    oai = await routed(make_openai, fake, "anthropic")
    response = await oai.post("/v1/chat/completions", {"messages": messages})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert fake.seen == []


async def test_deprecated_functions_are_refused_where_translated(
    make_openai: OpenAIFactory, fake: FakeProvider
) -> None:
    oai = await routed(make_openai, fake, "bedrock")
    functions = [{"name": TOOL_NAME, "parameters": {"type": "object"}}]
    response = await oai.chat(functions=functions)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "functions"


# -- the real openai client -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["anthropic", "bedrock", "vertex_gemini", "openai"])
async def test_the_openai_client_calls_a_tool_through_the_gateway(
    kind: str, make_openai: OpenAIFactory, fake: FakeProvider
) -> None:
    oai = await routed(make_openai, fake, kind)
    transport = httpx.ASGITransport(app=oai.h.app)
    async with httpx.AsyncClient(transport=transport) as http:
        client = openai.AsyncOpenAI(
            base_url="http://gw/v1", api_key=oai.token(), http_client=http, max_retries=0
        )
        question: list[Any] = [{"role": "user", "content": TOOL_QUESTION}]
        fake.script(tool_reply(kind, stream=False))
        completion = await client.chat.completions.create(
            model="duo_chat",
            messages=question,
            tools=OPENAI_TOOLS,  # type: ignore[arg-type]
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls or []
        assert call.function.name == TOOL_NAME  # type: ignore[union-attr]
        assert orjson.loads(call.function.arguments) == TOOL_ARGUMENTS  # type: ignore[union-attr]

        # Streamed: the client's own stream helper assembles the pieces.
        fake.script(tool_reply(kind, stream=True))
        pieces: dict[int, dict[str, str]] = {}
        finish = None
        stream = await client.chat.completions.create(
            model="duo_chat",
            messages=question,
            tools=OPENAI_TOOLS,  # type: ignore[arg-type]
            stream=True,
        )
        async for chunk in stream:
            for streamed in chunk.choices:
                finish = streamed.finish_reason or finish
                for piece in streamed.delta.tool_calls or []:
                    entry = pieces.setdefault(piece.index, {"name": "", "arguments": ""})
                    if piece.function and piece.function.name:
                        entry["name"] = piece.function.name
                    if piece.function and piece.function.arguments:
                        entry["arguments"] += piece.function.arguments
        assert finish == "tool_calls"
        assert pieces[0]["name"] == TOOL_NAME
        assert orjson.loads(pieces[0]["arguments"]) == TOOL_ARGUMENTS

        # The result goes back; the model answers in text.
        fake.script(success(kind if kind != "openai" else "azure", stream=False))
        answer = await client.chat.completions.create(
            model="duo_chat",
            messages=[
                *question,
                choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
                {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18}'},
            ],
            tools=OPENAI_TOOLS,  # type: ignore[arg-type]
        )
        assert answer.choices[0].message.content == ANSWER
        assert answer.model == "duo_chat"
