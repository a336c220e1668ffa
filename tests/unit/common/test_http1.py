"""The lean HTTP/1.1 client of the model calls, against real loopback servers that send exact
bytes: framing, keep-alive, limits, deadlines and every failure's class."""

from __future__ import annotations

import asyncio
import gc
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from enclave.common.http1 import (
    BadResponse,
    ConnectFailed,
    ConnectTimeout,
    DeadlineExceeded,
    Disconnected,
    Http1Client,
    InvalidRequest,
    NameNotResolved,
    ReadTimeout,
    Response,
    Timeouts,
    TruncatedBody,
)
from enclave.common.http1.body import Body
from enclave.common.http1.connection import Connection

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
WHOLE = Timeouts(connect=2, total=2)
STREAM = Timeouts(connect=2, read=2)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Server:
    """A loopback server that runs ``handler`` per connection and records what it read."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/completions?x=1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


def answering(*answers: bytes, then_close: bool = False) -> Callable[[Server], Handler]:
    """A handler that answers each request on a connection with the next of ``answers``."""

    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for answer in answers:
                await server.read_request(reader)
                writer.write(answer)
                await writer.drain()
            if not then_close:
                await reader.read()  # keep the connection until the client closes it

        return handler

    return make


def answering_once_released(release: asyncio.Event) -> Callable[[Server], Handler]:
    """A handler that reads a request and answers OK only once ``release`` is set."""

    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            await release.wait()
            writer.write(OK)
            await writer.drain()
            await reader.read()

        return handler

    return make


async def serve(make: Callable[[Server], Handler]) -> Server:
    server = Server(lambda r, w: asyncio.sleep(0))
    server._handler = make(server)
    return await server.__aenter__()


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    async with Http1Client(headers={"User-Agent": "enclave-test"}) as c:
        yield c


async def post(client: Http1Client, url: str, timeouts: Timeouts = WHOLE) -> tuple[int, bytes]:
    response = await client.post(
        url, body=b'{"a":1}', headers={"Content-Type": "application/json"}, timeouts=timeouts
    )
    try:
        return response.status, await response.content.read_all(1 << 20)
    finally:
        response.release()


# -- what goes out ----------------------------------------------------------------------------


async def test_the_request_is_one_exact_http11_message(client: Http1Client) -> None:
    server = await serve(answering(OK))
    await post(client, server.url)
    request = server.requests[0]
    head, body = request.split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/completions?x=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in lines
    assert b"User-Agent: enclave-test" in lines
    assert b"Accept-Encoding: identity" in lines  # never a compressed answer to unpack
    assert b"Content-Length: 7" in lines
    assert body == b'{"a":1}'
    await server.__aexit__()


@pytest.mark.parametrize(
    "name, value",
    [
        ("X-Key", "a\r\nInjected: yes"),
        ("X-Key", "a\nb"),
        ("X-Key", "a\0b"),
        ("Bad Name", "secret-value"),
    ],
)
async def test_headers_that_would_split_the_request_are_refused(
    client: Http1Client, name: str, value: str
) -> None:
    server = await serve(answering(OK))
    with pytest.raises(InvalidRequest) as refused:
        await client.post(server.url, body=b"", headers={name: value}, timeouts=WHOLE)
    assert "Injected" not in str(refused.value) and value not in str(refused.value)
    assert server.requests == []  # nothing was sent
    await server.__aexit__()


async def test_urls_that_are_not_http_are_refused(client: Http1Client) -> None:
    for url in ("ftp://127.0.0.1/x", "/relative", "http:///nohost"):
        with pytest.raises(InvalidRequest):
            await client.post(url, body=b"", headers={}, timeouts=WHOLE)


# -- framing and keep-alive -------------------------------------------------------------------


async def test_a_connection_is_reused_for_calls_in_a_row(client: Http1Client) -> None:
    server = await serve(answering(OK, OK, OK))
    for _ in range(3):
        assert await post(client, server.url) == (200, b"{}")
    assert server.connections == 1
    await server.__aexit__()


async def test_chunked_answers_are_unframed(client: Http1Client) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    )
    server = await serve(answering(chunked, OK))
    assert await post(client, server.url) == (200, b"abcdefg")
    assert await post(client, server.url) == (200, b"{}")  # still in step
    assert server.connections == 1
    await server.__aexit__()


async def test_connection_close_answers_are_not_reused(client: Http1Client) -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
    server = await serve(answering(closing, then_close=True))
    assert await post(client, server.url) == (200, b"hi")
    assert await post(client, server.url) == (200, b"hi")
    assert server.connections == 2
    await server.__aexit__()


async def test_a_body_without_length_ends_with_the_connection(client: Http1Client) -> None:
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"
    server = await serve(answering(until_close, then_close=True))
    assert await post(client, server.url) == (200, b"all of it")
    await server.__aexit__()


async def test_informational_answers_are_skipped(client: Http1Client) -> None:
    server = await serve(answering(b"HTTP/1.1 100 Continue\r\n\r\n" + OK))
    assert await post(client, server.url) == (200, b"{}")
    await server.__aexit__()


async def test_error_answers_keep_status_headers_and_body(client: Http1Client) -> None:
    busy = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nbusy"
    server = await serve(answering(busy))
    response = await client.post(server.url, body=b"", headers={}, timeouts=WHOLE)
    assert response.status == 429
    assert response.headers["retry-after"] == "3"  # case-insensitive
    assert await response.content.read(64 * 1024) == b"busy"
    response.release()
    await server.__aexit__()


async def test_redirects_are_answers_not_followed(client: Http1Client) -> None:
    moved = b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n"
    server = await serve(answering(moved))
    assert (await post(client, server.url))[0] == 302
    assert len(server.requests) == 1
    await server.__aexit__()


async def test_stream_lines_arrive_as_sent(client: Http1Client) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for frame in (b"data: one\n\n", b"data: t", b"wo\n\ndata: three"):
            writer.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await reader.read()

    server = await serve(lambda s: handler)
    response = await client.post(server.url, body=b"", headers={}, timeouts=STREAM)
    lines = [line async for line in response.content]
    response.release()
    assert lines == [b"data: one\n", b"\n", b"data: two\n", b"\n", b"data: three"]
    await server.__aexit__()


# -- limits -----------------------------------------------------------------------------------


async def test_oversized_headers_are_a_bad_response(client: Http1Client) -> None:
    huge = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n"
    server = await serve(answering(huge))
    with pytest.raises(BadResponse, match="headers over"):
        await post(client, server.url)
    await server.__aexit__()


async def test_compressed_answers_are_refused(client: Http1Client) -> None:
    gzipped = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\nxx"
    server = await serve(answering(gzipped))
    with pytest.raises(BadResponse, match="compressed"):
        await post(client, server.url)
    await server.__aexit__()


async def test_garbage_is_a_bad_response(client: Http1Client) -> None:
    server = await serve(answering(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"))
    with pytest.raises(BadResponse):
        await post(client, server.url)
    await server.__aexit__()


async def test_read_all_stops_at_its_limit(client: Http1Client) -> None:
    server = await serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"))
    response = await client.post(server.url, body=b"", headers={}, timeouts=WHOLE)
    with pytest.raises(ValueError, match="exceeds 5 bytes"):
        await response.content.read_all(5)
    response.release()
    await server.__aexit__()


async def test_a_slow_reader_pauses_the_socket() -> None:
    # Back-pressure: the client stops reading at the high-water mark, so the server's writes
    # back up instead of the gateway buffering the whole answer.
    sent = asyncio.Event()
    size = 8 * 1024 * 1024

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"x" * size)
        await writer.drain()
        sent.set()
        await reader.read()

    server = await serve(lambda s: handler)
    async with Http1Client() as client:
        response = await client.post(server.url, body=b"", headers={}, timeouts=STREAM)
        await asyncio.sleep(0.3)
        assert not sent.is_set()  # the server is blocked: nobody reads
        got = 0
        async for chunk in response.content.chunks():
            got += len(chunk)
        assert got == size
        response.release()
    await server.__aexit__()


def test_lines_over_the_limit_are_refused() -> None:
    async def read(data: bytes) -> list[bytes]:
        body = Body(asyncio.get_running_loop(), max_line=8)
        body.feed(data)
        body.feed_eof()
        return [line async for line in body]

    assert asyncio.run(read(b"short\n")) == [b"short\n"]
    with pytest.raises(BadResponse, match="longer than 8"):
        asyncio.run(read(b"much too long\n"))
    with pytest.raises(BadResponse, match="longer than 8"):
        asyncio.run(read(b"x" * 9 + b"\n"))


# -- failures ---------------------------------------------------------------------------------


async def test_a_refused_connection_is_connect_failed(client: Http1Client) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectFailed) as failed:
        await post(client, f"http://127.0.0.1:{port}/v1")
    assert isinstance(failed.value.os_error, ConnectionRefusedError)


async def test_an_unresolvable_name_is_name_not_resolved() -> None:
    async def nxdomain(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async with Http1Client(resolve=nxdomain) as client:
        with pytest.raises(NameNotResolved):
            await post(client, "http://no-such-host.invalid/v1")


async def test_the_resolver_can_refuse_an_address() -> None:
    # The gateway's egress rules run here, on the addresses about to be connected to.
    async def refuse(host: str, port: int) -> list[str]:
        raise PermissionError(f"{host} resolves to 169.254.169.254")

    async with Http1Client(resolve=refuse) as client:
        with pytest.raises(ConnectFailed) as refused:
            await post(client, "http://rebinding.example/v1")
    assert isinstance(refused.value.os_error, PermissionError)


async def test_a_silent_server_is_a_deadline_or_read_timeout(client: Http1Client) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await serve(lambda s: silent)
    with pytest.raises(DeadlineExceeded):
        await post(client, server.url, Timeouts(connect=1, total=0.2))
    with pytest.raises(ReadTimeout):
        await post(client, server.url, Timeouts(connect=1, read=0.2))
    await server.__aexit__()


# The wait for an answer's head is bounded by one timer per connection, armed by the first
# call and kept for the next ones: each call must still end at its own limit, never at an
# earlier call's, and never late.


def answered_once_then_silent(server: Server) -> Handler:
    """Answers the first request on a connection at once; reads the next and never answers."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await server.read_request(reader)
        await reader.read()

    return handler


