"""A whole JSON answer of a hot endpoint, sent as two ASGI messages.

Starlette's :class:`~starlette.responses.Response` builds its header list through a general
path on every answer (header mapping, media type and charset checks, a websocket branch); the
success answers of the model endpoints need none of it. :class:`JsonAnswer` sends the same two
messages Starlette's ``Response(body, media_type="application/json")`` sends for a status-200
answer: the same headers in the same order, the same body.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from starlette.types import Receive, Scope, Send

_CONTENT_TYPE: Final = (b"content-type", b"application/json")


class JsonAnswer:
    """``200 OK`` with ``content`` as orjson renders it (``default=str``, as ``json_response``)."""

    __slots__ = ("body",)

    status_code: Final = 200

    def __init__(self, content: Any) -> None:
        self.body = orjson.dumps(content, default=str)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.body
        headers = [(b"content-length", str(len(body)).encode("latin-1")), _CONTENT_TYPE]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


__all__ = ["JsonAnswer"]
