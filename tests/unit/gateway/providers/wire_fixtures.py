"""Wire fixtures per provider: the request the gateway must send, and what each API answers.

Every answer is copied in shape (field names, nesting, event types and order) from the
provider's own API reference, named in each section's SOURCE; only ids and texts are ours.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from provider_fakes import Reply, bedrock_event, json_reply

SYSTEM: Final = "You are a careful coder."
QUESTION: Final = "Write add(a, b) in Python."
STOP: Final = ["</code>", "\n\n\n"]
VISIBLE_STOP: Final = ["</code>"]  # Claude refuses whitespace-only stop sequences
ANSWER_PARTS: Final = ["def add(a, b):", "\n    return", " a + b\n"]
ANSWER: Final = "".join(ANSWER_PARTS)


def sse(*events: tuple[str | None, Any], crlf: bool = False) -> list[bytes]:
    """Server-sent events, one chunk each (``event:`` line when a name is given)."""
    end = b"\r\n" if crlf else b"\n"
    chunks = []
    for name, data in events:
        text = data if isinstance(data, bytes) else orjson.dumps(data)
        head = f"event: {name}".encode() + end if name else b""
        chunks.append(head + b"data: " + text + end + end)
    return chunks


# -- Anthropic ---------------------------------------------------------------------------------
# SOURCE: Anthropic API reference, "Messages" (POST /v1/messages: request, response) and
# "Streaming Messages" (event flow message_start … message_stop, ping, text_delta).

ANTHROPIC_MODEL: Final = "claude-3-5-sonnet-20241022"
ANTHROPIC_BODY: Final = {
    "model": ANTHROPIC_MODEL,
    "max_tokens": 64,
    "system": SYSTEM,
    "messages": [{"role": "user", "content": QUESTION}],
    "stop_sequences": VISIBLE_STOP,
    "temperature": 0.2,
}
ANTHROPIC_MESSAGE: Final = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "text", "text": ANSWER}],
    "model": ANTHROPIC_MODEL,
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 25, "output_tokens": 12},
}


def anthropic_stream(stop_reason: str = "end_turn") -> list[bytes]:
    deltas = [
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
        )
        for t in ANSWER_PARTS
    ]
    return sse(
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": ANTHROPIC_MODEL,
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 25, "output_tokens": 1},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
        *deltas,
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": 12},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    )


ANTHROPIC_STREAM_ERROR: Final = sse(
    ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
)

# -- Azure OpenAI -----------------------------------------------------------------------------
# SOURCE: Azure OpenAI REST API reference (data plane inference), "Chat Completions - Create":
# POST {endpoint}/openai/deployments/{deployment-id}/chat/completions?api-version=2024-10-21,
# header api-key; the answer and the stream chunks are OpenAI's, plus prompt_filter_results
# (the stream's first chunk has no choices).

AZURE_DEPLOYMENT: Final = "gpt-4o-prod"
AZURE_BODY: Final = {
    "max_tokens": 64,
    "n": 1,
    "stream": False,
    "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
    "temperature": 0.2,
    "stop": STOP,
}
AZURE_COMPLETION: Final = {
    "id": "chatcmpl-AAbBcC",
    "object": "chat.completion",
    "created": 1727000000,
    "model": "gpt-4o-2024-08-06",
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": ANSWER},
            "content_filter_results": {},
        }
    ],
    "usage": {"prompt_tokens": 25, "completion_tokens": 12, "total_tokens": 37},
}


def azure_stream() -> list[bytes]:
    def chunk(choices: list[Any], **extra: Any) -> dict[str, Any]:
        return {
            "id": "chatcmpl-AAbBcC",
            "object": "chat.completion.chunk",
            "choices": choices,
            **extra,
        }

    return sse(
        (None, chunk([], prompt_filter_results=[{"prompt_index": 0}])),
        *[
            (None, chunk([{"index": 0, "delta": {"content": t}, "finish_reason": None}]))
            for t in ANSWER_PARTS
        ],
        (None, chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])),
        (None, chunk([], usage={"prompt_tokens": 25, "completion_tokens": 12})),
        (None, b"[DONE]"),
    )


# -- Amazon Bedrock ---------------------------------------------------------------------------
# SOURCE: Amazon Bedrock API Reference, "Converse" and "ConverseStream" (Amazon Bedrock
# Runtime): POST /model/{modelId}/converse[-stream]; SigV4 (service "bedrock"); the stream is
# application/vnd.amazon.eventstream with messageStart, contentBlockDelta, contentBlockStop,
# messageStop and metadata events (Bedrock pads event payloads with a "p" field).

BEDROCK_MODEL: Final = "anthropic.claude-3-5-sonnet-20240620-v1:0"
BEDROCK_PATH: Final = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
BEDROCK_BODY: Final = {
    "messages": [{"role": "user", "content": [{"text": QUESTION}]}],
    "system": [{"text": SYSTEM}],
    "inferenceConfig": {"maxTokens": 64, "temperature": 0.2, "stopSequences": VISIBLE_STOP},
}
BEDROCK_ANSWER: Final = {
    "output": {"message": {"role": "assistant", "content": [{"text": ANSWER}]}},
    "stopReason": "end_turn",
    "usage": {"inputTokens": 25, "outputTokens": 12, "totalTokens": 37},
    "metrics": {"latencyMs": 420},
}


def bedrock_stream(stop_reason: str = "end_turn") -> list[bytes]:
    return [
        bedrock_event("messageStart", {"p": "abcdefghijk", "role": "assistant"}),
        *[
            bedrock_event(
                "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": t}, "p": "ab"}
            )
            for t in ANSWER_PARTS
        ],
        bedrock_event("contentBlockStop", {"contentBlockIndex": 0, "p": "abcd"}),
        bedrock_event("messageStop", {"p": "abcdefgh", "stopReason": stop_reason}),
        bedrock_event(
            "metadata",
            {
                "metrics": {"latencyMs": 420},
                "p": "abc",
                "usage": {"inputTokens": 25, "outputTokens": 12, "totalTokens": 37},
            },
        ),
    ]


def bedrock_reply(stream: bool) -> Reply:
    if stream:
        return Reply(content_type="application/vnd.amazon.eventstream", chunks=bedrock_stream())
    return json_reply(BEDROCK_ANSWER)


# -- Google Vertex AI --------------------------------------------------------------------------
# SOURCE: Vertex AI REST reference, "projects.locations.publishers.models.generateContent" and
# "streamGenerateContent" (?alt=sse: one GenerateContentResponse per event, CRLF framed),
# "Use Anthropic's Claude models" (rawPredict / streamRawPredict with anthropic_version
# vertex-2023-10-16) and Google's OAuth 2.0 for server-to-server applications (JWT bearer grant).

VERTEX_PROJECT: Final = "proj-1"
VERTEX_LOCATION: Final = "us-east5"
GEMINI_MODEL: Final = "gemini-1.5-pro-002"
VERTEX_CLAUDE_MODEL: Final = "claude-3-5-sonnet-v2@20241022"
ACCESS_TOKEN: Final = "ya29.c.test-access-token"
GEMINI_BODY: Final = {
    "contents": [{"role": "user", "parts": [{"text": QUESTION}]}],
    "systemInstruction": {"parts": [{"text": SYSTEM}]},
    "generationConfig": {"maxOutputTokens": 64, "temperature": 0.2, "stopSequences": STOP},
}
GEMINI_ANSWER: Final = {
    "candidates": [
        {
            "content": {"role": "model", "parts": [{"text": ANSWER}]},
            "finishReason": "STOP",
            "avgLogprobs": -0.1,
        }
    ],
    "usageMetadata": {"promptTokenCount": 25, "candidatesTokenCount": 12, "totalTokenCount": 37},
    "modelVersion": GEMINI_MODEL,
}


def gemini_stream() -> list[bytes]:
    events: list[tuple[str | None, Any]] = [
        (
            None,
            {
                "candidates": [{"content": {"role": "model", "parts": [{"text": t}]}}],
                "modelVersion": GEMINI_MODEL,
            },
        )
        for t in ANSWER_PARTS[:-1]
    ]
    events.append(
        (
            None,
            {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": ANSWER_PARTS[-1]}]},
                        "finishReason": "STOP",
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": 25,
                    "candidatesTokenCount": 12,
                    "totalTokenCount": 37,
                },
                "modelVersion": GEMINI_MODEL,
            },
        )
    )
    return sse(*events, crlf=True)


TOKEN_ANSWER: Final = {"access_token": ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"}


# -- Tool calls: one round trip per provider ----------------------------------------------------
# The client (OpenAI's API) offers one function; the model calls it (whole and streamed); the
# client sends the call and its result back and the model answers in text (the ANSWER fixtures
# above). Each provider's request and answer shapes come from its API reference, as named.

TOOL_QUESTION: Final = "What is the weather in Paris?"
TOOL_NAME: Final = "get_weather"
TOOL_DESCRIPTION: Final = "The current weather in a city"
TOOL_PARAMETERS: Final = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "The city name"}},
    "required": ["city"],
}
TOOL_ARGUMENTS: Final = {"city": "Paris"}
TOOL_RESULT: Final = '{"temp_c": 18, "sky": "clear"}'
# What the client sends (OpenAI API reference, "Chat Completions": tools, tool_choice).
OPENAI_TOOLS: Final = [
    {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": TOOL_DESCRIPTION,
            "parameters": TOOL_PARAMETERS,
        },
    }
]


def tool_round_trip(call_id: str) -> list[dict[str, Any]]:
    """The client's messages after the call ``call_id`` ran: question, call, result."""
    return [
        {"role": "user", "content": TOOL_QUESTION},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": TOOL_NAME, "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": TOOL_RESULT},
    ]