@pytest.mark.parametrize(
    ("timeouts", "error", "message"),
    [
        (Timeouts(connect=1, total=0.3), DeadlineExceeded, "no answer within the call's deadline"),
        (Timeouts(connect=1, read=0.3), ReadTimeout, "no answer for 0.3 s"),
        (Timeouts(connect=1, total=0.3, read=5), DeadlineExceeded, "call's deadline"),
        (Timeouts(connect=1, total=5, read=0.3), ReadTimeout, "no answer for 0.3 s"),
    ],
)
async def test_a_reused_connection_times_out_at_its_own_calls_limit(
    client: Http1Client, timeouts: Timeouts, error: type[Exception], message: str
) -> None:
    # The first call on the connection armed its timer for 0.3 s after it began; when that
    # fires the second call (begun 0.1 s later) still has 0.1 s left.
    server = await serve(answered_once_then_silent)
    loop = asyncio.get_running_loop()
    assert await post(client, server.url, timeouts) == (200, b"{}")
    await asyncio.sleep(0.1)
    started = loop.time()
    with pytest.raises(error, match=message):
        await post(client, server.url, timeouts)
    elapsed = loop.time() - started
    assert 0.3 <= elapsed < 0.55
    assert server.connections == 1 and len(server.requests) == 2  # the same connection
    await server.__aexit__()


