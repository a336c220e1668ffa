"""A fake OpenAI-compatible model server for the benchmark, as cheap as Python gets.

Raw :class:`asyncio.Protocol` on uvloop, every answer precomputed, so that "direct" (load
generator → this server) is the physical limit of the machine and whatever a proxy adds on top
is the proxy's cost.

* ``POST /v1/completions`` (or ``/completions``): ``text_completion`` answer;
* ``POST /v1/chat/completions`` (or ``/chat/completions``): ``chat.completion`` answer;
* either with ``"stream": true``: server-sent events, one per HTTP chunk, ``--stream-frames``
  frames paced ``--stream-gap-ms`` apart, then ``data: [DONE]``. Frame *i* carries the text
  :func:`frame_text` (a sequence number), so a client can tell a lost or merged frame;
* ``GET /health``: ``{"ok": true}``; ``GET /stats``: request counts of this process.

Every answer (and the first frame of a stream) is sent ``--latency-ms`` after the request has
been read. ``--workers N`` forks N processes that accept on one shared listening socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from typing import Final, cast

import orjson

MODEL: Final = "codestral-bench"
COMPLETION_TEXT: Final = "    return a + b\n"
USAGE: Final = {"prompt_tokens": 27, "completion_tokens": 7, "total_tokens": 34}


def frame_text(seq: int) -> str:
    """Text of stream frame ``seq``: unique and self-delimiting, so merges show."""
    return f"<{seq:04d}>"


def _http_response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\n"
        b"Content-Type: " + content_type + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: keep-alive\r\n\r\n" + body
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def completion_body(created: int) -> bytes:
    return orjson.dumps(
        {
            "id": "cmpl-bench",
            "object": "text_completion",
            "created": created,
            "model": MODEL,
            "choices": [
                {"text": COMPLETION_TEXT, "index": 0, "finish_reason": "stop", "logprobs": None}
            ],
            "usage": USAGE,
        }
    )


def chat_body(created: int) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": created,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": COMPLETION_TEXT},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": USAGE,
        }
    )


def stream_events(kind: str, frames: int, created: int) -> list[bytes]:
    """The SSE events of one streamed answer (``kind``: completions or chat), in order."""
    events: list[bytes] = []
    for seq in range(frames):
        last = seq == frames - 1
        if kind == "completions":
            event: dict[str, object] = {
                "id": "cmpl-bench",
                "object": "text_completion",
                "created": created,
                "model": MODEL,
                "choices": [
                    {
                        "text": frame_text(seq),
                        "index": 0,
                        "finish_reason": "stop" if last else None,
                        "logprobs": None,
                    }
                ],
            }
        else:
            delta: dict[str, str] = {"content": frame_text(seq)}
            if seq == 0:
                delta["role"] = "assistant"
            event = {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": created,
                "model": MODEL,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": "stop" if last else None}
                ],
            }
        if last:
            event["usage"] = USAGE
        events.append(b"data: " + orjson.dumps(event) + b"\n\n")
    return events


_STREAM_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Connection: keep-alive\r\n\r\n"
)
_DONE: Final = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class Answers:
    """Everything this server ever sends, built once."""

    def __init__(self, latency_s: float, frames: int, gap_s: float) -> None:
        created = int(time.time())
        self.latency_s = latency_s
        self.gap_s = gap_s
        self.completion = _http_response("200 OK", completion_body(created))
        self.chat = _http_response("200 OK", chat_body(created))
        self.health = _http_response("200 OK", b'{"ok":true}')
        self.not_found = _http_response("404 Not Found", b'{"error":{"message":"not found"}}')
        self.completion_frames = [_chunk(e) for e in stream_events("completions", frames, created)]
        self.chat_frames = [_chunk(e) for e in stream_events("chat", frames, created)]
        self.counts = {"requests": 0, "completions": 0, "chat": 0, "streams": 0, "other": 0}

    def stats(self) -> bytes:
        return _http_response("200 OK", orjson.dumps({"pid": os.getpid(), **self.counts}))


_COMPLETIONS_PATHS: Final = frozenset({b"/v1/completions", b"/completions"})
_CHAT_PATHS: Final = frozenset({b"/v1/chat/completions", b"/chat/completions"})


class UpstreamProtocol(asyncio.Protocol):
    """Minimal HTTP/1.1 keep-alive server: Content-Length bodies, no pipelining surprises."""

    def __init__(self, answers: Answers, loop: asyncio.AbstractEventLoop) -> None:
        self._answers = answers
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._timers: list[asyncio.TimerHandle] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end].lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else None])
            total = end + 4 + length
            if len(buffer) < total:
                break
            body = buffer[end + 4 : total]
            buffer = buffer[total:]
            self._handle(head, body)
        self._buffer = buffer

    def _handle(self, head: bytes, body: bytes) -> None:
        answers = self._answers
        answers.counts["requests"] += 1
        path = head.split(b" ", 2)[1].split(b"?", 1)[0]
        streaming = b'"stream":true' in body or b'"stream": true' in body
        if path in _COMPLETIONS_PATHS:
            if streaming:
                answers.counts["streams"] += 1
                self._stream(answers.completion_frames)
                return
            answers.counts["completions"] += 1
            self._answer(answers.completion)
        elif path in _CHAT_PATHS:
            if streaming:
                answers.counts["streams"] += 1
                self._stream(answers.chat_frames)
                return
            answers.counts["chat"] += 1
            self._answer(answers.chat)
        else:
            answers.counts["other"] += 1
            if path == b"/health":
                self._answer(answers.health, delay=False)
            elif path == b"/stats":
                self._answer(answers.stats(), delay=False)
            else:
                self._answer(answers.not_found, delay=False)
        if b"\r\nconnection: close" in head:
            # close() flushes what was written; a delayed answer closes after its write.
            self._loop.call_later(answers.latency_s, self._close_transport)

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _answer(self, response: bytes, delay: bool = True) -> None:
        latency = self._answers.latency_s
        if delay and latency > 0:
            self._loop.call_later(latency, self._write, response)
        elif self._transport is not None:
            self._transport.write(response)

    def _stream(self, frames: list[bytes]) -> None:
        latency, gap = self._answers.latency_s, self._answers.gap_s
        self._timers = [t for t in self._timers if not t.cancelled()]
        first = _STREAM_HEAD + frames[0]
        if latency > 0:
            self._timers.append(self._loop.call_later(latency, self._write, first))
        else:
            self._write(first)
        for seq in range(1, len(frames)):
            self._timers.append(
                self._loop.call_later(latency + seq * gap, self._write, frames[seq])
            )
        end = latency + (len(frames) - 1) * gap
        self._timers.append(self._loop.call_later(end, self._write, _DONE))


async def _serve(sock: socket.socket, answers: Answers) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol(answers, loop), sock=sock)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def _run_worker(sock: socket.socket, args: argparse.Namespace) -> None:
    import uvloop

    answers = Answers(args.latency_ms / 1000, args.stream_frames, args.stream_gap_ms / 1000)
    uvloop.run(_serve(sock, answers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--stream-frames", type=int, default=20)
    parser.add_argument("--stream-gap-ms", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.host != "127.0.0.1" and not args.host.startswith("127."):
        parser.error("the benchmark upstream only listens on loopback")
    sock = _listen(args.host, args.port)
    children: list[int] = []
    for _ in range(max(0, args.workers - 1)):
        pid = os.fork()
        if pid == 0:
            _run_worker(sock, args)
            os._exit(0)
        children.append(pid)
    try:
        _run_worker(sock, args)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
