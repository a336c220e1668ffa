"""Bounds on the request head (request line + headers) for both servers, and their 431.

llhttp hands header bytes to httptools, which concatenates a header's pieces until it ends, so
without a bound one 32 MiB header (or a million small ones) would be held in memory before any
ASGI middleware runs. The server protocol (:mod:`enclave.common.server_protocol`) counts the raw
bytes fed to the parser while a request's head is incomplete, and the headers once it is
complete; past either limit it answers ``431 Request Header Fields Too Large`` (built here) and
closes, so memory per connection stays bounded by the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

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


def response_431(limits: HeaderLimits, what: str, setting: str) -> bytes:
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
