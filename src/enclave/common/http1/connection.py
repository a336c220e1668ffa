"""One keep-alive HTTP/1.1 connection to one origin, one call at a time.

The request goes out in one write; the answer is parsed by httptools (llhttp, the parser
uvicorn uses on the server side), which also undoes chunked framing. Headers are bounded;
bodies go to a :class:`~enclave.common.http1.body.Body` with back-pressure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

import httptools

from enclave.common.http1.body import Body
from enclave.common.http1.errors import (
    BadResponse,
    DeadlineExceeded,
    Disconnected,
    ReadTimeout,
    TruncatedBody,
)
from enclave.common.http1.response import Response

# All header lines of one answer together (aiohttp's and nginx's default is in this range).
MAX_HEADER_BYTES: Final = 64 * 1024
# The lengths of the names on_headers_complete reads (Content-Length, Content-Encoding,
# Transfer-Encoding).
_FRAMING_LENGTHS: Final = frozenset(
    map(len, (b"content-length", b"content-encoding", b"transfer-encoding"))
)


class _Refused(Exception):
    """Raised inside a parser callback; the callback's reason is kept on the connection."""


class Connection(asyncio.Protocol):
    """The protocol of one pooled connection: writes calls, parses answers."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_done: Callable[[Connection, bool], None],
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self._loop = loop
        self._on_done = on_done  # the pool: (connection, reusable) when a call is over
        self._max_header_bytes = max_header_bytes
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False  # served a call before: it may have been closed while idle
        self.pool_key: tuple[bool, str, int, int] = (False, "", 0, 0)
        self.idle_since = 0.0
        self._head: asyncio.Future[Response] | None = None
        self._body: Body | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._informational = False
        self._asked = False  # a call is waiting for (the rest of) its answer
        # Bytes received since the parser last delivered something (headers, body bytes, a
        # chunk's end): header and trailer lines, which httptools buffers whole.
        self._stalled_bytes = 0
        self._until_close = False  # the body ends when the connection does (no length given)
        self._complete = False
        self._keep_alive = False
        self._refusal: BadResponse | None = None
        self._read_timeout: float | None = None
        self._deadline: float | None = None
        # The wait for an answer's head is bounded by one timer per connection, armed lazily,
        # rather than one timer made and cancelled per call: most calls are answered long
        # before their limit, and the next call on the connection reuses the armed timer.
        # ``_head_expires``: loop time the waiting call gives up (None: no limit);
        # ``_head_deadline``: whether that is the call's deadline (else its read timeout).
        self._head_expires: float | None = None
        self._head_deadline = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when the timer fires

    # -- the pool's side --------------------------------------------------------------------

    def send(
        self, data: bytes, read_timeout: float | None, deadline: float | None
    ) -> asyncio.Future[Response]:
        """Write one call; the future gets the answer once its headers are in, or
        :class:`ReadTimeout` / :class:`DeadlineExceeded` when they are not in time."""
        self._headers = []
        self._header_bytes = 0
        self._body = None
        self._complete = False
        self._until_close = False
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._asked = True
        self._stalled_bytes = 0
        head: asyncio.Future[Response] = self._loop.create_future()
        self._head = head
        if self.transport is None or self.closed or self.transport.is_closing():
            head.set_exception(Disconnected("the connection is closed", self.reused))
        else:
            self.transport.write(data)
            self._limit_head(read_timeout, deadline)
        return head

    def _limit_head(self, read_timeout: float | None, deadline: float | None) -> None:
        """Bound the wait for the head: the deadline or the read timeout, whichever is first."""
        loop = self._loop
        read_at = None if read_timeout is None else loop.time() + read_timeout
        if deadline is not None and (read_at is None or deadline <= read_at):
            expires, self._head_deadline = deadline, True
        elif read_at is not None:
            expires, self._head_deadline = read_at, False
        else:
            self._head_expires = None
            return
        self._head_expires = expires
        timer = self._timer
        # An armed timer that fires no later serves: then it re-arms for the time left.
        if timer is None or self._timer_at > expires:
            if timer is not None:
                timer.cancel()
            self._timer_at = expires
            self._timer = loop.call_at(expires, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        head, expires = self._head, self._head_expires
        if head is None or head.done() or expires is None:
            return  # no call is waiting for a head: the next call arms the timer again
        if expires > self._timer_at:  # armed for an earlier call: this one has time left
            self._timer_at = expires
            self._timer = self._loop.call_at(expires, self._on_timer)
        elif self._head_deadline:
            head.set_exception(DeadlineExceeded("no answer within the call's deadline"))
        else:
            head.set_exception(ReadTimeout(f"no answer for {self._read_timeout:g} s"))

    def finish(self, reusable: bool) -> None:
        """The caller is done with the answer; reusable when its body was read to the end."""
        keep = reusable and self._complete and self._keep_alive and not self.closed
        if not keep:
            self.close()
        self._on_done(self, keep)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping anything unsent (a call given up half-way)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio's side ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they are transports.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._asked:
            # Bytes while no call is in flight (after a whole answer, or before any call):
            # kept, they would be read as the start of the next call's answer.
            self._broken(BadResponse("the origin sent bytes nobody asked for"))
            return
        self._stalled_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            reason = self._refusal or BadResponse(f"the answer is not valid HTTP/1.1 ({exc})")
            self._broken(reason)
            return
        except httptools.HttpParserUpgrade:  # not an HttpParserError: a 101 to an upgrade
            self._broken(BadResponse("the origin switched protocols, which was not asked for"))
            return
        # httptools buffers a header (or trailer) line until its end: a line that never ends
        # must not grow without bound (a reset mid-read undercounts by at most one read).
        if self._stalled_bytes > self._max_header_bytes and not self.closed:
            self._broken(BadResponse(f"headers over {self._max_header_bytes} bytes"))

    def eof_received(self) -> bool | None:
        return None  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        head, body = self._head, self._body
        if head is not None and not head.done():
            head.set_exception(
                Disconnected("the origin closed the connection before answering", self.reused)
            )
        elif body is not None and not self._complete:
            if self._until_close:
                self._complete = True
                body.feed_eof()
            else:
                body.fail(TruncatedBody("the connection ended before the whole answer"))
        self._on_done(self, False)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _broken(self, reason: Exception) -> None:
        head, body = self._head, self._body
        if head is not None and not head.done():
            head.set_exception(reason)
        elif body is not None:
            body.fail(reason)
        self.abort()

    # -- httptools' callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._asked:  # a second answer after the whole first one
            self._refusal = BadResponse("the origin sent an answer nobody asked for")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._max_header_bytes:
            self._refusal = BadResponse(f"headers over {self._max_header_bytes} bytes")
            raise _Refused
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._stalled_bytes = 0
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: the answer follows
            self._informational = True
            self._headers = []
            self._header_bytes = 0
            return
        # The three headers needed here, found in the raw lines: decoding them all into a
        # CIMultiDict is left to Response.headers, which most callers never read. Names are
        # tokens (llhttp refuses others): ASCII, so bytes.lower() matches as CIMultiDict does.
        # Values are decoded (latin-1) before str.strip() and lower(), as they were read from
        # the CIMultiDict. The first Content-Encoding and Content-Length, as .get() answers.
        raw = self._headers
        encoding = length_value = None
        transfer: list[str] = []
        for name, value in raw:
            if len(name) in _FRAMING_LENGTHS:  # skips lower() for nearly every other name
                lower = name.lower()
                if lower == b"content-length":
                    if length_value is None:
                        length_value = value
                elif lower == b"transfer-encoding":
                    transfer.append(value.decode("latin-1"))
                elif lower == b"content-encoding" and encoding is None:
                    encoding = value
        coding = "identity" if encoding is None else encoding.decode("latin-1")
        coding = coding.strip().lower()
        if coding not in ("identity", ""):
            # Calls ask for identity: a compressed answer is a misbehaving origin (and
            # decompressing it unbounded would be a way to exhaust memory).
            self._refusal = BadResponse(
                f"the answer is compressed ({coding}) though the call asked for none"
            )
            raise _Refused
        codings = ",".join(transfer).lower().split(",")
        chunked = codings[-1].strip() == "chunked"
        if codings != [""] and not chunked:
            # llhttp would read such a body until the connection ends, still encoded.
            self._refusal = BadResponse("the answer has a transfer coding other than chunked")
            raise _Refused
        # llhttp has checked the value (digits, no duplicates) but keeps trailing blanks;
        # isascii(): str.isdigit() also takes "²", which int() refuses.
        length = "" if length_value is None else length_value.decode("latin-1").strip()
        content_length = int(length) if length.isascii() and length.isdigit() else None
        self._until_close = content_length is None and not chunked and status not in (204, 304)
        body = Body(self._loop, self, read_timeout=self._read_timeout, deadline=self._deadline)
        if chunked:
            body.start_chunks()
        self._body = body
        # Handed over and forgotten: the connection must not keep its answer alive (an answer
        # dropped unreleased is closed when it is collected, see Response.__del__).
        head, self._head = self._head, None
        # The answer keeps these lines; trailers (on_header again) go to a list of their own.
        self._headers = []
        if head is not None and not head.done():
            head.set_result(Response(status, raw, body, content_length, self))

    def on_body(self, data: bytes) -> None:
        self._stalled_bytes = 0
        if self._body is not None:
            self._body.feed(data)

    def on_chunk_complete(self) -> None:
        self._stalled_bytes = 0
        if self._body is not None:
            self._body.end_chunk()

    def on_message_complete(self) -> None:
        self._stalled_bytes = 0
        if self._informational:
            self._informational = False
            return
        self._complete = True
        self._asked = False
        # Read now: the parser forgets it once the next message begins.
        self._keep_alive = self._parser.should_keep_alive()
        if self._body is not None:
            self._body.feed_eof()