@pytest.mark.parametrize(
    ("first", "second", "error"),
    [
        (Timeouts(connect=1, total=5), Timeouts(connect=1, total=0.2), DeadlineExceeded),
        (Timeouts(connect=1, read=5), Timeouts(connect=1, read=0.2), ReadTimeout),
        (Timeouts(connect=1, total=5), Timeouts(connect=1, read=0.2), ReadTimeout),
    ],
)
async def test_a_call_with_a_shorter_limit_than_the_last_one_is_not_held_to_it(
    client: Http1Client, first: Timeouts, second: Timeouts, error: type[Exception]
) -> None:
    server = await serve(answered_once_then_silent)
    loop = asyncio.get_running_loop()
    assert await post(client, server.url, first) == (200, b"{}")
    started = loop.time()
    with pytest.raises(error):
        await post(client, server.url, second)
    assert 0.2 <= loop.time() - started < 0.45
    assert server.connections == 1 and len(server.requests) == 2
    await server.__aexit__()


async def test_a_call_without_limits_outlives_an_earlier_calls_timer(
    client: Http1Client,
) -> None:
    async def answer_late_the_second_time(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await server.read_request(reader)
        await asyncio.sleep(0.3)  # past the first call's deadline
        writer.write(OK)
        await reader.read()

    server = await serve(lambda s: answer_late_the_second_time)
    assert await post(client, server.url, Timeouts(connect=1, total=0.1)) == (200, b"{}")
    assert await post(client, server.url, Timeouts(connect=1)) == (200, b"{}")
    assert server.connections == 1
    await server.__aexit__()


async def test_a_late_answer_after_a_timeout_is_not_the_next_calls() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await asyncio.sleep(0.3)
        writer.write(OK)  # the answer to a call that timed out
        await writer.drain()
        await server.read_request(reader)
        writer.write(OK)
        await reader.read()

    server = await serve(lambda s: slow)
    async with Http1Client(max_connections=1) as client:
        with pytest.raises(DeadlineExceeded):
            await post(client, server.url, Timeouts(connect=1, total=0.1))
        assert await post(client, server.url) == (200, b"{}")
    assert server.connections == 2  # the timed-out call's connection was dropped
    await server.__aexit__()


@pytest.mark.parametrize(
    ("timeouts", "error", "at_least"),
    [
        # The deadline counts from the call's start, the wait for room included...
        (Timeouts(connect=1, total=0.5, read=0.4), DeadlineExceeded, 0.5),
        # ...the read timeout from the moment the request is sent (after about 0.25 s).
        (Timeouts(connect=1, read=0.3), ReadTimeout, 0.55),
    ],
)
async def test_a_call_that_waited_for_a_connection_keeps_its_limits(
    timeouts: Timeouts, error: type[Exception], at_least: float
) -> None:
    release = asyncio.Event()
    busy_server = await serve(answering_once_released(release))
    silent_server = await serve(answering_once_released(asyncio.Event()))
    loop = asyncio.get_running_loop()
    async with Http1Client(max_connections=1) as client:
        busy = asyncio.create_task(post(client, busy_server.url))
        await asyncio.sleep(0.05)
        started = loop.time()
        waiting = asyncio.create_task(post(client, silent_server.url, timeouts))
        await asyncio.sleep(0.25)
        release.set()
        assert await busy == (200, b"{}")
        with pytest.raises(error):
            await waiting
        assert at_least <= loop.time() - started < at_least + 0.25
    await busy_server.__aexit__()
    await silent_server.__aexit__()


async def test_a_stream_that_stalls_mid_body_times_out(client: Http1Client) -> None:
    server = await serve(
        answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
    )
    response = await client.post(server.url, body=b"", headers={}, timeouts=Timeouts(1, read=0.2))
    assert await response.content.read(5) == b"first"
    with pytest.raises(ReadTimeout):
        await response.content.read(1)
    response.close()
    await server.__aexit__()


async def test_a_cut_body_is_truncated(client: Http1Client) -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"
    server = await serve(answering(cut, then_close=True))
    with pytest.raises(TruncatedBody):
        await post(client, server.url)
    await server.__aexit__()


async def test_a_close_before_answering_is_disconnected(client: Http1Client) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)

    server = await serve(lambda s: hang_up)
    with pytest.raises(Disconnected) as closed:
        await post(client, server.url)
    assert closed.value.reused is False
    await server.__aexit__()


