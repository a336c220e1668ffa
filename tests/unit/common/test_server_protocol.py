"""The lean server protocol answers like uvicorn's, byte for byte: a differential suite.

Each test is a small ASGI app plus a *script* that drives one connection of a protocol directly,
without sockets: :class:`FakeTransport` stands in for the socket and records what a client could
observe (the bytes written, where the server closed or shut its writing side, and the
``pause_reading``/``resume_reading`` calls), and the script feeds bytes with ``data_received``,
lets the event loop run, and takes snapshots. :func:`both` runs the same app and script once
against the reference, ``bounded_protocol(limits)`` (uvicorn's ``HttpToolsProtocol`` with our head
limits and coalesced writes), and once against ``lean_protocol(limits)``, and asserts that
everything observed is equal. It returns the reference's observations, on which each test then
checks a few facts, so the suite also says what the reference does. The reference is the
protocol Enclave served with before (``tests/unit/common/uvicorn_reference.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.server import ServerState

from enclave.common import http_limits
from enclave.common.http_limits import HeaderLimits, response_431
from enclave.common.net import free_port
from enclave.common.server_protocol import LeanHttpProtocol, lean_protocol
from tests.unit.common.uvicorn_reference import bounded_protocol

pytestmark = pytest.mark.anyio

LIMITS = HeaderLimits(8192, 100, "detail")
DATE = b"Sat, 05 Dec 2026 08:00:00 GMT"
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]
Factory = Callable[..., asyncio.Protocol]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _lean_factory() -> Factory:
    return lean_protocol(LIMITS)


# --- the fake socket ------------------------------------------------------------------------


class FakeTransport:
    """What the protocol writes to, recorded. Like asyncio's socket transports, ``close()``
    delivers ``connection_lost(None)`` on the next loop turn (what is written before that still
    goes out), writes after ``write_eof()`` raise, and writes after the connection is lost go
    nowhere."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.protocol: asyncio.Protocol | None = None
        self.data = bytearray()
        self.closing = False
        self.lost = False
        self.closed_at: int | None = None  # bytes written when the server closed
        self.eof_at: int | None = None  # bytes written when the server shut its writing side
        self.flow: list[str] = []
        self.reading_paused = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof_at is not None:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not self.lost:
            self.data += data

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def close(self) -> None:
        if self.closing or self.lost:
            return  # a close after the client hung up is not observable
        self.closing = True
        self.closed_at = len(self.data)
        self.loop.call_soon(self._deliver_lost)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def _deliver_lost(self) -> None:
        if not self.lost and self.protocol is not None:
            self.lost = True
            self.protocol.connection_lost(None)

    def is_closing(self) -> bool:
        return self.closing or self.lost

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {
            "sockname": ("127.0.0.1", 5052),
            "peername": ("127.0.0.1", 40000),
            "sslcontext": None,
        }.get(name, default)

    def pause_reading(self) -> None:
        self.flow.append("pause")
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.flow.append("resume")
        self.reading_paused = False

    def is_reading(self) -> bool:
        return not self.reading_paused

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self.eof_at is None:
            self.eof_at = len(self.data)

    def set_protocol(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.Protocol | None:
        return self.protocol


@dataclass(frozen=True)
class Snap:
    """What a client had seen at one moment (flow: the server's read pauses and resumes)."""

    data: bytes
    closed_at: int | None
    eof_at: int | None
    flow: tuple[str, ...]
    aborted: bool = False  # closed with a reset (abort) rather than a FIN


@dataclass
class Outcome:
    """One run: what the script returned, the last snapshot, the app's notes and the server's
    counters at the end."""

    seen: Any
    final: Snap
    notes: list[Any] = field(default_factory=list)
    total_requests: int = 0
    registered: bool = False


class Conn:
    """One connection to a protocol instance, as a script drives it."""

    def __init__(self, factory: Factory, app: App, config: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        self.notes: list[Any] = []
        self.state: dict[str, Any] = {"notes": self.notes}  # app_state; apps note through it
        cfg = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            date_header=False,
            **config,
        )
        cfg.load()
        self.server_state = ServerState()
        self.server_state.default_headers = [(b"date", DATE)]
        self.protocol = factory(
            config=cfg, server_state=self.server_state, app_state=self.state, _loop=loop
        )
        self.transport = FakeTransport(loop)
        self.transport.protocol = self.protocol
        self.protocol.connection_made(self.transport)  # type: ignore[arg-type]

    @property
    def data(self) -> bytes:
        return bytes(self.transport.data)

    def gate(self, name: str = "gate") -> asyncio.Event:
        """An event an app waits on (``scope["state"][name]``); make it before feeding."""
        event = asyncio.Event()
        self.state[name] = event
        return event

    async def feed(self, data: bytes) -> None:
        """Deliver ``data`` as one read, unless the server closed (a socket transport stops
        reading at ``close()``), and let the loop run."""
        if not self.transport.is_closing():
            self.protocol.data_received(data)
        await settle()

    async def feed_paced(self, pieces: list[bytes]) -> None:
        """Feed like a socket would: nothing while the protocol has paused reading."""
        for piece in pieces:
            await until(lambda: not self.transport.reading_paused)
            self.protocol.data_received(piece)
        await settle()

    async def until(self, condition: Callable[[], bool], within: float = 2.0) -> None:
        await until(condition, within)

    async def answered(self, count: int = 1, within: float = 2.0) -> None:
        """Until ``count`` answers are complete: the test apps end each with ``$`` (a stream's
        ``$`` chunk leaves in one write with its ``0\\r\\n\\r\\n``)."""
        await until(lambda: self.data.count(b"$") >= count, within)
        await settle()

    async def lose(self) -> None:
        """The client hangs up."""
        self.transport.lost = True
        self.protocol.connection_lost(None)
        await settle()

    def snap(self) -> Snap:
        t = self.transport
        return Snap(self.data, t.closed_at, t.eof_at, tuple(t.flow), t.aborted)

    def counters(self) -> tuple[int, bool, int]:
        """(total_requests, whether the protocol is in ``connections``, running tasks)."""
        state = self.server_state
        return state.total_requests, self.protocol in state.connections, len(state.tasks)


async def settle() -> None:
    """Let every ready callback and task run (a few loop turns, then a real instant)."""
    for _ in range(20):
        await asyncio.sleep(0)
    await asyncio.sleep(0.001)


async def until(condition: Callable[[], bool], within: float = 2.0) -> None:
    """Wait for ``condition``; after ``within`` seconds return anyway (the comparison of what
    each side saw then shows why)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.001)


Script = Callable[[Conn], Awaitable[Any]]


async def drive(factory: Factory, app: App, script: Script, config: dict[str, Any]) -> Outcome:
    conn = Conn(factory, app, config)
    try:
        seen = await script(conn)
        await settle()
        total, registered, _ = conn.counters()
        return Outcome(seen, conn.snap(), list(conn.notes), total, registered)
    finally:
        if not conn.transport.lost:
            await conn.lose()
        tasks = list(conn.server_state.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def both(app: App, script: Script, **config: Any) -> Outcome:
    """Run ``script`` on the reference and on the lean protocol; they must see the same."""
    reference = await drive(bounded_protocol(LIMITS), app, script, config)
    lean = await drive(_lean_factory(), app, script, config)
    assert lean == reference
    return reference


# --- requests, answers, apps -------------------------------------------------------------------


def get(path: str = "/x", *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "host: t", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(body: bytes, path: str = "/p", *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: t", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def wire(status: str, headers: list[str], body: bytes = b"") -> bytes:
    """An answer as the reference writes it: status line, date, then the app's headers."""
    lines = [f"HTTP/1.1 {status}", f"date: {DATE.decode()}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def start(status: int = 200, *headers: tuple[bytes, bytes]) -> Message:
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def body(data: bytes = b"", more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


_LEN5 = (b"content-length", b"5")


async def read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def send_whole(send: Send, payload: bytes, status: int = 200) -> None:
    length = str(len(payload)).encode()
    await send(start(status, (b"content-type", b"text/plain"), (b"content-length", length)))
    await send(body(payload))


async def json_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Reads the body, answers JSON about it with a Content-Length (ends with ``$``)."""
    got = await read_body(receive)
    payload = orjson.dumps({"path": scope["path"], "len": len(got), "body": got.decode()}) + b"$"
    length = str(len(payload)).encode()
    await send(start(200, (b"content-type", b"application/json"), (b"content-length", length)))
    await send(body(payload))


async def gated_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Waits for ``state["gate"]``, then answers like :func:`json_app`."""
    await scope["state"]["gate"].wait()
    await json_app(scope, receive, send)


def stream_app(*chunks: bytes, gate_after: int | None = None) -> App:
    """Streams ``chunks`` without a Content-Length (waiting for the gate after ``gate_after``
    chunks), then ends with ``$``; notes each step."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        notes = scope["state"]["notes"]
        await send(start(200, (b"content-type", b"text/plain")))
        for i, chunk in enumerate(chunks):
            if i == gate_after:
                await scope["state"]["gate"].wait()
                notes.append("sending")
            await send(body(chunk, more=True))
            notes.append(f"sent {chunk.decode()}")
        await send(body(b"$"))
        notes.append("done")

    return app


# --- 1. small answers, keep-alive ---------------------------------------------------------------


async def test_post_with_body_gets_json_answer() -> None:
    async def script(c: Conn) -> list[Snap]:
        await c.feed(post(b'{"a": 1}'))
        return [c.snap()]

    out = await both(json_app, script)
    payload = b'{"path":"/p","len":8,"body":"{\\"a\\": 1}"}$'
    headers = ["content-type: application/json", f"content-length: {len(payload)}"]
    assert out.final.data == wire("200 OK", headers, payload)
    assert out.final.closed_at is None


async def test_get_gets_json_answer() -> None:
    async def script(c: Conn) -> list[Snap]:
        await c.feed(get("/g"))
        return [c.snap()]

    out = await both(json_app, script)
    assert out.final.data.endswith(b'\r\n\r\n{"path":"/g","len":0,"body":""}$')


async def test_keep_alive_answers_three_requests_on_one_connection() -> None:
    async def script(c: Conn) -> list[Snap]:
        snaps = []
        for i in range(3):
            await c.feed(get(f"/{i}"))
            await c.answered(i + 1)
            snaps.append(c.snap())
        return snaps

    out = await both(json_app, script)
    assert out.final.data.count(b"HTTP/1.1 200 OK") == 3 and out.final.closed_at is None
    assert out.total_requests == 3


# --- 2. closing after the answer ----------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes", [get("/x", version="1.0"), get("/x", "Connection: close")], ids=str
)
async def test_answer_then_close(request_bytes: bytes) -> None:
    async def script(c: Conn) -> list[Snap]:
        await c.feed(request_bytes)
        return [c.snap()]

    out = await both(json_app, script)
    assert b"\r\nconnection: close\r\n" in out.final.data
    assert out.final.data.endswith(b"$") and out.final.closed_at == len(out.final.data)


# --- 3, 4. answers without a body ---------------------------------------------------------------


async def test_head_request_gets_no_body_bytes() -> None:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await send_whole(send, b"hello")

    async def script(c: Conn) -> list[Snap]:
        await c.feed(b"HEAD /h HTTP/1.1\r\nhost: t\r\n\r\n")
        await c.feed(b"HEAD /h HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        return [c.snap()]

    out = await both(app, script)
    head = wire("200 OK", ["content-type: text/plain", "content-length: 5"])
    closing = wire("200 OK", ["content-type: text/plain", "content-length: 5", "connection: close"])
    assert out.final.data == head + closing
    assert out.final.closed_at == len(out.final.data)


@pytest.mark.parametrize("status", [204, 304])
async def test_no_content_answers(status: int) -> None:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await send(start(status))
        await send(body())

    async def script(c: Conn) -> list[Snap]:
        await c.feed(get())
        await c.feed(get())
        return [c.snap()]

    out = await both(app, script)
    phrase = {204: "204 No Content", 304: "304 Not Modified"}[status]
    assert out.final.data == wire(phrase, []) * 2 and out.final.closed_at is None


# --- 5. streaming -------------------------------------------------------------------------------


async def test_streamed_answer_is_chunked() -> None:
    async def script(c: Conn) -> list[Snap]:
        await c.feed(get())
        await c.answered()
        return [c.snap()]

    out = await both(stream_app(b"one", b"two", b"three"), script)
    head = wire("200 OK", ["content-type: text/plain", "transfer-encoding: chunked"])
    assert out.final.data == head + b"3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n1\r\n$\r\n0\r\n\r\n"


async def test_stream_head_reaches_client_before_the_first_chunk() -> None:
    async def script(c: Conn) -> list[Snap]:
        gate = c.gate()
        await c.feed(get())
        before = c.snap()
        gate.set()
        await c.answered()
        return [before, c.snap()]

    out = await both(stream_app(b"first", gate_after=0), script)
    head = wire("200 OK", ["content-type: text/plain", "transfer-encoding: chunked"])
    assert out.seen[0].data == head
    assert out.final.data == head + b"5\r\nfirst\r\n1\r\n$\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    ("method", "status", "headers"),
    [
        ("GET", 200, [_LEN5]),
        ("HEAD", 200, [_LEN5]),
        ("GET", 204, []),
        ("GET", 200, [_LEN5, (b"connection", b"close")]),
    ],
    ids=["length", "head", "204", "length-closing"],
)
async def test_whole_answer_head_not_held_while_the_app_waits(
    method: str, status: int, headers: list[tuple[bytes, bytes]]
) -> None:
    """An app that sends its start and then waits before the body: uvicorn's head reaches the
    client on the next loop turn (CoalescingTransport flushes it), not only with the body."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await send(start(status, *headers))
        await scope["state"]["gate"].wait()
        await send(body(b"" if status == 204 else b"hello"))

    async def script(c: Conn) -> list[Snap]:
        gate = c.gate()
        await c.feed(f"{method} / HTTP/1.1\r\nhost: t\r\n\r\n".encode())
        waiting = c.snap()
        gate.set()
        await settle()
        return [waiting, c.snap()]

    out = await both(app, script)
    assert out.seen[0].data.startswith(b"HTTP/1.1 ") and out.seen[0].data.endswith(b"\r\n\r\n")


# --- 6. request bodies --------------------------------------------------------------------------


async def test_body_in_several_reads() -> None:
    async def script(c: Conn) -> list[Snap]:
        request = post(b"0123456789" * 3)
        snaps = []
        for piece in (request[:20], request[20:-25], request[-25:-10], request[-10:]):
            await c.feed(piece)
            snaps.append(c.snap())
        return snaps

    out = await both(json_app, script)
    assert out.final.data.endswith(b'"len":30,"body":"' + b"0123456789" * 3 + b'"}$')


async def test_chunked_request_body_is_read_whole() -> None:
    head = b"POST /c HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"

    async def script(c: Conn) -> list[Snap]:
        await c.feed(head + b"5\r\nhello\r\n")
        await c.feed(b"6\r\n world\r\n")
        first = c.snap()
        await c.feed(b"0\r\n\r\n")
        return [first, c.snap()]

    out = await both(json_app, script)
    assert out.seen[0].data == b""
    assert out.final.data.endswith(b'"len":11,"body":"hello world"}$')


async def test_large_body_pauses_reading_until_the_app_reads() -> None:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await scope["state"]["gate"].wait()
        got = await read_body(receive)
        await send_whole(send, f"{len(got)} {hashlib.sha256(got).hexdigest()}$".encode())

    payload = bytes(range(256)) * 800  # 204800 bytes
    request = post(payload)
    pieces = [request[i : i + 20000] for i in range(0, len(request), 20000)]

    async def script(c: Conn) -> list[Snap]:
        gate = c.gate()
        for piece in pieces[:4]:  # the app does not read yet: over 64 KiB held, reading pauses
            c.protocol.data_received(piece)
        await settle()
        held = c.snap()
        gate.set()
        await c.feed_paced(pieces[4:])
        await c.answered()
        return [held, c.snap()]

    out = await both(app, script)
    assert out.seen[0].flow == ("pause",)
    assert out.final.data.endswith(
        f"{len(payload)} {hashlib.sha256(payload).hexdigest()}$".encode()
    )
    assert out.final.flow[-1] == "resume"


# --- 7. Expect: 100-continue --------------------------------------------------------------------


async def test_100_continue_written_when_the_app_first_receives() -> None:
    head = b"POST /e HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"

    async def script(c: Conn) -> list[Snap]:
        gate = c.gate()
        await c.feed(head)
        before = c.snap()
        gate.set()
        await c.until(lambda: b"Continue" in c.data)
        await settle()
        continued = c.snap()
        await c.feed(b"hello")
        await c.answered()
        return [before, continued, c.snap()]

    out = await both(gated_app, script)
    assert out.seen[0].data == b""
    assert out.seen[1].data == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert out.final.data.endswith(b'"body":"hello"}$')


# --- 8. pipelining ------------------------------------------------------------------------------


async def test_pipelined_requests_answered_in_order() -> None:
    async def script(c: Conn) -> list[Snap]:
        await c.feed(get("/one") + post(b"two", "/two") + get("/three"))
        await c.answered(3)
        return [c.snap()]

    out = await both(json_app, script)
    data = out.final.data
    assert data.index(b'"/one"') < data.index(b'"/two"') < data.index(b'"/three"')
    assert data.count(b"HTTP/1.1 200 OK") == 3


# --- 9, 10. bad and oversized heads -------------------------------------------------------------


async def test_invalid_request_gets_400_and_close() -> None:
    async def script(c: Conn) -> list[Snap]:
        await c.feed(b"GARBAGE\r\n\r\n")
        return [c.snap()]

    out = await both(json_app, script)
    msg = b"Invalid HTTP request received."
    headers = ["content-type: text/plain; charset=utf-8", "content-length: 30", "connection: close"]
    assert out.final.data == wire("400 Bad Request", headers, msg)
    assert out.final.closed_at == len(out.final.data)


def _linger_briefly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_limits, "LINGER_S", 0.05)  # both protocols read it at each 431


_BIG_HEAD = b"GET / HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 9000 + b"\r\n\r\n"
_MANY_HEADERS = b"GET / HTTP/1.1\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(101)) + b"\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "piece", "what"),
    [
        (_BIG_HEAD, 100_000, "the request line and headers are over 8192 bytes"),
        (_BIG_HEAD, 1000, "the request line and headers are over 8192 bytes"),
        (_MANY_HEADERS, 100_000, "more than 100 headers"),
        (_MANY_HEADERS, 7, "more than 100 headers"),
    ],
    ids=["big-whole", "big-pieces", "many-whole", "many-pieces"],
)
async def test_oversized_head_gets_431_then_lingering_close(
    monkeypatch: pytest.MonkeyPatch, request_bytes: bytes, piece: int, what: str
) -> None:
    _linger_briefly(monkeypatch)

    async def script(c: Conn) -> list[Snap]:
        for i in range(0, len(request_bytes), piece):
            c.protocol.data_received(request_bytes[i : i + piece])
        await settle()
        refused = c.snap()
        await c.feed(b"more bytes the client still sends\r\n" * 10)
        await c.until(lambda: c.transport.closed_at is not None, within=1.0)
        return [refused, c.snap()]

    out = await both(json_app, script)
    answer = response_431(LIMITS, what, "")
    assert out.seen[0] == Snap(answer, None, len(answer), ())
    assert out.final == Snap(answer, len(answer), len(answer), ())


