"""Bounds on the request head (request line + headers) for both servers.

uvicorn's httptools protocol has no limit of its own: llhttp hands header bytes to httptools,
which concatenates a header's pieces until it ends, and uvicorn keeps every header, so one
32 MiB header (or a million small ones) is held in memory before any ASGI middleware runs.
:class:`BoundedHttpToolsProtocol` counts the raw bytes fed to the parser while a request's head
is incomplete, and the headers once it is complete; past either limit it answers ``431 Request
Header Fields Too Large`` and closes, so memory per connection stays bounded by the limit.
The hot path pays one comparison per read and one per request.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any, cast

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from enclave.common.logging import get_logger
from enclave.common.response_writes import CoalescingTransport

log = get_logger("enclave.http")

# After a 431, keep reading (and discarding) what the client is still sending for this long
# before closing: closing with unread bytes makes the kernel send a reset, and the client could
# lose the 431 itself (a "lingering close", as nginx does).
LINGER_S = 2.0


@dataclass(frozen=True)
class HeaderLimits:
    """How big a request head may be, and the error body's key (``message`` on the instance,
    ``detail`` on the gateway, as their other errors)."""

    max_bytes: int
    max_count: int
    error_key: str = "message"
    bytes_setting: str = ""
    count_setting: str = ""


def _response_431(limits: HeaderLimits, what: str, setting: str) -> bytes:
    hint = f" (the server's {setting})" if setting else ""
    body = orjson.dumps(
        {
            limits.error_key: f"431 Request Header Fields Too Large - {what}{hint}; "
            "send fewer or smaller headers, or a shorter URL"
        }
    )
    return b"".join(
        [
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


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
        transport.write(_response_431(self._limits, what, setting))
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_S, transport.close)


def bounded_protocol(limits: HeaderLimits) -> type[asyncio.Protocol]:
    """What to pass as uvicorn's ``http``: the bounded protocol with ``limits``.

    A :func:`functools.partial` of a module-level class, so it pickles into worker processes
    (uvicorn spawns them with the config); uvicorn only ever calls it."""
    return cast(type[asyncio.Protocol], functools.partial(BoundedHttpToolsProtocol, limits=limits))
