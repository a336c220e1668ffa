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
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class PumpOutcome:
    """How a relayed stream ended: ``error`` is what the pump raised (None when it finished or
    was stopped because the client left)."""

    error: Exception | None
    client_left: bool


async def run_until_disconnect(pump: Coroutine[Any, Any, None], receive: Receive) -> PumpOutcome:
    """Run ``pump`` (which sends the response) while watching for the client going away.

    The pump runs in the calling task, so the answer's head and first chunk go out in the
    same turn of the event loop as the call (a task of its own would start a turn later, and
    cost a task plus ``asyncio.wait`` per stream). A watcher task waits for the client's
    ``http.disconnect`` and cancels the pump if it comes first. Nothing is left running when
    this returns, so the caller can then release or drop its upstream connection.
    """
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - ASGI apps always run in a task
        raise RuntimeError("run_until_disconnect must run inside an asyncio task")
    client_left = False

    async def watch() -> None:
        nonlocal client_left
        while (await receive())["type"] != "http.disconnect":
            pass
        client_left = True
        task.cancel()  # the pump is the only thing the calling task awaits meanwhile

    watcher = asyncio.get_running_loop().create_task(watch())
    error: Exception | None = None
    try:
        await pump
    except asyncio.CancelledError:
        if not client_left:
            raise  # cancelled from outside (shutdown): not ours to swallow
    except Exception as exc:
        error = exc
    finally:
        # The watcher only runs while the pump is awaited: cancelled here, it can no longer
        # cancel the calling task.
        watcher.cancel()
    if client_left:
        # Our own cancellation, delivered (or swallowed by the pump): take it back, so the
        # caller's clean-up and any enclosing timeout see an uncancelled task.
        if task.cancelling():
            task.uncancel()
        log.info("client_disconnected_during_stream")
    return PumpOutcome(error, client_left)


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
            outcome = await run_until_disconnect(self._pump(send), receive)
        finally:
            # Releases the connection when the answer was complete, drops it otherwise.
            await self._stream.aclose()
        self.client_disconnected = outcome.client_left
        error = outcome.error
        if isinstance(error, _Aborted):
            return  # the server closes the connection: the client sees an incomplete answer
        if isinstance(error, OSError):
            self.client_disconnected = True  # some servers raise on send after a disconnect
            return
        if error is not None:
            raise error