# --- 11. the app fails --------------------------------------------------------------------------


async def _raise_before_start(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    raise ValueError("boom")


async def _raise_after_start(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await send(start(200, (b"content-length", b"5")))
    raise ValueError("boom")


async def _return_without_answer(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    return None


async def _return_a_value(scope: dict[str, Any], receive: Receive, send: Send) -> Any:
    return 1  # an ASGI app must return None: uvicorn closes without an answer


async def _answer_then_return_a_value(scope: dict[str, Any], receive: Receive, send: Send) -> Any:
    await send_whole(send, b"$")
    return 1  # after a whole answer: uvicorn closes the keep-alive connection


async def _return_mid_body(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await send(start(200, (b"content-length", b"5")))
    await send(body(b"he", more=True))


_500 = wire(
    "500 Internal Server Error",
    ["content-type: text/plain; charset=utf-8", "content-length: 21", "connection: close"],
    b"Internal Server Error",
)
_HEAD5 = wire("200 OK", ["content-length: 5"])


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        (_raise_before_start, _500),
        (_raise_after_start, _HEAD5),
        (_return_without_answer, _500),
        (_return_mid_body, _HEAD5 + b"he"),
        (_return_a_value, b""),
        (
            _answer_then_return_a_value,
            wire("200 OK", ["content-type: text/plain", "content-length: 1"], b"$"),
        ),
    ],
    ids=[
        "raise-before-start",
        "raise-after-start",
        "no-answer",
        "unfinished-body",
        "returns-a-value",
        "answers-and-returns-a-value",
    ],
)
async def test_failing_app(app: App, expected: bytes) -> None:
    async def script(c: Conn) -> list[Snap]:
        await c.feed(get())
        return [c.snap()]

    out = await both(app, script)
    assert out.final.data == expected and out.final.closed_at == len(expected)


# --- 12, 13. what send refuses ------------------------------------------------------------------


def _sending(*messages: Message, read: bool = False) -> App:
    """Sends ``messages`` (after reading the body if ``read``); notes the type of what ``send``
    raises, and raises it on."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if read:
            await read_body(receive)
        try:
            for message in messages:
                await send(message)
        except Exception as exc:
            scope["state"]["notes"].append(type(exc).__name__)
            raise

    return app


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (
            (start(200, (b"content-length", b"2")), body(b"abc")),
            wire("200 OK", ["content-length: 2"]),
        ),
        ((start(200, (b"content-length", b"5")), body(b"abc")), _HEAD5 + b"abc"),
        ((start(200, (b"bad name", b"v")), body(b"x")), b""),
        ((start(200, (b"x-bad", b"v\r\nx-injected: 1")), body(b"x")), b""),
    ],
    ids=["longer-than-content-length", "shorter", "bad-header-name", "bad-header-value"],
)
async def test_send_refuses(messages: tuple[Message, ...], expected: bytes) -> None:
    async def script(c: Conn) -> list[Snap]:
        await c.feed(get())
        return [c.snap()]

    out = await both(_sending(*messages), script)
    assert out.notes == ["RuntimeError"]
    assert out.final.data == expected and out.final.closed_at == len(expected)


# --- 14. the client hangs up --------------------------------------------------------------------


async def test_disconnect_while_the_app_waits_in_receive() -> None:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        notes = scope["state"]["notes"]
        notes.append(await read_body(receive))
        notes.append(await receive())
        await send_whole(send, b"late")  # nobody listens: send neither raises nor writes
        notes.append("sent")

    async def script(c: Conn) -> list[Any]:
        await c.feed(post(b"abc"))
        waiting = list(c.notes)
        await c.lose()
        return [waiting, c.snap(), c.counters()]

    out = await both(app, script)
    assert out.notes == [b"abc", {"type": "http.disconnect"}, "sent"]
    assert out.final.data == b"" and out.seen[0] == [b"abc"]
    assert out.seen[2][1] is False  # no longer in server_state.connections


async def test_two_tasks_waiting_in_receive_both_learn_of_the_disconnect() -> None:
    """A disconnect watcher beside the app, and a third wait cancelled at once (Starlette's
    ``is_disconnected()``): the cancelled one must not cost the others their wake-up."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        notes = scope["state"]["notes"]
        notes.append(await read_body(receive))

        async def watch(name: str) -> None:
            notes.append((name, await receive()))

        first = asyncio.create_task(watch("first"))
        second = asyncio.create_task(watch("second"))
        await asyncio.sleep(0)
        polled = asyncio.create_task(receive())
        await asyncio.sleep(0)
        polled.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polled
        notes.append("polled")
        await asyncio.gather(first, second)

    async def script(c: Conn) -> list[Any]:
        await c.feed(post(b"abc"))
        await settle()
        waiting = list(c.notes)
        await c.lose()
        await settle()
        return [waiting]

    out = await both(app, script)
    assert out.seen[0] == [b"abc", "polled"]
    assert sorted(out.notes[2:]) == [
        ("first", {"type": "http.disconnect"}),
        ("second", {"type": "http.disconnect"}),
    ]


async def test_a_cancelled_send_while_writing_is_paused_leaves_the_next_send_waiting() -> None:
    """A send cancelled while the transport is full must not break the next one's wait."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        notes = scope["state"]["notes"]
        await send(start(200))
        await send(body(b"one", more=True))
        await scope["state"]["gate"].wait()
        stuck = asyncio.create_task(send(body(b"lost", more=True)))
        await asyncio.sleep(0)
        stuck.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stuck
        notes.append("cancelled")
        await send(body(b"two"))
        notes.append("sent two")

    async def script(c: Conn) -> list[Any]:
        gate = c.gate()
        await c.feed(get())
        c.protocol.pause_writing()
        gate.set()
        await settle()
        held = list(c.notes)
        c.protocol.resume_writing()
        await settle()
        return [held, c.snap()]

    out = await both(app, script)
    assert out.seen[0] == ["cancelled"]  # the next send waits for the transport
    assert out.notes == ["cancelled", "sent two"]
    assert out.final.data.endswith(b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n")


async def test_disconnect_while_streaming() -> None:
    async def script(c: Conn) -> list[Any]:
        gate = c.gate()
        await c.feed(get())
        await c.lose()
        gate.set()
        await settle()
        return [c.snap()]

    out = await both(stream_app(b"one", b"two", gate_after=1), script)
    head = wire("200 OK", ["content-type: text/plain", "transfer-encoding: chunked"])
    assert out.final.data == head + b"3\r\none\r\n"
    assert out.notes == ["sent one", "sending", "sent two", "done"]


# --- 15. keep-alive timeout ---------------------------------------------------------------------


async def test_keep_alive_timeout_closes_an_idle_connection() -> None:
    async def script(c: Conn) -> list[Snap]:
        await c.feed(get())
        await c.answered()
        await asyncio.sleep(0.1)
        early = c.snap()  # 0.1 s idle of 0.2 s: still open
        await c.feed(get())  # restarts the timer
        await c.answered(2)
        await asyncio.sleep(0.15)
        renewed = c.snap()  # 0.25 s after the first answer, 0.15 s after the second
        await c.until(lambda: c.transport.closed_at is not None)
        return [early, renewed, c.snap()]

    out = await both(json_app, script, timeout_keep_alive=0.2)
    early, renewed, final = out.seen
    assert early.closed_at is None and renewed.closed_at is None
    assert final.closed_at == len(final.data) and final.data.count(b"$") == 2


# --- 16. shutdown -------------------------------------------------------------------------------


async def test_shutdown_closes_an_idle_connection() -> None:
    async def script(c: Conn) -> list[Snap]:
        c.protocol.shutdown()  # type: ignore[attr-defined]
        await settle()
        return [c.snap()]

    out = await both(json_app, script)
    assert out.final == Snap(b"", 0, None, ())


async def test_shutdown_after_an_answer_closes() -> None:
    async def script(c: Conn) -> list[Snap]:
        await c.feed(get())
        await c.answered()
        answered = c.snap()
        c.protocol.shutdown()  # type: ignore[attr-defined]
        await settle()
        return [answered, c.snap()]

    out = await both(json_app, script)
    assert out.seen[0].closed_at is None and out.final.closed_at == len(out.final.data)


async def test_shutdown_during_a_request_lets_the_answer_finish() -> None:
    async def script(c: Conn) -> list[Snap]:
        gate = c.gate()
        await c.feed(get())
        c.protocol.shutdown()  # type: ignore[attr-defined]
        await settle()
        during = c.snap()
        gate.set()
        await c.answered()
        return [during, c.snap()]

    out = await both(gated_app, script)
    assert out.seen[0] == Snap(b"", None, None, ())
    assert b"\r\nconnection: close\r\n" in out.final.data
    assert out.final.data.endswith(b"$") and out.final.closed_at == len(out.final.data)


# --- 17. write flow control ---------------------------------------------------------------------


async def test_paused_writing_holds_the_next_send() -> None:
    async def script(c: Conn) -> list[Any]:
        gate = c.gate()
        await c.feed(get())
        c.protocol.pause_writing()
        gate.set()
        await settle()
        held = (c.snap(), list(c.notes))
        c.protocol.resume_writing()
        await c.answered()
        return [held, c.snap()]

    out = await both(stream_app(b"one", b"two", gate_after=1), script)
    held_snap, held_notes = out.seen[0]
    assert held_notes == ["sent one", "sending"]
    assert held_snap.data.endswith(b"3\r\none\r\n")
    assert out.final.data.endswith(b"3\r\ntwo\r\n1\r\n$\r\n0\r\n\r\n")


# --- 18. the scope ------------------------------------------------------------------------------


async def scope_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    state = scope["state"]
    seen = {k: v for k, v in scope.items() if k != "state"}
    seen["state"] = sorted(state)
    state["notes"].append(seen)
    state["added"] = True  # a copy of app_state: the connection's own stays as it was
    await read_body(receive)
    await send_whole(send, b"$")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /a%20b/c?x=1 HTTP/1.1\r\nHost: example\r\nX-Custom: One\r\nAccept: */*\r\n\r\n",
        b"POST /p?q=%41&r HTTP/1.0\r\nContent-Length: 2\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\nhi",
        b"OPTIONS * HTTP/1.1\r\nhost: t\r\n\r\n",
        b"GET http://h:1/p%ffq%2F?a=%20 HTTP/1.1\r\nhost: h\r\n\r\n",
        b"GET /%E2%82%AC/ HTTP/1.1\r\nhost: t\r\nCookie: a=1; b=2\r\nEmpty:\r\n\r\n",
    ],
    ids=["get", "post-1.0", "options-star", "absolute-form", "utf8-escape"],
)
async def test_scope(request_bytes: bytes) -> None:
    async def script(c: Conn) -> list[Any]:
        await c.feed(request_bytes)
        await c.answered()
        return ["added" in c.state]

    out = await both(scope_app, script)
    assert out.seen == [False]
    scope = out.notes[0]
    assert scope["type"] == "http" and scope["asgi"] == {"version": "3.0", "spec_version": "2.3"}
    assert scope["server"] == ("127.0.0.1", 5052) and scope["client"] == ("127.0.0.1", 40000)
    assert scope["scheme"] == "http" and scope["root_path"] == "" and scope["state"] == ["notes"]
    if request_bytes.startswith(b"GET /a%20b/c"):
        assert scope["path"] == "/a b/c" and scope["raw_path"] == b"/a%20b/c"
        assert scope["query_string"] == b"x=1" and scope["http_version"] == "1.1"
        assert scope["headers"] == [
            (b"host", b"example"),
            (b"x-custom", b"One"),
            (b"accept", b"*/*"),
        ]


# --- 19. the server's counters ------------------------------------------------------------------


async def test_server_state_counts_requests_connections_and_tasks() -> None:
    async def script(c: Conn) -> list[tuple[int, bool, int]]:
        counts = [c.counters()]
        gate = c.gate()
        await c.feed(get())
        counts.append(c.counters())
        gate.set()
        await c.answered()
        counts.append(c.counters())
        await c.feed(get())
        await c.answered(2)
        counts.append(c.counters())
        await c.lose()
        counts.append(c.counters())
        return counts

    out = await both(gated_app, script)
    assert out.seen == [(0, True, 0), (0, True, 1), (1, True, 0), (2, True, 0), (2, False, 0)]


# --- more edges: what apps send, what clients send ---------------------------------------------

_TEXT = (b"content-type", b"text/plain")
_LEN1 = (b"content-length", b"1")
_ONE = _sending(start(200, _LEN1), body(b"x"))  # a one-byte answer
_ONE_READ = _sending(start(200, _LEN1), body(b"x"), read=True)  # the same, the body read first


@pytest.mark.parametrize(
    "messages",
    [
        (start(299), body(b"x")),
        (start(200, (b"X-Upper", b"V"), (b"Content-Length", b"1")), body(b"x")),
        (start(200, (b"connection", b"close"), _LEN1), body(b"x")),
        (start(200, (b"connection", b"keep-alive, Close")), body(b"x")),
        (start(200, (b"transfer-encoding", b"chunked")), body(b"ab", True), body()),
        (start(200, (b"content-length", b"3")), body(b"a", True), body(b"bc")),
        (start(200, _LEN1, (b"content-length", b"9")), body(b"x")),
        (start(200), body(b"", True), body(b"x", True), body(b"")),
        (body(b"x"),),
        (start(200, _LEN1), body(b"x"), body(b"y")),
        (start(200, _LEN1), start(200)),
        ({"type": "http.response.trailers"},),
        (start(200, (b"connection", b"keep-alive"), _LEN1), body(b"x")),
        (start(200, (b"transfer-encoding", b"chunked"), _LEN1), body(b"x")),
        (start(304, _LEN1), body(b"")),
    ],
    ids=[
        "unknown-status",
        "upper-case-names",
        "app-closes",
        "app-closes-token",
        "app-chunked",
        "length-in-pieces",
        "two-lengths",
        "empty-chunks",
        "body-first",
        "after-complete",
        "start-twice",
        "unknown-message",
        "app-keep-alive",
        "chunked-then-length",
        "304-with-length",
    ],
)
async def test_app_sends(messages: tuple[Message, ...]) -> None:
    async def script(c: Conn) -> list[Snap]:
        await c.feed(get())
        await c.feed(b"HEAD / HTTP/1.1\r\n\r\n" + get("/x", version="1.0"))
        return [c.snap()]

    await both(_sending(*messages), script)


@pytest.mark.parametrize(
    ("app", "request_bytes"),
    [
        # uvicorn quirk, kept: the 400 goes out and the transport is closed at once, and the
        # first request's answer is written after it (a socket transport still sends it).
        (_ONE, get() + b"GARBAGE\r\n\r\n"),
        (_ONE, get() * 3),
        (_ONE, get("/x", "Connection: close") + get()),
        (_ONE, post(b"unread") + get()),
        (_ONE_READ, post(b"abc") * 2),
        (_ONE, b"GET / HTTP/1.1\r\n\r\n"),
        (_ONE, b"GET /\xff HTTP/1.1\r\n\r\n"),
        (_ONE, b"GET / HTTP/2.0\r\n\r\n"),
        (_ONE, b"\r\nGET / HTTP/1.1\r\n\r\n"),
        (
            _ONE,
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (_ONE, get("/x", "Connection: keep-alive", version="1.0")),
        (_ONE, b"GET / HTTP/1.1\r\nx: a\r\n b\r\n\r\n"),
        (_ONE, b"GET / HTTP/1.1\r\nx y: a\r\n\r\n"),
        (
            _ONE_READ,
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\nx-t: 1\r\n\r\n",
        ),
        (_ONE_READ, b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"),
        (_ONE_READ, b"POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\nhi"),
        (_ONE, b"POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n"),
    ],
    ids=[
        "garbage-after-get",
        "three-pipelined",
        "close-then-more",
        "unread-body-then-get",
        "two-posts",
        "no-host",
        "non-ascii-path",
        "http-2.0",
        "leading-crlf",
        "length-and-chunked",
        "1.0-keep-alive",
        "obs-fold",
        "space-in-name",
        "chunked-trailers",
        "bad-chunk-size",
        "100-continue-body-sent",
        "100-continue-unread",
    ],
)
async def test_client_sends(app: App, request_bytes: bytes) -> None:
    async def script(c: Conn) -> list[Snap]:
        await c.feed(request_bytes)
        await settle()
        return [c.snap()]

    await both(app, script)


async def test_second_head_too_big_after_a_keep_alive_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _linger_briefly(monkeypatch)

    async def script(c: Conn) -> list[Snap]:
        await c.feed(get())
        await c.answered()
        await c.feed(_BIG_HEAD)
        refused = c.snap()
        await c.until(lambda: c.transport.closed_at is not None, within=1.0)
        return [refused, c.snap()]

    out = await both(json_app, script)
    assert out.final.data.endswith(
        response_431(LIMITS, "the request line and headers are over 8192 bytes", "")
    )


async def test_head_just_within_the_limit_with_its_body_in_the_same_read() -> None:
    async def script(c: Conn) -> list[Snap]:
        head = b"POST /p HTTP/1.1\r\ncontent-length: 4\r\nx-pad: "
        pad = 8192 - len(head) - 4
        await c.feed(head + b"a" * pad + b"\r\n\r\nbody" + get("/next"))
        await c.answered(2)
        return [c.snap()]

    out = await both(json_app, script)
    assert out.final.data.count(b"$") == 2


async def test_disconnect_before_the_body_is_complete() -> None:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        notes = scope["state"]["notes"]
        while True:
            message = await receive()
            notes.append(message)
            if message["type"] == "http.disconnect":
                return

    async def script(c: Conn) -> list[Any]:
        await c.feed(post(b"0123456789")[:-6])
        await c.lose()
        return [c.snap(), c.counters()]

    out = await both(app, script)
    assert out.notes[-1] == {"type": "http.disconnect"}


async def test_eof_from_the_client_keeps_the_answer_going() -> None:
    async def script(c: Conn) -> list[Any]:
        gate = c.gate()
        await c.feed(get())
        keep_open = c.protocol.eof_received()
        gate.set()
        await c.answered()
        return [keep_open, c.snap()]

    await both(gated_app, script)


# --- uvicorn settings the protocol honours -----------------------------------------------------

_DATE_RE = re.compile(rb"(?i)\r\ndate: [^\r]*\r\n")


def _undated(snap: Snap) -> Snap:
    """The snapshot with every Date header blanked: the WebSocket protocol renders the clock."""
    data = _DATE_RE.sub(b"\r\ndate: -\r\n", snap.data)
    return Snap(data, None, snap.eof_at, snap.flow, snap.aborted)


@pytest.mark.parametrize("ws", ["auto", "none"])
async def test_websocket_upgrade_request(ws: str) -> None:
    """Upgrades are handed to uvicorn's WebSocket protocol (here it refuses a missing key), or,
    without one, served as plain requests. Dates and the close offset (which shifts with the
    date's length) are compared apart: the WebSocket side writes the current time."""
    request = b"GET / HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"

    async def script(c: Conn) -> list[Any]:
        await c.feed(request)
        await settle()
        snap = c.snap()
        return [_undated(snap), snap.closed_at is not None]

    async def run(factory: Factory) -> Outcome:
        return await drive(factory, json_app, script, {"ws": ws})

    reference = await run(bounded_protocol(LIMITS))
    lean = await run(_lean_factory())
    assert lean.seen == reference.seen
    assert lean.notes == reference.notes and lean.total_requests == reference.total_requests


async def test_concurrency_limit_answers_503() -> None:
    async def script(c: Conn) -> list[Snap]:
        await c.feed(get())
        return [c.snap()]

    out = await both(json_app, script, limit_concurrency=1)
    assert out.final.data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")


async def test_root_path_prefixes_path_and_raw_path() -> None:
    async def script(c: Conn) -> list[Any]:
        await c.feed(b"GET /a%20b?q HTTP/1.1\r\nhost: t\r\n\r\n")
        return []

    out = await both(scope_app, script, root_path="/root")
    assert out.notes[0]["path"] == "/root/a b" and out.notes[0]["raw_path"] == b"/root/a%20b"


# --- connection ends with requests still queued ------------------------------------------------


async def test_disconnect_with_pipelined_requests_queued() -> None:
    """uvicorn quirk, kept: only the newest (queued) request is marked disconnected; the running
    one still answers into the lost transport and is counted in ``total_requests``."""

    async def script(c: Conn) -> list[Any]:
        gate = c.gate()
        await c.feed(get("/1") + get("/2") + get("/3"))
        queued = c.counters()
        await c.lose()
        gate.set()
        await settle()
        return [queued, c.snap(), c.counters()]

    out = await both(gated_app, script)
    assert out.final.data == b""


async def test_shutdown_with_pipelined_requests_queued() -> None:
    """uvicorn quirk, kept: shutdown() marks the newest (queued) request, so the running answer
    keeps the connection alive and the queued one is still served, with ``connection: close``."""

    async def script(c: Conn) -> list[Any]:
        gate = c.gate()
        await c.feed(get("/1") + get("/2"))
        c.protocol.shutdown()  # type: ignore[attr-defined]
        gate.set()
        await c.answered()
        await settle()
        return [c.snap(), c.counters()]

    out = await both(gated_app, script)
    assert b"connection: close" in out.final.data


async def test_keep_alive_timer_waits_for_a_slow_pipelined_answer() -> None:
    async def script(c: Conn) -> list[Snap]:
        gate = c.gate()
        await c.feed(get("/1") + get("/2"))
        await asyncio.sleep(0.15)  # longer than the keep-alive timeout, the app still waits
        waiting = c.snap()
        gate.set()
        await c.answered(2)
        return [waiting, c.snap()]

    out = await both(gated_app, script, timeout_keep_alive=0.1)
    assert out.seen[0].closed_at is None


@pytest.mark.parametrize(
    "header",
    [
        (b"x-v", b"a\tb"),
        (b"x-v", b""),
        (b"x-v", b"\x80\xff"),
        (b"x-v", b"a\x7fb"),
        (b"x-v", b"a\rb"),
        (b"x-v", b"a\nb"),
        (b"x-v", b"a\x00"),
        (b"x\x80", b"v"),
        (b"x(y", b"v"),
        (b"x:y", b"v"),
        (b"", b"v"),
        (b"content-length", b" 1 "),
        (b"content-length", b"one"),
        (b"transfer-encoding", b"gzip, chunked"),
        (b"Transfer-Encoding", b"Chunked"),
        (b"CONNECTION", b"CLOSE"),
    ],
    ids=repr,
)
async def test_response_header_checks(header: tuple[bytes, bytes]) -> None:
    async def script(c: Conn) -> list[Snap]:
        await c.feed(get())
        await c.feed(get())
        return [c.snap()]

    await both(_sending(start(200, header), body(b"x")), script)


@pytest.mark.parametrize("status", [100, 101, 199, 599, 600, 99])
async def test_unusual_status_codes(status: int) -> None:
    async def script(c: Conn) -> list[Snap]:
        await c.feed(get())
        return [c.snap()]

    await both(_sending(start(status, _LEN1), body(b"x")), script)


async def test_default_headers_follow_the_server_state() -> None:
    """uvicorn puts a new default-header list (the date) on ``server_state`` every second."""

    async def script(c: Conn) -> list[Snap]:
        await c.feed(get())
        c.server_state.default_headers = [(b"date", b"Sat, 05 Dec 2026 08:00:01 GMT")]
        await c.feed(get())
        c.server_state.default_headers = [(b"date", DATE), (b"x-extra", b"1")]
        await c.feed(get())
        c.server_state.default_headers = []
        await c.feed(b"GARBAGE\r\n\r\n")
        return [c.snap()]

    out = await both(json_app, script)
    assert out.final.data.count(b"08:00:01") == 1 and out.final.data.count(b"x-extra: 1") == 1


# --- a Starlette app, as the instance and the gateway are --------------------------------------


def _starlette_app() -> App:

    async def echo(request: Request) -> Response:
        return JSONResponse({"got": await request.json()}, headers={"x-a": "1"})

    async def stream(request: Request) -> Response:
        async def parts() -> Any:
            for part in (b"one,", b"two,", b"three"):
                await asyncio.sleep(0)
                yield part

        return StreamingResponse(parts(), media_type="text/plain")

    async def later(request: Request) -> Response:
        task = BackgroundTask(request.state.notes.append, "background")
        return PlainTextResponse("later", background=task)

    async def missing(request: Request) -> Response:
        raise RuntimeError("boom")

    routes = [
        Route("/echo", echo, methods=["POST"]),
        Route("/stream", stream),
        Route("/later", later),
        Route("/boom", missing),
    ]
    return Starlette(routes=routes)  # type: ignore[return-value]


async def test_starlette_app() -> None:
    async def script(c: Conn) -> list[Snap]:
        snaps = []
        requests = [
            post(b'{"a": [1, 2]}', "/echo", "content-type: application/json"),
            get("/stream"),
            get("/later"),
            get("/nowhere"),
            b"HEAD /stream HTTP/1.1\r\nhost: t\r\n\r\n",
            get("/boom"),
        ]
        for request in requests:
            await c.feed(request)
            await settle()
            snaps.append(c.snap())
        return snaps

    out = await both(_starlette_app(), script)
    assert b'{"got":{"a":[1,2]}}' in out.final.data
    assert b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n" in out.final.data
    assert out.notes == ["background"]
    assert out.final.data.endswith(b"Internal Server Error")


async def test_receive_after_the_answer_says_disconnect() -> None:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await send_whole(send, b"$")
        scope["state"]["notes"].append(await receive())

    async def script(c: Conn) -> list[Snap]:
        await c.feed(post(b"unread body"))
        await c.feed(get())
        return [c.snap()]

    out = await both(app, script)
    assert out.notes == [{"type": "http.disconnect"}] * 2


async def test_real_server_writes_a_whole_answer_once_and_streams_chunk_by_chunk() -> None:
    """Through a real uvicorn server on a socket: keep-alive answers are byte-exact, a whole
    answer reaches the socket in one write, and a stream arrives chunk by chunk."""
    socket_writes: list[bytes] = []

    class Spied(LeanHttpProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            real_write = transport.write  # type: ignore[attr-defined]

            def write(data: bytes) -> None:
                socket_writes.append(bytes(data))
                real_write(data)

            transport.write = write  # type: ignore[attr-defined]
            super().connection_made(transport)

    async def whole(request: Request) -> PlainTextResponse:
        return PlainTextResponse("whole answer")

    async def streamed(request: Request) -> StreamingResponse:
        async def chunks() -> Any:
            for part in (b"one,", b"two,", b"three"):
                await asyncio.sleep(0.01)
                yield part

        return StreamingResponse(chunks(), media_type="text/plain")

    app = Starlette(routes=[Route("/whole", whole), Route("/stream", streamed)])
    port = free_port()
    protocol = functools.partial(Spied, limits=HeaderLimits(16384, 100, "detail"))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=protocol, log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):  # started within 5 s
            if server.started:
                break
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):  # one keep-alive connection, several answers
            writer.write(b"GET /whole HTTP/1.1\r\nhost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 OK\r\ndate: ")
            assert await reader.readexactly(len(b"whole answer")) == b"whole answer"
        assert len(socket_writes) == 3  # head and body together, once per answer
        assert all(w.endswith(b"\r\n\r\nwhole answer") for w in socket_writes)
        writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"transfer-encoding: chunked" in head
        body = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        assert body == b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n"
        writer.close()
    finally:
        server.should_exit = True
        await task