async def test_a_pooled_connection_closed_while_idle_is_a_reused_disconnect(
    client: Http1Client,
) -> None:
    # The server answers once then closes without saying so; the client learns it at the
    # next call (or earlier, when the close arrives first): either way no answer is mixed up.
    server = await serve(answering(OK, then_close=True))
    assert await post(client, server.url) == (200, b"{}")
    try:
        assert await post(client, server.url) == (200, b"{}")  # the pool dropped it in time
    except Disconnected as exc:
        assert exc.reused
    await server.__aexit__()


async def test_connections_idle_past_the_keepalive_are_not_reused() -> None:
    server = await serve(answering(OK, OK))
    async with Http1Client(keepalive_s=0.05) as client:
        await post(client, server.url)
        await asyncio.sleep(0.1)
        await post(client, server.url)
    assert server.connections == 2
    await server.__aexit__()


async def test_the_connection_limit_queues_calls_and_bounds_the_wait() -> None:
    release = asyncio.Event()
    server = await serve(answering_once_released(release))
    async with Http1Client(max_connections=1) as client:
        first = asyncio.create_task(post(client, server.url))
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectTimeout):  # no free connection within the connect timeout
            await post(client, server.url, Timeouts(connect=0.1, total=1))
        release.set()
        assert await first == (200, b"{}")
    await server.__aexit__()


