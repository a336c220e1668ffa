"""A fake model provider on loopback that replays scripted answers and records every request.

One aiohttp server for every provider: the wire fixtures (:mod:`wire_fixtures`) say what to
answer; faults (refused, stalled, 429/500 then success, garbage, cut mid-stream) are replies too.
(A plain module, not conftest, so test modules can import it.)
"""

from __future__ import annotations

import asyncio
import binascii
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] | None = None  # streamed: each written (and flushed) on its own
    stall: bool = False  # never answers (until the server stops)
    cut: bool = False  # closes the connection after the chunks, mid-answer
    drop: bool = False  # closes the connection before any status line (a dropped keep-alive)


def json_reply(data: Any, status: int = 200, **headers: str) -> Reply:
    return Reply(status=status, body=orjson.dumps(data), headers=dict(headers))


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    raw_path: str = ""  # as on the wire, percent-encoding kept

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


class FakeProvider:
    """Answers every path with the next scripted reply (the last one repeats)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl = ssl_context  # serve HTTPS with it
        self.replies: list[Reply] = [Reply()]
        # Answers by the request instead of the script when set (end-to-end tests, where the
        # order of calls is the stack's business).
        self.responder: Callable[[Seen], Reply] | None = None
        self.token_replies: list[Reply] = []  # POST /token (Vertex service-account exchange)
        self.seen: list[Seen] = []
        self.token_requests: list[Seen] = []
        self.base = ""
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()

    def script(self, *replies: Reply) -> None:
        self.replies = list(replies)

    @staticmethod
    def _next(replies: list[Reply]) -> Reply:
        return replies.pop(0) if len(replies) > 1 else replies[0]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Seen(
            request.method,
            request.path,
            request.query_string,
            dict(request.headers),
            body,
            request.raw_path,
        )
        if request.path == "/token" and self.token_replies:
            self.token_requests.append(seen)
            reply = self._next(self.token_replies)
        else:
            self.seen.append(seen)
            reply = self.responder(seen) if self.responder else self._next(self.replies)
        if reply.drop:
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        if reply.stall:
            await self._release.wait()
            return web.Response(status=503)
        headers = {"Content-Type": reply.content_type, **reply.headers}
        if reply.chunks is None:
            return web.Response(status=reply.status, body=reply.body, headers=headers)
        response = web.StreamResponse(status=reply.status, headers=headers)
        await response.prepare(request)
        for chunk in reply.chunks:
            await response.write(chunk)
            await asyncio.sleep(0)
        if reply.cut:
            assert request.transport is not None
            request.transport.close()  # no terminating chunk: the answer is cut short
            raise asyncio.CancelledError
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        scheme = "https" if self._ssl else "http"
        self.base = f"{scheme}://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


# -- AWS event stream (Amazon Bedrock) --------------------------------------------------------
# Framing per the AWS docs "Event stream encoding" (used by Bedrock's ConverseStream): prelude
# (total length, headers length, CRC32 of both), headers (name length, name, type 7 = string,
# value length, value), payload, CRC32 of everything before it.


def _header(name: str, value: str) -> bytes:
    encoded_name, encoded_value = name.encode(), value.encode()
    return (
        bytes([len(encoded_name)])
        + encoded_name
        + b"\x07"
        + struct.pack(">H", len(encoded_value))
        + encoded_value
    )


def event_frame(headers: dict[str, str], payload: bytes) -> bytes:
    encoded = b"".join(_header(name, value) for name, value in headers.items())
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack(">I", binascii.crc32(message))


def bedrock_event(event_type: str, data: dict[str, Any]) -> bytes:
    return event_frame(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
        },
        orjson.dumps(data),
    )


def bedrock_exception(exception_type: str, message: str) -> bytes:
    return event_frame(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        orjson.dumps({"message": message}),
    )
