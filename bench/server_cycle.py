"""CPU per request of the server layer alone: the bounded protocol and its cycle, in-process.

Feeds a keep-alive request as the gateway's hot endpoint gets it (POST with a small JSON body,
eight headers) to the protocol ``enclave serve`` uses, on a transport that only counts what is
written, with an app that reads the body and answers as ``JsonAnswer`` does behind the request
middleware (seven headers with the server's Date). No socket, no JSON work: what is measured is
the parser callbacks, the scope, the cycle, receive and send. Compare two trees by running it
with each on ``PYTHONPATH``::

    .venv/bin/python bench/server_cycle.py [--requests 40000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import uvicorn
import uvloop
from uvicorn.server import ServerState

from enclave.common.http_limits import HeaderLimits, bounded_protocol

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


async def measure(requests: int) -> tuple[float, int]:
    # As common/serve.py configures it: no proxy-headers middleware, no server header.
    config = uvicorn.Config(
        app, log_config=None, access_log=False, server_header=False, proxy_headers=False
    )
    config.load()
    state = ServerState()
    state.default_headers = [(b"date", b"Sat, 05 Dec 2026 08:00:00 GMT")]
    protocol = bounded_protocol(HeaderLimits(16384, 100, "detail"))(
        config=config, server_state=state, app_state={}
    )
    transport = CountingTransport()
    protocol.connection_made(transport)
    sleep = asyncio.sleep
    for _ in range(200):  # warm-up
        protocol.data_received(REQUEST)
        await sleep(0)
        await sleep(0)
    start_writes = transport.writes
    started = time.process_time()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        await sleep(0)  # the task runs and answers
        await sleep(0)  # a held head's flush, if one were pending
    elapsed = time.process_time() - started
    protocol.connection_lost(None)
    return elapsed / requests * 1e6, (transport.writes - start_writes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = [uvloop.run(measure(args.requests)) for _ in range(args.rounds)]
    per_request = sorted(r[0] for r in results)
    writes = results[0][1] / args.requests
    print(
        f"server layer: {per_request[len(per_request) // 2]:.2f} µs per request (median of "
        f"{args.rounds}; min {per_request[0]:.2f}), {writes:.1f} writes per answer"
    )


if __name__ == "__main__":
    main()
