"""Hypothesis on the model-stream parsers with hostile input: no crash, no hang, every error
a :class:`ModelError` with a message.

Every provider's stream goes through :class:`ProviderStream` exactly as in the gateway, over a
real :class:`~enclave.common.http1.Body` (the model-call client's body reader, its line
limit included), fed with the provider's recorded
stream (tests/unit/gateway/providers/wire_fixtures.py) cut, spliced and corrupted, or with
arbitrary frames. Also the error-body reader every provider shares.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Final

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave.common.http1 import MAX_LINE_BYTES, Body
from enclave.gateway.models.base import ModelBadResponse, ModelError, Tool
from enclave.gateway.models.http_provider import ProviderStream, upstream_error_message
from tests.fuzz.fuzz_settings import FUZZ, HANG_S
from tests.fuzz.summary import count_example

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "gateway" / "providers"))

from provider_setup import KINDS, Setup, setup
from wire_fixtures import (
    anthropic_stream,
    anthropic_tool_stream,
    azure_stream,
    bedrock_stream,
    bedrock_tool_stream,
    gemini_stream,
    gemini_tool_stream,
    openai_tool_stream,
)

RECORDED: Final[dict[str, Callable[[], list[bytes]]]] = {
    "openai": lambda: [*azure_stream(), *openai_tool_stream()],
    "azure": azure_stream,
    "anthropic": lambda: [*anthropic_stream(), *anthropic_tool_stream()],
    "bedrock": lambda: [*bedrock_stream(), *bedrock_tool_stream()],
    "vertex_gemini": lambda: [*gemini_stream(), *gemini_tool_stream()],
    "vertex_claude": anthropic_stream,
}
CONTENT_TYPES: Final = {"bedrock": "application/vnd.amazon.eventstream"}
READ_LIMIT: Final = MAX_LINE_BYTES  # the longest line the model-call client reads


def provider_setup(kind: str) -> Setup:
    # The parsers never touch the session or the network; the base URL is never called.
    fake = SimpleNamespace(base="http://127.0.0.1:9", token_replies=[])
    return setup(kind, None, fake)  # type: ignore[arg-type]


class FedResponse:
    """What ProviderStream reads of a response, over a real Body (no connection behind it:
    all input is fed up front)."""

    def __init__(self, content: Body, content_type: str) -> None:
        self.content = content
        self.headers = {"Content-Type": content_type}
        self.content_length = None
        self.closed = False

    def release(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True


async def drain(kind: str, chunks: list[bytes], tools: bool) -> list[str]:
    """Run the provider's stream over ``chunks``; the text deltas, or ModelError."""
    loop = asyncio.get_running_loop()
    reader = Body(loop)
    for chunk in chunks:
        reader.feed(chunk)
    reader.feed_eof()
    chosen = provider_setup(kind)
    request = chosen.request("chat")
    if tools:
        request = chosen.request("chat", tools=(Tool("lookup", "find", {"type": "object"}),))
    content_type = CONTENT_TYPES.get(kind, "text/event-stream")
    response = FedResponse(reader, content_type)
    stream = ProviderStream(chosen.client, request, response)  # type: ignore[arg-type]
    texts: list[str] = []
    try:
        async for text in stream:
            assert isinstance(text, str)
            texts.append(text)
    finally:
        await stream.aclose()
    return texts


def run_bounded(kind: str, chunks: list[bytes], tools: bool = False) -> None:
    """Drain the stream; only a ModelError with a message may come out, within HANG_S."""

    async def bounded() -> None:
        await asyncio.wait_for(drain(kind, chunks, tools), HANG_S)

    try:
        asyncio.run(bounded())
    except ModelError as exc:
        assert str(exc).strip(), f"{kind}: a ModelError without a message"
    count_example("stream parsers")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
# Keys the parsers look for, so that hostile events reach deep branches.
known_keys = st.sampled_from(
    [
        "choices",
        "delta",
        "content",
        "text",
        "finish_reason",
        "usage",
        "error",
        "message",
        "type",
        "index",
        "content_block",
        "tool_calls",
        "candidates",
        "parts",
        "functionCall",
        "stop_reason",
        "input_json_delta",
        "partial_json",
        "id",
        "name",
        "arguments",
    ]
)
events = st.recursive(
    json_values,
    lambda inner: st.dictionaries(known_keys, inner, max_size=5) | st.lists(inner, max_size=3),
    max_leaves=20,
)


@st.composite
def sse_frames(draw: st.DrawFn) -> list[bytes]:
    lines: list[bytes] = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["data", "event", "comment", "blank", "raw", "done", "long"]))
        if kind == "data":
            lines.append(b"data: " + orjson.dumps(draw(events)) + b"\n\n")
        elif kind == "event":
            lines.append(b"event: " + draw(st.binary(max_size=20)).replace(b"\n", b"") + b"\n")
        elif kind == "comment":
            lines.append(b": keep-alive\n")
        elif kind == "blank":
            lines.append(b"\r\n")
        elif kind == "done":
            lines.append(b"data: [DONE]\n\n")
        elif kind == "long":
            lines.append(b"data: " + b"x" * draw(st.integers(READ_LIMIT, 3 * READ_LIMIT)) + b"\n")
        else:
            lines.append(draw(st.binary(max_size=200)))
    return lines


@st.composite
def mutated_recording(draw: st.DrawFn, kind: str) -> list[bytes]:
    """The recorded stream, cut short, spliced with garbage, re-chunked anywhere."""
    whole = b"".join(RECORDED[kind]())
    operation = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "rechunk"]))
    data = bytearray(whole)
    if operation == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif operation == "flip":
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
    elif operation == "insert":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    elif operation == "delete":
        at = draw(st.integers(0, len(data) - 1))
        del data[at : at + draw(st.integers(1, 64))]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    return [bytes(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.mark.parametrize("kind", KINDS)
def test_recorded_stream_still_parses(kind: str) -> None:
    # The baseline the mutations start from is a valid stream for each provider.
    texts = asyncio.run(drain(kind, RECORDED[kind](), tools=False))
    assert "".join(texts)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "bedrock"])
def test_a_line_longer_than_the_read_buffer_is_a_bad_response(kind: str) -> None:
    # Found by this fuzzer (with aiohttp's reader then): a line over the reader's limit must
    # end as a bad response, not escape ProviderStream as an unexpected exception.
    line = b"data: " + b"x" * (READ_LIMIT + 1) + b"\n\n"
    with pytest.raises(ModelBadResponse, match="sent an unreadable stream"):
        asyncio.run(drain(kind, [line], tools=False))


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.data())
def test_mutated_recordings(kind: str, data: st.DataObject) -> None:
    run_bounded(kind, data.draw(mutated_recording(kind)), tools=data.draw(st.booleans()))


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "bedrock"])
@FUZZ
@given(frames=sse_frames(), tools=st.booleans())
def test_hostile_sse_frames(kind: str, frames: list[bytes], tools: bool) -> None:
    run_bounded(kind, frames, tools)


@FUZZ
@given(chunks=st.lists(st.binary(max_size=300), max_size=8), tools=st.booleans())
def test_hostile_event_stream_frames(chunks: list[bytes], tools: bool) -> None:
    run_bounded("bedrock", chunks, tools)


@FUZZ
@given(body=st.one_of(st.binary(max_size=400), events.map(orjson.dumps)))
def test_error_bodies_give_a_bounded_line_without_the_key(body: bytes) -> None:
    key = "sk-test-openai-0123456789"
    said = upstream_error_message(body + key.encode(), key)
    assert key not in said
    assert "\n" not in said and len(said) <= 300
    count_example("stream parsers")