async def test_a_cancelled_call_drops_its_connection(client: Http1Client) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await asyncio.sleep(0.2)
        writer.write(OK)  # the answer to a call nobody waits for any more
        await writer.drain()
        await server.read_request(reader)
        writer.write(OK)
        await reader.read()

    server = await serve(lambda s: slow)
    call = asyncio.create_task(post(client, server.url))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # The next call gets a connection of its own: the late answer is never taken for its.
    assert await post(client, server.url) == (200, b"{}")
    assert server.connections == 2
    await server.__aexit__()


async def test_a_chunked_answer_can_be_read_chunk_for_chunk(client: Http1Client) -> None:
    # A relay passes each frame on as it came: two chunks that arrive in one read stay two,
    # one chunk split over two reads stays one.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"3\r\none\r\n3\r\ntwo\r\n")  # two frames in one write
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"5\r\nth")  # one frame in two writes
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"ree\r\n0\r\n\r\n")
        await reader.read()

    server = await serve(lambda s: handler)
    response = await client.post(server.url, body=b"", headers={}, timeouts=STREAM)
    frames = [chunk async for chunk in response.content.http_chunks()]
    response.release()
    assert frames == [b"one", b"two", b"three"]
    await server.__aexit__()


async def test_read_keeps_the_body_and_frees_the_connection(client: Http1Client) -> None:
    server = await serve(answering(OK, OK))
    response = await client.post(server.url, body=b"", headers={}, timeouts=WHOLE)
    assert await response.read() == b"{}"
    assert await response.read() == b"{}"  # looked at twice, read once
    assert await post(client, server.url) == (200, b"{}")
    assert server.connections == 1
    await server.__aexit__()


async def test_a_response_dropped_unreleased_gives_its_connection_back() -> None:
    # A stream whose consumer never started (the caller went away first) holds a connection;
    # once the response is garbage, the connection is closed and its slot is free again.
    server = await serve(answering(OK, OK))
    async with Http1Client(max_connections=1) as one:
        response = await one.post(server.url, body=b"", headers={}, timeouts=WHOLE)
        del response
        gc.collect()
        assert await post(one, server.url, Timeouts(connect=0.5, total=1)) == (200, b"{}")


# -- hostile answers (found by tests/fuzz/test_fuzz_http1.py or by reading) -------------------


def loop_errors() -> list[dict[str, object]]:
    """What reaches the loop's exception handler from now on (an exception escaping a
    protocol callback lands there, not in the call)."""
    seen: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: seen.append(context))
    return seen


async def test_a_101_answer_is_a_bad_response(client: Http1Client) -> None:
    # httptools raises HttpParserUpgrade, which is not an HttpParserError: it escaped
    # data_received and asyncio closed the transport with a "Fatal error" log.
    errors = loop_errors()
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
    server = await serve(answering(upgrade))
    with pytest.raises(BadResponse, match="switched protocols"):
        await post(client, server.url)
    await asyncio.sleep(0.01)
    assert errors == []
    await server.__aexit__()


async def test_an_answer_nobody_asked_for_never_reaches_the_next_call(
    client: Http1Client,
) -> None:
    # A whole answer, then the start of another in the same write: the pool took the
    # connection back and the next call read the leftover as its own answer's start.
    extra = OK + b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nleft"
    fresh = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = server.connections == 1
        while True:  # the first connection's answers carry the leftover
            await server.read_request(reader)
            writer.write(extra if first else fresh)
            await writer.drain()

    server = await serve(lambda s: handler)
    assert await post(client, server.url) == (200, b"{}")
    assert await post(client, server.url) == (200, b"fresh")
    assert server.connections == 2
    await server.__aexit__()


async def test_bytes_on_an_idle_connection_close_it(client: Http1Client) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nstale")  # while idle
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
        await reader.read()

    server = await serve(lambda s: handler)
    assert await post(client, server.url) == (200, b"{}")
    await asyncio.sleep(0.1)
    assert not client._open  # dropped as soon as the stray bytes came
    assert await post(client, server.url) == (200, b"{}")  # a fresh connection, in step
    await server.__aexit__()


