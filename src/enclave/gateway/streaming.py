"""Relaying a model's streamed answer to the client, chunk by chunk.

GitLab's gateway streams code suggestions as raw text deltas (no SSE ``data:`` framing) with
``content-type: text/event-stream``. Each delta is sent as soon as it arrives (no buffering).
If the client goes away the upstream request is cancelled and its connection dropped, so the
model server stops generating for nobody.

Raw text has no way to say "error": when the model fails after the status was sent, the
response is ended without its last chunk (the connection is closed), so HTTP clients report an
incomplete body (curl exit 18, httpx ``RemoteProtocolError``) rather than a short answer that
looks complete; the failure is logged as ``model_stream_failed``. Dialects that have an error
event (GitLab's v4 SSE, Duo Chat's ndjson) emit it from their :class:`TextStream` wrapper.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any, Final, Protocol

from starlette.types import Receive, Scope, Send

from enclave.common.logging import get_logger
from enclave.gateway.models.base import ModelError, TextStream

log = get_logger(__name__)

STREAM_MEDIA_TYPE: Final = "text/event-stream; charset=utf-8"


class TextFilter(Protocol):
    """Incremental post-processing of a streamed answer (e.g. removing markdown fences)."""

    def feed(self, delta: str) -> str: ...

    def flush(self) -> str: ...


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_until_disconnect(
    pump: Coroutine[Any, Any, None], receive: Receive
) -> tuple[asyncio.Task[None], bool]:
    """Run ``pump`` (which sends the response) while watching for the client going away.

    Returns the pump's task (finished, failed or cancelled: check it) and whether the client
    left before it finished. Neither task is left running, so the caller can then release or
    drop its upstream connection.
    """
    task = asyncio.ensure_future(pump)
    watch = asyncio.ensure_future(_wait_for_disconnect(receive))
    client_left = False
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            client_left = True
            log.info("client_disconnected_during_stream")
    finally:
        for running in (task, watch):
            running.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)
    return task, client_left


class _Aborted(Exception):
    """The upstream failed mid-answer: end the response without completing it."""


class RawTextStreamResponse:
    """ASGI response that relays a :class:`TextStream` as raw text chunks."""

    def __init__(
        self,
        stream: TextStream,
        text_filter: TextFilter | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._stream = stream
        self._filter = text_filter
        raw = {
            "content-type": STREAM_MEDIA_TYPE,
            "cache-control": "no-cache",
            "x-accel-buffering": "no",  # tell nginx-style proxies not to buffer either
        }
        raw.update({k.lower(): v for k, v in (headers or {}).items()})
        self._headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in raw.items()]
        self.status_code = 200
        self.client_disconnected = False

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        try:
            async for delta in self._stream:
                text = self._filter.feed(delta) if self._filter is not None else delta
                if text:
                    await send(
                        {"type": "http.response.body", "body": text.encode(), "more_body": True}
                    )
            tail = self._filter.flush() if self._filter is not None else ""
        except ModelError as exc:
            log.warning("model_stream_failed", reason=exc.reason, dialect="raw_text")
            raise _Aborted from None
        await send({"type": "http.response.body", "body": tail.encode(), "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            pump, self.client_disconnected = await run_until_disconnect(self._pump(send), receive)
        finally:
            # Releases the connection when the answer was complete, drops it otherwise.
            await self._stream.aclose()
        if pump.cancelled():
            return
        error = pump.exception()
        if isinstance(error, _Aborted):
            return  # the server closes the connection: the client sees an incomplete answer
        if isinstance(error, OSError):
            self.client_disconnected = True  # some servers raise on send after a disconnect
            return
        if error is not None:
            raise error
