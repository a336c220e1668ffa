"""The HTTP/1.1 protocol both servers speak on each connection, run by uvicorn's server.

uvicorn keeps what it is good at (sockets, workers, lifespan, signals, graceful shutdown); this
module replaces only its per-connection protocol (``httptools_impl``), which cost ~20 µs of
each gateway request in-process and ~10 % of the gateway's CPU under load (bench/README.md, issue
14). Parsing is still llhttp's, through httptools, with uvicorn's settings; what is leaner:

- one object per request (:class:`_Exchange`) with slots, and no ``asyncio.Event``: ``receive``
  waits on a future only when it has to;
- the keep-alive timer is armed once per idle spell and re-armed lazily, not set and cancelled
  on every request;
- a response head is rendered in one join and checked in one pass (uvicorn's per-header checks
  run only when that pass finds something, so the errors are uvicorn's);
- a whole answer leaves in one write: the head waits for the body's first bytes, but never past
  the loop turn it was sent in (a stream's head, or a slow body's, goes out on its own then).

What a client sees is uvicorn's, byte for byte: status lines, ``date``, ``connection: close``,
chunked framing, 100-continue, 400 for a broken request, 500 for a failing app, pipelining,
HEAD, 204/304, and the 431 of :mod:`enclave.common.http_limits` for a head over the limits
(``tests/unit/common/test_server_protocol.py`` compares the two on every case).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import http
import re
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httptools
from uvicorn.config import Config
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

from enclave.common import http_limits
from enclave.common.http_limits import HeaderLimits, response_431
from enclave.common.logging import get_logger

log = get_logger("enclave.http")

# An app should return None; uvicorn checks that it did (run()).
ASGIApp = Callable[..., Awaitable[Any]]
Message = dict[str, Any]

# As uvicorn: above this much unread request body, stop reading until the app asks for it.
HIGH_WATER = 65536

# uvicorn's checks of a response header name and value.
_BAD_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
# The one-pass check of a rendered head: no control byte but the lines' CR LF (and tabs).
_CONTROL = re.compile(b"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (code, phrase)


_STATUS_LINES = {code: _status_line(code) for code in range(100, 600)}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHUNK_END = b"0\r\n\r\n"
_BAD_REQUEST = "Invalid HTTP request received."


def _closing_answer(status: int, text: bytes) -> tuple[Message, Message]:
    """The two messages of uvicorn's own plain-text answers (500, 503), which close."""
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(text)),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": text}


_500 = _closing_answer(500, b"Internal Server Error")
_503 = _closing_answer(503, b"Service Unavailable")


async def _service_unavailable(scope: Any, receive: Any, send: Any) -> None:
    await send(_503[0])
    await send(_503[1])