async def test_a_length_with_trailing_blanks_still_frames_the_body(client: Http1Client) -> None:
    # llhttp keeps "10 " as the value; "10 ".isdigit() is False, so the body was taken as
    # ending with the connection: a cut body read as whole.
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10 \r\n\r\n01234"
    server = await serve(answering(cut, then_close=True))
    response = await client.post(server.url, body=b"", headers={}, timeouts=WHOLE)
    assert response.content_length == 10
    with pytest.raises(TruncatedBody):
        await response.content.read_all(1 << 20)
    response.release()
    await server.__aexit__()


@pytest.mark.parametrize("coding", [b"gzip", b"chunked, gzip", b"xchunked"])
async def test_transfer_codings_other_than_chunked_are_refused(
    client: Http1Client, coding: bytes
) -> None:
    # llhttp reads such a body until the connection ends, still encoded (a way around the
    # Content-Encoding check); "xchunked" also passed the old substring test for chunked.
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\nxxxx"
    server = await serve(answering(answer, then_close=True))
    with pytest.raises(BadResponse, match="transfer coding"):
        await post(client, server.url)
    await server.__aexit__()


def endless_line_after(start: bytes) -> Callable[[Server], Handler]:
    """A handler that answers ``start`` and then a line that never ends (3 MiB of it)."""

    def make(server: Server) -> Handler:
        async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(start)
            for _ in range(200):
                writer.write(b"a" * 16 * 1024)
                await writer.drain()
                await asyncio.sleep(0.005)
            await reader.read()

        return endless

    return make


async def test_a_header_line_that_never_ends_is_refused_at_the_limit(
    client: Http1Client,
) -> None:
    # httptools buffers a header value until its line ends, so the per-header check never
    # ran: memory grew for as long as the origin kept sending, until the deadline.
    server = await serve(endless_line_after(b"HTTP/1.1 200 OK\r\nX-Endless: "))
    started = asyncio.get_running_loop().time()
    with pytest.raises(BadResponse, match="headers over"):
        await post(client, server.url, Timeouts(connect=2, total=10))
    assert asyncio.get_running_loop().time() - started < 5
    await server.__aexit__()


async def test_a_trailer_line_that_never_ends_is_refused_at_the_limit(
    client: Http1Client,
) -> None:
    # The same buffering for trailer lines, after the body's last chunk.
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: "
    server = await serve(endless_line_after(chunked))
    response = await client.post(server.url, body=b"", headers={}, timeouts=STREAM)
    with pytest.raises(BadResponse, match="headers over"):
        await asyncio.wait_for(response.content.read_all(1 << 20), 5)
    response.close()
    await server.__aexit__()


async def test_a_call_waiting_for_room_gets_it_when_a_connection_goes_idle() -> None:
    # At the limit, a connection going back to the pool woke no one: a call to another
    # origin waited its whole connect timeout though an idle connection could be closed.
    release = asyncio.Event()
    first = await serve(answering_once_released(release))
    second = await serve(answering(OK))
    async with Http1Client(max_connections=1) as client:
        busy = asyncio.create_task(post(client, first.url))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(post(client, second.url, Timeouts(connect=1, total=2)))
        await asyncio.sleep(0.05)
        release.set()
        assert await busy == (200, b"{}")
        started = asyncio.get_running_loop().time()
        assert await waiting == (200, b"{}")
        assert asyncio.get_running_loop().time() - started < 0.5
    await first.__aexit__()
    await second.__aexit__()


async def test_a_wake_taken_by_a_cancelled_waiter_is_passed_on() -> None:
    client = Http1Client(max_connections=1)
    client._connecting = 1  # the limit is reached
    one = asyncio.create_task(client._slot())
    two = asyncio.create_task(client._slot())
    await asyncio.sleep(0)
    client._connecting = 0
    client._free_slot()  # wakes the first waiter...
    one.cancel()  # ...whose call is cancelled (its timeout) before it runs
    await asyncio.wait_for(two, 1)  # the second one gets the room
    with pytest.raises(asyncio.CancelledError):
        await one
    await client.close()