# OpenAI (and Azure OpenAI, whose answers are OpenAI's)
# SOURCE: OpenAI API reference, "Chat Completions" — the chat completion object with
# message.tool_calls[{id, type: function, function{name, arguments}}] and finish_reason
# "tool_calls"; "The chat completion chunk object" — delta.tool_calls[{index, id, type,
# function{name, arguments}}] first, then argument fragments by index.

OPENAI_CALL_ID: Final = "call_abc123"
OPENAI_TOOL_ANSWER: Final = {
    "id": "chatcmpl-9tool",
    "object": "chat.completion",
    "created": 1727000000,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": OPENAI_CALL_ID,
                        "type": "function",
                        "function": {"name": TOOL_NAME, "arguments": '{"city":"Paris"}'},
                    }
                ],
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 82, "completion_tokens": 17, "total_tokens": 99},
}


def openai_tool_stream() -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-9tool",
            "object": "chat.completion.chunk",
            "created": 1727000000,
            "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    first = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "index": 0,
                "id": OPENAI_CALL_ID,
                "type": "function",
                "function": {"name": TOOL_NAME, "arguments": ""},
            }
        ],
    }
    pieces = ['{"', 'city":"', "Paris", '"}']
    return sse(
        (None, chunk(first)),
        *[
            (None, chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
            for piece in pieces
        ],
        (None, chunk({}, "tool_calls")),
        (
            None,
            {
                "id": "chatcmpl-9tool",
                "object": "chat.completion.chunk",
                "choices": [],
                "usage": {"prompt_tokens": 82, "completion_tokens": 17, "total_tokens": 99},
            },
        ),
        (None, b"[DONE]"),
    )


# Anthropic (and Claude on Vertex AI)
# SOURCE: Anthropic API reference, "Messages" (tools[{name, description, input_schema}],
# tool_choice{type}, tool_use / tool_result content blocks, stop_reason "tool_use") and the
# "Tool use" guide; "Streaming Messages" — a tool_use content_block_start (input {}) followed by
# input_json_delta events whose partial_json pieces make the input, the first one empty.

ANTHROPIC_CALL_ID: Final = "toolu_01A09q90qw90lq917835lq9"
ANTHROPIC_TOOLS: Final = [
    {"name": TOOL_NAME, "input_schema": TOOL_PARAMETERS, "description": TOOL_DESCRIPTION}
]
ANTHROPIC_TOOL_MESSAGE: Final = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "role": "assistant",
    "model": ANTHROPIC_MODEL,
    "content": [
        {"type": "text", "text": "I'll check the weather in Paris."},
        {"type": "tool_use", "id": ANTHROPIC_CALL_ID, "name": TOOL_NAME, "input": TOOL_ARGUMENTS},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 384, "output_tokens": 68},
}
ANTHROPIC_ROUND_TRIP: Final = [
    {"role": "user", "content": TOOL_QUESTION},
    {
        "role": "assistant",
        "content": [
            {
                "type": "tool_use",
                "id": ANTHROPIC_CALL_ID,
                "name": TOOL_NAME,
                "input": TOOL_ARGUMENTS,
            }
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": ANTHROPIC_CALL_ID, "content": TOOL_RESULT}
        ],
    },
]


