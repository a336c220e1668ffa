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
