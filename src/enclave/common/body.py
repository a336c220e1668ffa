"""Reading a request body with a size limit counted while it is read (both servers).

A declared ``Content-Length`` over the limit is refused before anything is read; a chunked
body (no length) is refused as soon as the bytes read pass the limit, so at most ``limit``
bytes (plus one chunk) are ever held, whatever the client sends.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import ClientDisconnect, Request
from starlette.types import Scope

_CONTENT_LENGTH: Final = b"content-length"


class BodyTooLarge(Exception):
    """The request body is larger than ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


def declared_length(scope: Scope) -> int | None:
    """The first ``Content-Length`` header's value (as ``request.headers`` would give it),
    when it is a plain decimal number; None otherwise."""
    # One pass over the raw names (the server hands them over lowercased) instead of
    # building Starlette's Headers for a single look-up.
    for name, value in scope["headers"]:
        if name == _CONTENT_LENGTH:
            # bytes.isdigit() is ASCII digits only (str.isdigit() also takes "²", which
            # int() refuses).
            return int(value) if value.isdigit() else None
    return None


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or :class:`BodyTooLarge` once it is known to exceed ``limit``."""
    declared = declared_length(request.scope)
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    if hasattr(request, "_body") or request._stream_consumed:
        # Read before (cached by a caller, or consumed): Starlette's stream says what it has.
        return await _read_stream(request, limit)
    # The usual case, a body nobody has read yet: the server's messages read directly, as
    # Request.stream() reads them, without its generator's resumes per message.
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                # What stream() records: a later body()/stream() says "Stream consumed".
                request._stream_consumed = True
                return b"".join(chunks)
        elif kind == "http.disconnect":
            request._is_disconnected = True
            raise ClientDisconnect()


async def _read_stream(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