async def test_a_connection_opened_while_closing_is_not_left_open() -> None:
    resolving = asyncio.Event()
    go_on = asyncio.Event()

    async def slow_resolve(host: str, port: int) -> list[str]:
        resolving.set()
        await go_on.wait()
        return ["127.0.0.1"]

    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        closed.set()

    server = await serve(lambda s: handler)
    client = Http1Client(resolve=slow_resolve)
    call = asyncio.create_task(post(client, server.url))
    await resolving.wait()
    await client.close()
    go_on.set()
    with pytest.raises(RuntimeError, match="closed"):
        await call
    assert not client._open
    await asyncio.wait_for(closed.wait(), 1)  # the origin saw it closed
    await server.__aexit__()


async def test_read_refuses_an_announced_oversized_body_at_once(client: Http1Client) -> None:
    # The headers say 10 MB: refused without waiting for (or buffering) any of it.
    server = await serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n"))
    response = await client.post(server.url, body=b"", headers={}, timeouts=WHOLE)
    with pytest.raises(ValueError, match="10000000 bytes exceeds 5"):
        await asyncio.wait_for(response.read(5), 0.5)
    await server.__aexit__()


# -- the answer's headers: the framing ones read from the raw lines, the rest on demand --------


class FakeTransport:
    """Enough of a transport to drive a :class:`Connection` without a socket."""

    def __init__(self) -> None:
        self.written = b""
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def answer_to(answer: bytes) -> Response:
    """The response a connection makes of ``answer`` (its head's exception raised)."""
    connection = Connection(asyncio.get_running_loop(), lambda c, reusable: None)
    connection.connection_made(FakeTransport())  # type: ignore[arg-type]
    head = connection.send(b"GET / HTTP/1.1\r\n\r\n", None, None)
    connection.data_received(answer)
    return await head


@pytest.mark.parametrize(
    ("lines", "content_length", "chunked"),
    [
        (b"content-LENGTH: 2\r\n", 2, False),
        (b"Content-Length: 2  \r\n", 2, False),
        (b"transfer-ENCODING: chunked\r\n", None, True),
        # Values joined over lines, as CIMultiDict.getall() gave them.
        (b"Transfer-Encoding: gzip\r\nTRANSFER-encoding: chunked\r\n", None, True),
        # The first Content-Encoding counts (CIMultiDict.get()); NBSP (latin-1 \xa0) is
        # stripped as str.strip() does, which bytes.strip() would not.
        (
            b"Content-Encoding: identity\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n",
            2,
            False,
        ),
        (b"content-encoding: IDENTITY\xa0\r\nContent-Length: 2\r\n", 2, False),
        (b"Content-Encoding:\r\nContent-Length: 2\r\n", 2, False),
    ],
)
async def test_framing_headers_are_found_whatever_their_case(
    lines: bytes, content_length: int | None, chunked: bool
) -> None:
    body = b"2\r\nhi\r\n0\r\n\r\n" if chunked else b"hi"
    response = await answer_to(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\n" + body)
    assert response.content_length == content_length
    assert await response.content.read_all(100) == b"hi"


@pytest.mark.parametrize(
    ("lines", "refused"),
    [
        (b"CONTENT-ENCODING: GZip \r\n", "compressed (gzip)"),
        (b"Content-Encoding: br\r\ncontent-encoding: identity\r\n", "compressed (br)"),
        (b"Transfer-Encoding: chunked\r\ntransfer-encoding: gzip\r\n", "transfer coding"),
    ],
)
async def test_framing_headers_refused_whatever_their_case(lines: bytes, refused: str) -> None:
    with pytest.raises(BadResponse, match=re.escape(refused)):
        await answer_to(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\nxx")


async def test_headers_are_all_there_as_received_and_trailers_are_not_among_them() -> None:
    response = await answer_to(
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Type: text/plain; charset=\xe9\r\n"
        b"Transfer-Encoding: chunked\r\nx-a: 2\r\n\r\n"
        b"2\r\nhi\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    assert await response.content.read_all(100) == b"hi"  # the trailer is in, too
    headers = response.headers
    assert list(headers.items()) == [
        ("X-A", "1"),
        ("Content-Type", "text/plain; charset=é"),
        ("Transfer-Encoding", "chunked"),
        ("x-a", "2"),
    ]
    assert headers.getall("x-A") == ["1", "2"]
    assert "X-Trailer" not in headers
    assert response.headers is headers  # built once