def anthropic_tool_stream() -> list[bytes]:
    def delta(index: int, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return (
            "content_block_delta",
            {"type": "content_block_delta", "index": index, "delta": body},
        )

    return sse(
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
                    "type": "message",
                    "role": "assistant",
                    "model": ANTHROPIC_MODEL,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 472, "output_tokens": 2},
                    "content": [],
                    "stop_reason": None,
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
        delta(0, {"type": "text_delta", "text": "I'll check the weather in Paris."}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {
                    "type": "tool_use",
                    "id": ANTHROPIC_CALL_ID,
                    "name": TOOL_NAME,
                    "input": {},
                },
            },
        ),
        delta(1, {"type": "input_json_delta", "partial_json": ""}),
        delta(1, {"type": "input_json_delta", "partial_json": '{"city": '}),
        delta(1, {"type": "input_json_delta", "partial_json": '"Paris"}'}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 89},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    )


# Amazon Bedrock
# SOURCE: Amazon Bedrock API Reference, "Converse" (toolConfig{tools[{toolSpec{name,
# description, inputSchema{json}}}], toolChoice{auto|any|tool}}; ToolUseBlock{toolUseId, name,
# input}; ToolResultBlock{toolUseId, content[{text}]}; stopReason "tool_use") and
# "ConverseStream" (ContentBlockStartEvent start.toolUse{toolUseId, name};
# ContentBlockDeltaEvent delta.toolUse.input: a string piece of the input JSON).

