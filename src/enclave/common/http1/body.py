"""The body of one response as it arrives: a bounded buffer with back-pressure and deadlines.

The connection feeds it (:meth:`Body.feed`, :meth:`Body.feed_eof`, :meth:`Body.fail`); the
caller reads it whole (:meth:`Body.read_all`), in pieces (:meth:`Body.read`,
:meth:`Body.chunks`) or line by line (``async for line in body``, for server-sent events).
Every wait is bounded by the call's read timeout and its deadline, so a stalled origin ends
in :class:`~enclave.common.http1.errors.ReadTimeout` or
:class:`~enclave.common.http1.errors.DeadlineExceeded`, never a hang.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Final, Protocol

from enclave.common.http1.errors import BadResponse, DeadlineExceeded, ReadTimeout

# Above this many unread bytes the connection stops reading from its socket until the caller
# catches up: a slow consumer must not make the gateway buffer a model's whole answer.
HIGH_WATER_BYTES: Final = 256 * 1024
# The longest line (of a server-sent event stream) read before the answer is called unreadable.
MAX_LINE_BYTES: Final = 1024 * 1024


class FlowControl(Protocol):
    """The reading side of a connection (an asyncio transport)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def _expire(waiter: asyncio.Future[None], error: Exception) -> None:
    if not waiter.done():
        waiter.set_exception(error)


class Body:
    """Bytes of one response body, read by one consumer."""

    __slots__ = (
        "_buffer",
        "_eof",
        "_error",
        "_flow",
        "_high_water",
        "_loop",
        "_marks",
        "_max_line",
        "_paused",
        "_scanned",
        "_taken",
        "_waiter",
        "deadline",
        "read_timeout",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        flow: FlowControl | None = None,
        *,
        read_timeout: float | None = None,
        deadline: float | None = None,
        high_water: int = HIGH_WATER_BYTES,
        max_line: int = MAX_LINE_BYTES,
    ) -> None:
        self._loop = loop
        self._flow = flow
        self._buffer = bytearray()
        self._eof = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._high_water = high_water
        self._max_line = max_line
        self._scanned = 0  # bytes of the buffer known to hold no newline
        self._taken = 0  # bytes read so far
        # Where each HTTP chunk that arrived whole ends (offsets counted from the body's start),
        # for relaying a chunked answer chunk for chunk; None: not a chunked answer.
        self._marks: deque[int] | None = None
        # Seconds a single wait may take; loop time by which the whole call must be done.
        self.read_timeout = read_timeout
        self.deadline = deadline

    # -- the connection's side --------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._buffer += data
        self._wake()
        if self._flow is not None and not self._paused and len(self._buffer) > self._high_water:
            self._paused = True
            self._flow.pause_reading()

    def start_chunks(self) -> None:
        """The answer is chunked: :meth:`end_chunk` will mark where each chunk ends."""
        self._marks = deque()

    def end_chunk(self) -> None:
        marks = self._marks
        if marks is not None:
            end = self._taken + len(self._buffer)
            if not marks or marks[-1] < end:  # empty chunks mark nothing
                marks.append(end)
                self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def fail(self, error: Exception) -> None:
        """End the body with ``error`` (the connection broke before its end)."""
        if not self._eof:
            self._error = error
            self._wake()

    @property
    def at_eof(self) -> bool:
        """Whether the whole body has arrived and been read."""
        return self._eof and not self._buffer

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived (read or not)."""
        return self._eof

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the caller's side ------------------------------------------------------------------

    async def _wait(self) -> None:
        """Until more bytes, the end or an error arrive; bounded by the call's limits."""
        if self._error is not None:
            raise self._error
        loop = self._loop
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        handle = None
        when, error = self._limit(loop.time())
        if when is not None and error is not None:
            handle = loop.call_at(when, _expire, waiter, error)
        if self._paused:
            self._paused = False
            if self._flow is not None:
                self._flow.resume_reading()
        try:
            await waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()
        if self._error is not None:
            raise self._error

    def _limit(self, now: float) -> tuple[float | None, Exception | None]:
        read_at = None if self.read_timeout is None else now + self.read_timeout
        deadline = self.deadline
        if deadline is not None and (read_at is None or deadline <= read_at):
            return deadline, DeadlineExceeded("the answer was not complete within its deadline")
        if read_at is not None:
            return read_at, ReadTimeout(f"nothing arrived for {self.read_timeout:g} s")
        return None, None

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._taken += n
        self._scanned = 0
        if self._paused and len(self._buffer) <= self._high_water // 2 and self._flow is not None:
            self._paused = False
            self._flow.resume_reading()
        return data

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all of them when ``n`` < 0): waits until that many arrived or the
        body ended."""
        while not self._eof and (n < 0 or len(self._buffer) < n):
            await self._wait()
        return self._take(len(self._buffer) if n < 0 else min(n, len(self._buffer)))

    async def read_all(self, limit: int) -> bytes:
        """The whole body; :class:`ValueError` as soon as it is over ``limit`` bytes."""
        while not self._eof:
            if len(self._buffer) > limit:
                raise ValueError(f"response exceeds {limit} bytes")
            await self._wait()
        if len(self._buffer) > limit:
            raise ValueError(f"response exceeds {limit} bytes")
        return self._take(len(self._buffer))

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body in the pieces it arrives in."""
        while True:
            if self._buffer:
                yield self._take(len(self._buffer))
            elif self._eof:
                return
            else:
                await self._wait()

    async def http_chunks(self) -> AsyncIterator[bytes]:
        """A chunked answer chunk for chunk, as the origin framed it: a relay passes each
        frame on as it came (two frames that arrived together are not merged, a frame split
        over two reads is not cut). Other answers in the pieces they arrive in."""
        marks = self._marks
        if marks is None:
            async for piece in self.chunks():
                yield piece
            return
        while True:
            while marks and marks[0] <= self._taken:
                marks.popleft()  # already read by another reader
            if marks:
                yield self._take(marks.popleft() - self._taken)
            elif self._eof:
                if self._buffer:
                    yield self._take(len(self._buffer))
                return
            else:
                await self._wait()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.lines()

    async def lines(self) -> AsyncGenerator[bytes, None]:
        """Each line with its ``\\n``; the last one without when the body does not end in one.

        :class:`BadResponse` for a line over the line limit (a stream that never breaks its
        lines would otherwise be buffered without end).
        """
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                if end >= self._max_line:
                    raise BadResponse(f"a line longer than {self._max_line} bytes")
                yield self._take(end + 1)
                continue
            if self._eof:
                if self._buffer:
                    yield self._take(len(self._buffer))
                return
            self._scanned = len(self._buffer)
            if self._scanned > self._max_line:
                raise BadResponse(f"a line longer than {self._max_line} bytes")
            await self._wait()
