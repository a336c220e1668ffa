"""The protocol Enclave served with before ``enclave.common.server_protocol``: the oracle of
``test_server_protocol.py``.

uvicorn's own httptools protocol, with the request-head limits and the one-write answers that
Enclave added around it (formerly ``http_limits.BoundedHttpToolsProtocol`` and
``response_writes.CoalescingTransport``). The differential tests run every case through this
and through the lean protocol and compare what a client sees.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from enclave.common import http_limits
from enclave.common.http_limits import HeaderLimits, response_431
from enclave.common.logging import get_logger

log = get_logger("enclave.http")


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


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with limits on the head's size and header count."""

    def __init__(self, *args: Any, limits: HeaderLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._in_head = True  # the next bytes belong to a request line or headers
        self._head_bytes = 0
        self._heads_completed = 0
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a 431: what the client still sends is dropped
        if self._in_head:
            room = self._limits.max_bytes - self._head_bytes
            if len(data) > room:
                # Feed only what fits; if the head is still open after it, it is too big.
                self._head_bytes += room
                heads_before = self._heads_completed
                super().data_received(data[:room])
                if self._refused or self.transport.is_closing():
                    return
                if self._heads_completed == heads_before:
                    self._refuse(
                        f"the request line and headers are over {self._limits.max_bytes} bytes",
                        self._limits.bytes_setting,
                    )
                    return
                self.data_received(data[room:])  # body, or the next request's head
                return
            self._head_bytes += len(data)
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads_completed += 1
        if self._refused:
            return  # the rest of a read after a refusal: never starts the app
        # Counted once the head is complete, not per header (the hot path): the byte limit
        # already bounds how many headers can be held until then.
        if len(self.headers) > self._limits.max_count:
            self._refuse(f"more than {self._limits.max_count} headers", self._limits.count_setting)
            return
        super().on_headers_complete()
        # The cycle just made writes its head and a whole body in one go (response_writes.py).
        cycle = self.cycle
        if cycle is not None:
            joined = CoalescingTransport(self.transport, self.loop)
            cycle.transport = cast(asyncio.Transport, joined)

    def on_body(self, body: bytes) -> None:
        if not self._refused:  # a refused request has no cycle to take its body
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # after a 431 the answer is sent and the writing side shut
            super().send_400_response(msg)

    def _refuse(self, what: str, setting: str) -> None:
        self._refused = True
        # No app ran, so no request line is logged for it: say here what was refused.
        log.info("request_head_refused", status=431, reason=what, client=self.client)
        transport = self.transport
        transport.write(response_431(self._limits, what, setting))
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(http_limits.LINGER_S, transport.close)


def bounded_protocol(limits: HeaderLimits) -> type[asyncio.Protocol]:
    """The reference protocol with ``limits``, built as uvicorn's ``http`` option expects."""
    return cast(type[asyncio.Protocol], functools.partial(BoundedHttpToolsProtocol, limits=limits))
