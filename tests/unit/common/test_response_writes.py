"""CoalescingTransport: a whole answer leaves in one write, a stream's head never waits."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from enclave.common import http_limits
from enclave.common.http_limits import HeaderLimits, bounded_protocol
from enclave.common.response_writes import CoalescingTransport

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


async def test_head_and_body_written_together() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"ok")
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    transport.write(b"next")  # later writes pass straight through
    assert real.writes[-1] == b"next"


async def test_stream_head_flushed_on_next_loop_turn() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HEAD")
    assert real.writes == []
    await asyncio.sleep(0)
    assert real.writes == [b"HEAD"]
    transport.write(b"chunk")
    assert real.writes == [b"HEAD", b"chunk"]


async def test_close_flushes_the_held_head_first() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HEAD")
    transport.close()
    assert real.writes == [b"HEAD"] and real.closed
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_real_server_answers_whole_and_streamed_responses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through uvicorn with the bounded protocol: keep-alive answers stay byte-exact, and a
    whole answer reaches the socket in one write."""
    socket_writes: list[bytes] = []

    class Recorded(CoalescingTransport):
        __slots__ = ()

        def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
            real_write = transport.write

            class Spy:
                def write(self, data: bytes) -> None:
                    socket_writes.append(bytes(data))
                    real_write(data)

                def __getattr__(self, name: str) -> Any:
                    return getattr(transport, name)

            super().__init__(Spy(), loop)  # type: ignore[arg-type]

    monkeypatch.setattr(http_limits, "CoalescingTransport", Recorded)

    async def whole(request: Request) -> PlainTextResponse:
        return PlainTextResponse("whole answer")

    async def streamed(request: Request) -> StreamingResponse:
        async def chunks() -> Any:
            for part in (b"one,", b"two,", b"three"):
                await asyncio.sleep(0.01)
                yield part

        return StreamingResponse(chunks(), media_type="text/plain")

    app = Starlette(routes=[Route("/whole", whole), Route("/stream", streamed)])
    port = _free_port()
    limits = HeaderLimits(16384, 100, "detail")
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=bounded_protocol(limits), log_config=None
    )
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
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
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
