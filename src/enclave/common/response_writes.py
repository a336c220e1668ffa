"""One write per small response instead of two.

uvicorn writes a response's status line and headers as soon as the app sends
``http.response.start``, then the body in a second write. Each write is a syscall and, on the
loopback and LAN hops Enclave lives on (instance → gateway, editor → instance), a TCP segment of
its own that wakes the reader twice: the instance's gateway client and wrk both saw two reads per
answer (bench/README.md, issue 14). :class:`CoalescingTransport` holds the head back until the
response's next write, which for a whole answer follows at once (Starlette sends the body right
after the start, without yielding to the event loop), and joins them into one write. A stream's
head never waits for its first chunk: it is flushed on the next turn of the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """Wraps one request/response cycle's transport: the cycle's first write (the head) is
    joined to its second, or written on the next loop turn if no second write comes first.
    Everything else goes straight to the real transport."""

    __slots__ = ("_first", "_flush_handle", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._first = True  # the next write is the cycle's first: the head
        self._held: bytes | None = None
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._transport.write(held + bytes(data))
        elif self._first:
            self._first = False
            self._held = bytes(data)
            self._flush_handle = self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        self._held = None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        # is_closing, get_extra_info, write_eof, ...: the real transport's.
        return getattr(self._transport, name)
