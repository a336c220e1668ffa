"""Small HTTP helpers shared by the gateway's endpoints: orjson responses, bounded reads of
outbound answers, connection-failure reasons."""

from __future__ import annotations

import errno
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from starlette.responses import Response

from enclave.common.body import BodyTooLarge

JSON_MEDIA_TYPE = "application/json"

# The largest request body the gateway reads: two 100 000-character file halves, up to 100
# context items and a prompt fit comfortably; anything bigger is refused before parsing.
MAX_BODY_BYTES = 8 * 1024 * 1024


def json_response(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response rendered with orjson (several times faster than the stdlib encoder)."""
    try:
        body = orjson.dumps(content, default=str)
    except TypeError:
        # orjson stops at 64-bit integers; a 422 may echo a bigger one a client sent.
        body = json.dumps(content, default=str, ensure_ascii=False).encode()
    return Response(
        body,
        status_code=status_code,
        headers=headers,
        media_type=JSON_MEDIA_TYPE,
    )


def detail(message: str, status_code: int, headers: Mapping[str, str] | None = None) -> Response:
    """FastAPI-style error body ``{"detail": "..."}`` (GitLab's gateway shape for 403/5xx)."""
    return json_response({"detail": message}, status_code, headers)


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """An outbound response's body, or :class:`ValueError` when it exceeds ``limit`` bytes."""
    if response.content_length is not None and response.content_length > limit:
        raise ValueError(f"response of {response.content_length} bytes exceeds {limit}")
    buffer = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        buffer += chunk
        if len(buffer) > limit:
            raise ValueError(f"response exceeds {limit} bytes")
    return bytes(buffer)


_ERRNO_TEXT = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
}


def connect_failure(error: OSError) -> str:
    """A short reason for a failed outbound connection ("connection refused", ...)."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if error.errno in _ERRNO_TEXT:
        return _ERRNO_TEXT[error.errno]
    return error.strerror or str(error) or type(error).__name__


__all__ = [
    "JSON_MEDIA_TYPE",
    "MAX_BODY_BYTES",
    "BodyTooLarge",
    "connect_failure",
    "detail",
    "json_response",
    "read_limited",
]
