"""Fallback closed-loop load generator for machines without wrk (asyncio protocols on uvloop).

Same inputs as ``wrk/post.lua`` (``WRK_BODY_FILE``, ``WRK_HEADERS_FILE``) and the same
``WRK_JSON`` summary line. It is slower than wrk — it shares the CPU with the servers and costs
more per request — so its ceilings are lower; the report names the tool that produced each
figure. Only plain ``Content-Length`` responses are understood (the non-streaming answers).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import orjson

PERCENTILES = (1, 5, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 95, 97, 98, 99, 99.5, 99.9, 99.99)


class Stats:
    def __init__(self) -> None:
        self.latencies_us: list[int] = []
        self.errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
        self.bytes = 0


class Connection(asyncio.Protocol):
    """One keep-alive connection sending the same request again as soon as the answer is in."""

    def __init__(
        self, request: bytes, stats: Stats, deadline: float, done: asyncio.Future[None]
    ) -> None:
        self._request = request
        self._stats = stats
        self._deadline = deadline
        self._done = done
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._sent_at = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        self._sent_at = time.perf_counter_ns()
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self._buffer[:end].lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self._stats.errors["read"] += 1
            self._finish()
            return
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else None])
        total = end + 4 + length
        if len(self._buffer) < total:
            return
        self._stats.latencies_us.append((time.perf_counter_ns() - self._sent_at) // 1000)
        self._stats.bytes += total
        if not head.startswith((b"http/1.1 2", b"http/1.1 3", b"http/1.0 2")):
            self._stats.errors["status"] += 1
        self._buffer = self._buffer[total:]
        if time.monotonic() >= self._deadline:
            self._finish()
        else:
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._stats.errors["read"] += 1
            self._done.set_result(None)

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)
        if self._transport is not None:
            self._transport.close()


def _percentile(ordered: list[int], q: float) -> int:
    if not ordered:
        return 0
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


async def _run(url: str, connections: int, duration_s: float, body: bytes, headers: str) -> str:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
        + "".join(f"{line.strip()}\r\n" for line in headers.splitlines() if line.strip())
        + "\r\n"
    ).encode() + body
    stats = Stats()
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    deadline = started + duration_s
    futures: list[asyncio.Future[None]] = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        futures.append(done)
        try:
            await loop.create_connection(
                partial(Connection, request, stats, deadline, done), host, port
            )
        except OSError:
            stats.errors["connect"] += 1
            done.set_result(None)
    try:
        await asyncio.wait_for(asyncio.gather(*futures), timeout=duration_s + 15)
    except TimeoutError:
        stats.errors["timeout"] += sum(1 for f in futures if not f.done())
    elapsed_us = int((time.monotonic() - started) * 1e6)
    ordered = sorted(stats.latencies_us)
    summary = {
        "requests": len(ordered),
        "duration_us": elapsed_us,
        "bytes": stats.bytes,
        "errors": stats.errors,
        "latency_us": {
            "min": ordered[0] if ordered else 0,
            "max": ordered[-1] if ordered else 0,
            "mean": sum(ordered) / len(ordered) if ordered else 0.0,
            "stdev": 0.0,
            "percentiles": [[q, _percentile(ordered, q)] for q in PERCENTILES],
        },
    }
    return "WRK_JSON " + orjson.dumps(summary).decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Closed-loop POST load (wrk stand-in).")
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args(argv)
    if not (urlsplit(args.url).hostname or "").startswith("127."):
        parser.error("load is only ever sent to loopback addresses (127.0.0.0/8)")
    body = Path(os.environ["WRK_BODY_FILE"]).read_bytes()
    headers = Path(os.environ["WRK_HEADERS_FILE"]).read_text()
    try:
        import uvloop

        line = uvloop.run(_run(args.url, args.connections, args.duration, body, headers))
    except ImportError:
        line = asyncio.run(_run(args.url, args.connections, args.duration, body, headers))
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
