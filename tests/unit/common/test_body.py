"""read_body: the server's messages read directly give what Starlette's stream gave."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from enclave.common.body import BodyTooLarge, _read_stream, declared_length, read_body


def _request(
    messages: list[Message], headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[Request, list[Message]]:
    """A request whose receive() hands out ``messages`` in order; the second item lists
    the messages left unread."""
    left = list(messages)

    async def receive() -> Message:
        return left.pop(0)

    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/"}
    scope["headers"] = headers or []
    return Request(scope, receive), left


def _pieces(chunks: list[bytes]) -> list[Message]:
    return [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]


async def _outcome(read: Any, chunks: list[bytes], limit: int) -> tuple[str, bytes | int]:
    request, left = _request(_pieces(chunks))
    try:
        body = await read(request, limit)
    except BodyTooLarge as exc:
        return "too large", exc.limit
    return "read", body + bytes([len(left)])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=8), st.integers(0, 200))
def test_same_body_or_refusal_as_starlettes_stream(chunks: list[bytes], limit: int) -> None:
    new = asyncio.run(_outcome(read_body, chunks, limit))
    old = asyncio.run(_outcome(_read_stream, chunks, limit))
    assert new == old


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    request, left = _request(_pieces([b"x" * 10]), [(b"content-length", b"10")])
    with pytest.raises(BodyTooLarge):
        asyncio.run(read_body(request, 9))
    assert len(left) == 1
    request, left = _request(_pieces([b"x" * 10]), [(b"content-length", b"10")])
    assert asyncio.run(read_body(request, 10)) == b"x" * 10


def test_declared_length_is_the_first_plain_decimal_value() -> None:
    def scope(*values: bytes) -> dict[str, Any]:
        return {"headers": [(b"host", b"h")] + [(b"content-length", v) for v in values]}

    assert declared_length(scope(b"12", b"99")) == 12
    assert declared_length({"headers": [(b"host", b"h")]}) is None
    assert declared_length(scope(b"-1")) is None
    assert declared_length(scope(b"1 2")) is None
    assert declared_length(scope("\N{SUPERSCRIPT TWO}".encode("latin-1"))) is None
    assert declared_length(scope(b"0")) == 0


def test_the_stream_is_consumed_after_reading_as_with_starlettes_stream() -> None:
    request, _ = _request(_pieces([b"ab", b"cd"]))
    assert asyncio.run(read_body(request, 100)) == b"abcd"
    with pytest.raises(RuntimeError, match="Stream consumed"):
        asyncio.run(request.body())


def test_a_body_a_caller_cached_is_read_from_the_cache() -> None:
    request, left = _request(_pieces([b"cached"]))
    assert asyncio.run(request.body()) == b"cached"
    assert asyncio.run(read_body(request, 100)) == b"cached"
    with pytest.raises(BodyTooLarge):
        asyncio.run(read_body(request, 5))
    assert left == []


def test_a_disconnect_while_reading_is_a_client_disconnect() -> None:
    request, _ = _request(
        [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"}]
    )
    with pytest.raises(ClientDisconnect):
        asyncio.run(read_body(request, 100))
    assert asyncio.run(request.is_disconnected())