BEDROCK_CALL_ID: Final = "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"
BEDROCK_TOOL_CONFIG: Final = {
    "tools": [
        {
            "toolSpec": {
                "name": TOOL_NAME,
                "inputSchema": {"json": TOOL_PARAMETERS},
                "description": TOOL_DESCRIPTION,
            }
        }
    ],
    "toolChoice": {"auto": {}},
}
BEDROCK_TOOL_ANSWER: Final = {
    "output": {
        "message": {
            "role": "assistant",
            "content": [
                {
                    "toolUse": {
                        "toolUseId": BEDROCK_CALL_ID,
                        "name": TOOL_NAME,
                        "input": TOOL_ARGUMENTS,
                    }
                }
            ],
        }
    },
    "stopReason": "tool_use",
    "usage": {"inputTokens": 382, "outputTokens": 54, "totalTokens": 436},
    "metrics": {"latencyMs": 1210},
}
BEDROCK_ROUND_TRIP: Final = [
    {"role": "user", "content": [{"text": TOOL_QUESTION}]},
    {
        "role": "assistant",
        "content": [
            {"toolUse": {"toolUseId": BEDROCK_CALL_ID, "name": TOOL_NAME, "input": TOOL_ARGUMENTS}}
        ],
    },
    {
        "role": "user",
        "content": [
            {"toolResult": {"toolUseId": BEDROCK_CALL_ID, "content": [{"text": TOOL_RESULT}]}}
        ],
    },
]


def bedrock_tool_stream() -> list[bytes]:
    return [
        bedrock_event("messageStart", {"p": "abcdefghijk", "role": "assistant"}),
        bedrock_event(
            "contentBlockStart",
            {
                "contentBlockIndex": 0,
                "p": "abcd",
                "start": {"toolUse": {"toolUseId": BEDROCK_CALL_ID, "name": TOOL_NAME}},
            },
        ),
        *[
            bedrock_event(
                "contentBlockDelta",
                {"contentBlockIndex": 0, "delta": {"toolUse": {"input": piece}}, "p": "ab"},
            )
            for piece in ('{"city": ', '"Paris"}')
        ],
        bedrock_event("contentBlockStop", {"contentBlockIndex": 0, "p": "abcd"}),
        bedrock_event("messageStop", {"p": "abcdefgh", "stopReason": "tool_use"}),
        bedrock_event(
            "metadata",
            {
                "metrics": {"latencyMs": 1210},
                "p": "abc",
                "usage": {"inputTokens": 382, "outputTokens": 54, "totalTokens": 436},
            },
        ),
    ]


# Google Vertex AI (Gemini)
# SOURCE: Vertex AI REST reference, "Function calling reference" and
# "projects.locations.publishers.models.generateContent": tools[{functionDeclarations[{name,
# description, parameters}]}], toolConfig.functionCallingConfig{mode, allowedFunctionNames};
# the answer's parts hold whole functionCall{name, args} (streamGenerateContent sends them
# whole in one event), finishReason "STOP"; the result goes back as a user turn's
# functionResponse{name, response}.

GEMINI_TOOLS: Final = [
    {
        "functionDeclarations": [
            {"name": TOOL_NAME, "parameters": TOOL_PARAMETERS, "description": TOOL_DESCRIPTION}
        ]
    }
]
GEMINI_TOOL_CONFIG: Final = {"functionCallingConfig": {"mode": "AUTO"}}
GEMINI_TOOL_ANSWER: Final = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [{"functionCall": {"name": TOOL_NAME, "args": TOOL_ARGUMENTS}}],
            },
            "finishReason": "STOP",
            "avgLogprobs": -0.0007,
        }
    ],
    "usageMetadata": {"promptTokenCount": 36, "candidatesTokenCount": 7, "totalTokenCount": 43},
    "modelVersion": GEMINI_MODEL,
}
GEMINI_ROUND_TRIP: Final = [
    {"role": "user", "parts": [{"text": TOOL_QUESTION}]},
    {"role": "model", "parts": [{"functionCall": {"name": TOOL_NAME, "args": TOOL_ARGUMENTS}}]},
    {
        "role": "user",
        "parts": [
            {
                "functionResponse": {
                    "name": TOOL_NAME,
                    "response": {"temp_c": 18, "sky": "clear"},
                }
            }
        ],
    },
]


def gemini_tool_stream() -> list[bytes]:
    return sse((None, GEMINI_TOOL_ANSWER), crlf=True)