class LeanHttpProtocol(asyncio.Protocol):
    """One client connection: parse requests, run each on the app, write the answers."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HeaderLimits,
    ) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.app: ASGIApp = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.app_state = app_state
        self.root_path = config.root_path
        self.limit_concurrency = config.limit_concurrency
        self.reset_contextvars = config.reset_contextvars
        self.timeout_keep_alive = config.timeout_keep_alive
        self.asgi_version = config.asgi_version
        self.limits = limits
        self.parser = httptools.HttpRequestParser(self)
        # As uvicorn: answer the first of pipelined requests even if the client half-closed.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)

        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.read_paused = False
        self.write_paused = False
        # Set while the transport takes more: made at the first pause (a rare path), an Event so
        # that a cancelled sender cannot cancel another's wait.
        self.writable: asyncio.Event | None = None
        self.pipeline: deque[tuple[_Exchange, ASGIApp]] = deque()
        self.exchange: _Exchange | None = None  # the request being parsed or the last one
        self.keepalive: asyncio.TimerHandle | None = None
        self.idle_since = 0.0  # loop time the last answer ended (keep-alive timer)

        # Per request, while its head is parsed.
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.scope: dict[str, Any] = {}
        self.expect_100 = False
        # Head limits (http_limits.py): bytes fed while a head is open, heads completed.
        self.in_head = True
        self.head_bytes = 0
        self.heads_completed = 0
        self.refused = False

    # -- asyncio's side ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connections.add(cast(Any, self))  # uvicorn's set, typed for its own protocols
        self.transport = cast(asyncio.Transport, transport)
        self.server = get_local_addr(self.transport)
        self.client = get_remote_addr(self.transport)
        self.scheme = "https" if is_ssl(self.transport) else "http"

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(cast(Any, self))
        exchange = self.exchange
        if exchange is not None:
            if not exchange.complete:
                exchange.disconnected = True
            exchange.wake()
        self.resume_writing()
        if exc is None:
            self.transport.close()
        if self.keepalive is not None:
            self.keepalive.cancel()
            self.keepalive = None

    def eof_received(self) -> None:
        pass

    def pause_writing(self) -> None:
        if not self.write_paused:
            self.write_paused = True
            if self.writable is None:
                self.writable = asyncio.Event()
            self.writable.clear()

    def resume_writing(self) -> None:
        if self.write_paused:
            self.write_paused = False
            if self.writable is not None:
                self.writable.set()

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # lingering after a 431: what the client still sends is dropped
        self.idle_since = 0.0  # not idle: the keep-alive timer leaves the connection alone
        if self.in_head:
            room = self.limits.max_bytes - self.head_bytes
            if len(data) > room:
                # Feed only what fits; if the head is still open after it, it is too big.
                self.head_bytes += room
                heads_before = self.heads_completed
                self._feed(data[:room])
                if self.refused or self.transport.is_closing():
                    return
                if self.heads_completed == heads_before:
                    self._refuse(
                        f"the request line and headers are over {self.limits.max_bytes} bytes",
                        self.limits.bytes_setting,
                    )
                    return
                self.data_received(data[room:])  # body, or the next request's head
                return
            self.head_bytes += len(data)
        # _feed's body inline: this runs on every read, and a call less counts here.
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parser_stopped(exc)

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parser_stopped(exc)

    def _parser_stopped(self, exc: Exception) -> None:
        if isinstance(exc, httptools.HttpParserUpgrade):  # not an HttpParserError
            if self._websocket_upgrade():
                self._hand_over_to_websocket()
            else:
                log.warning("unsupported_upgrade_request", client=self.client)
        else:
            log.warning("invalid_http_request", client=self.client)
            self._send_400()

    # -- httptools' callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.expect_100 = False
        self.headers = []
        self.scope = {
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100 = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.heads_completed += 1
        if self.refused:
            return  # the rest of a read after a refusal: never starts the app
        # Counted once the head is complete: the byte limit bounds them until then.
        if len(self.headers) > self.limits.max_count:
            self._refuse(f"more than {self.limits.max_count} headers", self.limits.count_setting)
            return
        parser = self.parser
        scope = self.scope
        scope["method"] = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        if version != "1.1":
            scope["http_version"] = version
        if parser.should_upgrade() and self._websocket_upgrade():
            return  # handed over once the parser stops (data_received)
        url = httptools.parse_url(self.url)
        raw_path = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        root = self.root_path
        if root:
            path = root + path
            raw_path = root.encode("ascii") + raw_path
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = url.query or b""

        app = self.app
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            log.warning("concurrency_limit_exceeded", limit=limit)
            app = _service_unavailable
        previous = self.exchange
        exchange = _Exchange(
            self,
            scope,
            self.expect_100,
            keep_alive=version != "1.0" and parser.should_keep_alive(),
        )
        self.exchange = exchange
        if previous is None or previous.complete:
            self._start(exchange, app)
        else:  # pipelined: it waits for the answer before it
            self.pause_reading()
            self.pipeline.appendleft((exchange, app))

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if self.refused or exchange is None or exchange.complete or self._upgrading():
            return
        exchange.body += body
        if len(exchange.body) > HIGH_WATER:
            self.pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        if self.refused:
            return
        self.in_head = True
        self.head_bytes = 0
        exchange = self.exchange
        if exchange is None or exchange.complete or self._upgrading():
            return
        exchange.more_body = False
        exchange.wake()

    # -- requests ---------------------------------------------------------------------------

    def _start(self, exchange: _Exchange, app: ASGIApp) -> None:
        if self.reset_contextvars:
            # uvicorn's opt-in: no context leaks from the lifespan into requests.
            task = self.loop.create_task(exchange.run(app), context=contextvars.Context())
        else:
            task = self.loop.create_task(exchange.run(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def answered(self) -> None:
        """An answer is complete: start the next pipelined request, or wait for one."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self.read_paused:
            self.resume_reading()
        if self.pipeline:
            exchange, app = self.pipeline.pop()
            self._start(exchange, app)
            return
        self.idle_since = self.loop.time()
        if self.keepalive is None:
            self.keepalive = self.loop.call_later(self.timeout_keep_alive, self._keepalive_expired)

    def _keepalive_expired(self) -> None:
        """Close a connection idle for the keep-alive timeout since its last answer."""
        self.keepalive = None
        if self.transport.is_closing() or not self.idle_since:
            return  # closed, or a request came in (its answer re-arms the timer)
        left = self.idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:  # another answer ended since the timer was armed
            self.keepalive = self.loop.call_later(left, self._keepalive_expired)
        else:
            self.transport.close()

    def shutdown(self) -> None:
        """The server is stopping: close when idle, else after the answer being made."""
        exchange = self.exchange
        if exchange is None or exchange.complete:
            self.transport.close()
        else:
            exchange.keep_alive = False

    # -- refusals ---------------------------------------------------------------------------

    def _send_400(self) -> None:
        if self.refused:  # after a 431 the answer is sent and the writing side shut
            return
        content = [_STATUS_LINES[400]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(_BAD_REQUEST),
            b"connection: close\r\n\r\n",
            _BAD_REQUEST.encode("ascii"),
        ]
        self.transport.write(b"".join(content))
        self.transport.close()

    def _refuse(self, what: str, setting: str) -> None:
        self.refused = True
        # No app ran, so no request line is logged for it: say here what was refused.
        log.info("request_head_refused", status=431, reason=what, client=self.client)
        transport = self.transport
        transport.write(response_431(self.limits, what, setting))
        if transport.can_write_eof():
            transport.write_eof()
        # Keep reading (and dropping) for a while: closing with unread bytes sends a reset
        # that could cost the client the 431 itself.
        self.loop.call_later(http_limits.LINGER_S, transport.close)

    # -- upgrades (uvicorn's WebSocket hand-over; other upgrades are served as plain HTTP) ------

    def _upgrading(self) -> bool:
        return self.parser.should_upgrade() and self._websocket_upgrade()

    def _websocket_upgrade(self) -> bool:
        if self.config.ws_protocol_class is None:
            return False
        connection: list[bytes] = []
        upgrade = None
        for name, value in self.headers:
            if name == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
            elif name == b"upgrade":
                upgrade = value.lower()
        return b"upgrade" in connection and upgrade == b"websocket"

    def _hand_over_to_websocket(self) -> None:
        self.connections.discard(cast(Any, self))
        lines = [self.scope["method"].encode(), b" ", self.url, b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            lines += [name, b": ", value, b"\r\n"]
        lines.append(b"\r\n")
        protocol_class = cast(Any, self.config.ws_protocol_class)
        protocol = protocol_class(
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        protocol.connection_made(self.transport)
        protocol.data_received(b"".join(lines))
        self.transport.set_protocol(protocol)


class _Exchange:
    """One request and its answer: the ASGI ``receive`` and ``send`` of that request.

    The defaults are class attributes: a request sets only what differs from them, which is
    cheaper than setting sixteen slots per request.
    """

    body = b""
    more_body = True
    # Something for receive() happened since it last returned (body, end, answer, close):
    # uvicorn's asyncio.Event, without creating one per request.
    pending = False
    waiters: list[asyncio.Future[None]] | None = None  # receive() calls waiting for it
    disconnected = False
    started = False
    complete = False
    finished = False  # run() is over: a late answer starts nothing more
    chunked: bool | None = None
    head_only = False  # a HEAD request: the answer's body is not sent
    left = 0  # body bytes the declared Content-Length still expects
    held: bytes | None = None  # the head, until the body's first bytes
    flush: asyncio.Handle | None = None

    def __init__(
        self,
        connection: LeanHttpProtocol,
        scope: dict[str, Any],
        expect_100: bool,
        keep_alive: bool,
    ) -> None:
        self.connection = connection
        self.scope = scope
        self.expect_100 = expect_100
        self.keep_alive = keep_alive

    def wake(self) -> None:
        self.pending = True
        if self.waiters:
            for waiter in self.waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def run(self, app: ASGIApp) -> None:
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            log.error("asgi_app_failed", exc_info=exc)
            if not self.started:
                await self._send_500()
            else:
                self._close()
        else:
            if result is not None:
                log.error("asgi_app_returned_a_value", value=repr(result)[:200])
                self._close()
            elif not self.started and not self.disconnected:
                log.error("asgi_app_returned_without_starting_the_answer")
                await self._send_500()
            elif not self.complete and not self.disconnected:
                log.error("asgi_app_returned_without_completing_the_answer")
                self._close()
        finally:
            self.finished = True

    async def _send_500(self) -> None:
        await self.send(_500[0])
        await self.send(_500[1])

    # -- ASGI -------------------------------------------------------------------------------

    async def receive(self) -> Message:
        connection = self.connection
        if self.expect_100 and not connection.transport.is_closing():
            connection.transport.write(_CONTINUE)
            self.expect_100 = False
        if not self.disconnected and not self.complete:
            connection.resume_reading()
            if not self.pending:
                # Several tasks may wait at once (a disconnect watcher beside the app), and
                # one may be cancelled (Starlette's is_disconnected()): each waits on its own.
                waiter: asyncio.Future[None] = connection.loop.create_future()
                waiters = self.waiters
                if waiters is None:
                    waiters = self.waiters = []
                waiters.append(waiter)
                try:
                    await waiter
                finally:
                    waiters.remove(waiter)
            self.pending = False
        if self.disconnected or self.complete:
            return {"type": "http.disconnect"}  # a new dict: the app may keep or change it
        message = {"type": "http.request", "body": self.body, "more_body": self.more_body}
        self.body = b""
        return message

    async def send(self, message: Message) -> None:
        connection = self.connection
        if connection.write_paused and not self.disconnected and connection.writable is not None:
            await connection.writable.wait()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{kind}'."
                )
            self.started = True
            self.expect_100 = False
            self._head(message["status"], message.get("headers", ()))
        elif not self.complete:
            if kind != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
            self._body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{kind}' sent, after response already completed."
            )

    # -- the answer on the wire -------------------------------------------------------------

    def _head(self, status: int, headers: Any) -> None:
        """Render the status line and headers (uvicorn's rules); hold them for the body."""
        lines = [_STATUS_LINES[status], _default_block(self.connection.server_state)]
        names = _NAMES
        closes = False
        for raw_name, value in headers:
            name = names.get(raw_name) or _checked_name(raw_name)
            if name in _FRAMING:
                if name == b"content-length":
                    if self.chunked is None:
                        self.left = int(value.decode())
                        self.chunked = False
                elif name == b"transfer-encoding":
                    if value.lower() == b"chunked":
                        self.left = 0
                        self.chunked = True
                elif b"close" in [token.lower().strip() for token in value.split(b",")]:
                    self.keep_alive = False  # connection: close
                    closes = True
            lines.append(name + b": " + value + b"\r\n")
        if not self.keep_alive and not closes:
            lines.append(b"connection: close\r\n")
        head_only = self.head_only = self.scope["method"] == "HEAD"
        if self.chunked is None and not head_only and status not in (204, 304):
            self.chunked = True
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        # One pass over the whole head: no control byte, and CR and LF only as line ends.
        # Anything else is a bad value: find it as uvicorn does, to raise uvicorn's error.
        breaks = head.count(b"\n")
        if _CONTROL.search(head) or breaks != head.count(b"\r") or breaks != _line_count(lines):
            for _, value in (*self.connection.server_state.default_headers, *headers):
                if _BAD_VALUE.search(value):
                    raise RuntimeError("Invalid HTTP header value.")
            raise RuntimeError("Invalid HTTP header value.")  # headers given as an iterator
        # Held for the body's first bytes (a whole answer is one write), but never past this
        # loop turn: a stream's head, or any head whose body is slow, must reach the client.
        self.held = head
        self.flush = self.connection.loop.call_soon(self._flush)

    def _body(self, body: bytes, more_body: bool) -> None:
        if self.head_only:
            self.left = 0
            self._write(b"")
        elif self.chunked:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            self._write(data if more_body else data + _CHUNK_END)
        else:
            if len(body) > self.left:
                self._flush()
                raise RuntimeError("Response content longer than Content-Length")
            self.left -= len(body)
            self._write(body)
        if not more_body:
            if self.left != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.complete = True
            self.wake()
            connection = self.connection
            if not self.keep_alive:
                connection.transport.close()
            if not self.finished:
                connection.answered()

    def _write(self, data: bytes) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if self.flush is not None:
                self.flush.cancel()
                self.flush = None
            data = held + data
        if data:
            self.connection.transport.write(data)

    def _flush(self) -> None:
        """Write a held head (the next loop turn came before the body's first bytes)."""
        self.flush = None
        held = self.held
        self.held = None
        if held is not None and not self.connection.transport.is_closing():
            self.connection.transport.write(held)

    def _close(self) -> None:
        if self.flush is not None:
            self.flush.cancel()
        self._flush()  # what uvicorn would have written already
        self.connection.transport.close()


