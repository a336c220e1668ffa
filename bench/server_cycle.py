"""CPU per request of the server layer alone: the server protocol, in-process.

Feeds a keep-alive request as the gateway's hot endpoint gets it (POST with a small JSON body,
eight headers) to the protocol ``enclave serve`` uses, on a transport that only counts what is
written, with an app that reads the body and answers as ``JsonAnswer`` does behind the request
middleware (seven headers with the server's Date). No socket, no JSON work: what is measured is
the parser callbacks, the scope, the cycle, receive and send. Compare two trees by running it
with each on ``PYTHONPATH``::

    .venv/bin/python bench/server_cycle.py [--requests 40000] [--floor]

``--floor`` also measures a bare protocol on the same harness (httptools' parser, a scope, one
task, one write per answer: no limits, header checks, keep-alive timer, flow control or
pipelining, so not a server to run) and the harness's own loop turns, and prints what
uvicorn's layer costs above that floor (bench/README.md: "A lean server protocol").
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httptools
import uvicorn
import uvloop
from uvicorn.server import ServerState

from enclave.common.http_limits import HeaderLimits
from enclave.common.server_protocol import lean_protocol

REQUEST = (
    b"POST /v2/code/completions HTTP/1.1\r\nHost: 127.0.0.1:5052\r\n"
    b"Authorization: Bearer x.y.z\r\nContent-Type: application/json\r\n"
    b"X-Gitlab-Instance-Id: bench-instance\r\nX-Gitlab-Realm: self-managed\r\n"
    b"X-Gitlab-Global-User-Id: bench-user\r\nX-Request-ID: abc\r\n"
    b"Content-Length: 16\r\n\r\n"
    b'{"prompt": "hi"}'
)
BODY = b'{"choices": [{"text": "ok"}], "model": {"name": "codestral"}}'


async def app(scope: Any, receive: Any, send: Any) -> None:
    message = await receive()
    assert message["body"]
    headers = [
        (b"content-length", str(len(BODY)).encode("latin-1")),
        (b"content-type", b"application/json"),
        (b"x-request-id", b"0123456789abcdef0123456789abcdef"),
        (b"x-process-time", b"0.000123"),
        (b"x-gitlab-input-tokens", b"12"),
        (b"x-gitlab-output-tokens", b"3"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


class CountingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.writes = 0

    def write(self, data: Any) -> None:
        self.written += len(data)
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5052) if name in ("sockname", "peername") else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class BareProtocol(asyncio.Protocol):
    """The least a protocol does for this request: parse it, start the app in a task with a
    scope, answer with one write. A yardstick for uvicorn's layer, never a server."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._url = b""
        self._body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_begin(self) -> None:
        self._headers, self._url, self._body = [], b"", b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        path, _, query = self._url.partition(b"?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 5052),
            "client": ("127.0.0.1", 40000),
            "scheme": "http",
            "method": self._parser.get_method().decode("ascii"),
            "root_path": "",
            "path": path.decode("latin-1"),
            "raw_path": path,
            "query_string": query,
            "headers": self._headers,
            "state": {},
        }
        self._loop.create_task(self._run(scope, self._body))

    async def _run(self, scope: dict[str, Any], body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        head: list[bytes] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                lines = [b"HTTP/1.1 200 OK\r\ndate: Sat, 05 Dec 2026 08:00:00 GMT\r\n"]
                lines += [name + b": " + value + b"\r\n" for name, value in message["headers"]]
                head.append(b"".join(lines) + b"\r\n")
            else:
                transport.write(head[0] + message["body"])

        await app(scope, receive, send)


async def _timed(protocol: asyncio.Protocol | None, requests: int) -> tuple[float, int]:
    """CPU µs per request of feeding ``protocol`` one request and turning the loop twice, and
    the writes made while measured (``None``: the two loop turns alone, the harness's share)."""
    transport = CountingTransport()
    feed: Callable[[bytes], None] = protocol.data_received if protocol else (lambda _: None)
    if protocol is not None:
        protocol.connection_made(transport)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    for _ in range(200):  # warm-up
        feed(REQUEST)
        await sleep(0)
        await sleep(0)
    start_writes = transport.writes
    started = time.process_time()
    for _ in range(requests):
        feed(REQUEST)
        await sleep(0)  # the task runs and answers
        await sleep(0)  # a held head's flush, if one were pending
    elapsed = time.process_time() - started
    return elapsed / requests * 1e6, transport.writes - start_writes


async def measure_floor(requests: int) -> tuple[float, float]:
    """(the bare protocol, the harness alone), CPU µs per request."""
    bare, writes = await _timed(BareProtocol(), requests)
    assert writes == requests, "the bare protocol must answer every request"
    harness, _ = await _timed(None, requests)
    return bare, harness


async def measure(requests: int) -> tuple[float, int]:
    # As common/serve.py configures it: no proxy-headers middleware, no server header.
    config = uvicorn.Config(
        app, log_config=None, access_log=False, server_header=False, proxy_headers=False
    )
    config.load()
    state = ServerState()
    state.default_headers = [(b"date", b"Sat, 05 Dec 2026 08:00:00 GMT")]
    protocol = lean_protocol(HeaderLimits(16384, 100, "detail"))(
        config=config, server_state=state, app_state={}
    )
    per_request, writes = await _timed(protocol, requests)
    protocol.connection_lost(None)
    return per_request, writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--floor", action="store_true", help="also measure a bare protocol and the harness alone"
    )
    args = parser.parse_args()
    results = [uvloop.run(measure(args.requests)) for _ in range(args.rounds)]
    per_request = sorted(r[0] for r in results)
    writes = results[0][1] / args.requests
    print(
        f"server layer: {per_request[len(per_request) // 2]:.2f} µs per request (median of "
        f"{args.rounds}; min {per_request[0]:.2f}), {writes:.1f} writes per answer"
    )
    if args.floor:
        floors = [uvloop.run(measure_floor(args.requests)) for _ in range(args.rounds)]
        bare = sorted(f[0] for f in floors)[len(floors) // 2]
        harness = sorted(f[1] for f in floors)[len(floors) // 2]
        layer = per_request[len(per_request) // 2]
        print(
            f"bare protocol: {bare:.2f} µs, harness alone: {harness:.2f} µs; above the harness, "
            f"uvicorn's layer {layer - harness:.2f} µs against the floor's {bare - harness:.2f} µs "
            f"({(layer - harness) / max(bare - harness, 1e-9):.1f}×)"
        )


if __name__ == "__main__":
    main()