# The header names that change how the answer is framed (uvicorn reads these three).
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))

# The server's own headers (``date``) rendered once per list: uvicorn builds a new list each
# second, so the identity of the list says when to render again.
_default_rendered: tuple[object, bytes] = (None, b"")


def _default_block(state: ServerState) -> bytes:
    global _default_rendered
    headers = state.default_headers
    source, block = _default_rendered
    if source is not headers:
        block = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        _default_rendered = (headers, block)
    return block


def _line_count(lines: list[bytes]) -> int:
    """How many line ends the head should hold: one per element, and the default block's."""
    return len(lines) - 1 + lines[1].count(b"\n")


# Response header names seen valid, lowercased: apps send the same few names on every answer.
_NAMES: dict[bytes, bytes] = {}
_NAMES_MAX = 1024


def _checked_name(name: bytes) -> bytes:
    """``name`` lowercased, once it is known to hold no character a header name cannot;
    uvicorn's ``RuntimeError`` otherwise."""
    lowered = _NAMES.get(name)
    if lowered is None:
        if _BAD_NAME.search(name):
            raise RuntimeError("Invalid HTTP header name.")
        lowered = name.lower()
        if len(_NAMES) < _NAMES_MAX:
            _NAMES[name] = lowered
    return lowered


def lean_protocol(limits: HeaderLimits) -> type[asyncio.Protocol]:
    """What to pass as uvicorn's ``http``: this protocol with the request head ``limits``.

    A :func:`functools.partial` of a module-level class, so it pickles into worker processes
    (uvicorn spawns them with the config); uvicorn only ever calls it."""
    return cast(type[asyncio.Protocol], functools.partial(LeanHttpProtocol, limits=limits))
