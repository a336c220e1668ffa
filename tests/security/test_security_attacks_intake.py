"""Attack cases against the gateway's request head limits, under the real server protocol.

The gateway runs under uvicorn with :func:`enclave.common.server_protocol.lean_protocol`, as
``enclave gateway`` serves it: an oversize head or too many headers get ``431 {"detail"}``
(the AI gateway's error shape) and the connection is closed; normal requests, keep-alive and
pipelined requests whose heads are each within the limit are untouched. Nothing reaches the
model. (A 32 MiB header against a real gateway process, with its memory measured, is in
``tests/security/instance/test_security_attacks_intake.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from gateway_fakes import Harness

from enclave.common.net import free_port
from enclave.common.serve import header_limits
from enclave.common.server_protocol import lean_protocol
from enclave.config import GatewaySettings

pytestmark = pytest.mark.anyio


class _Server:
    """The gateway app under uvicorn with the head limits of ``settings``, on the test's own
    event loop (the harness's app and clients live there)."""

    def __init__(self, app: Any, settings: GatewaySettings) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, access_log=False,
            lifespan="off", loop="none", http=lean_protocol(header_limits(settings)),
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Server:
        self.task = asyncio.create_task(self.server.serve())
        async with asyncio.timeout(20):
            while not self.server.started:  # noqa: ASYNC110 - uvicorn sets a plain flag
                await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        assert self.task is not None
        await asyncio.wait_for(self.task, 20)


@pytest.fixture
async def served(gw: Harness) -> AsyncIterator[tuple[Harness, str]]:
    settings = GatewaySettings()
    async with _Server(gw.app, settings) as server:
        yield gw, f"http://127.0.0.1:{server.port}"


def raw_exchange(url: str, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send ``payload`` on one connection; everything the server answers until it closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may close before all is sent
            sock.sendall(payload)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        return received


async def test_gateway_refuses_a_1_mib_header_with_431_detail(
    served: tuple[Harness, str],
) -> None:
    gw, url = served
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{url}/v2/code/completions",
            json=gw.body(),
            headers={**gw.headers(), "X-Padding": "a" * (1024 * 1024)},
        )
    assert response.status_code == 431
    assert response.headers["connection"] == "close"
    detail = response.json()["detail"]
    assert detail.startswith("431 Request Header Fields Too Large - the request line and headers")
    assert "over 16384 bytes" in detail and "ENCLAVE_GATEWAY__MAX_HEADER_BYTES" in detail
    assert gw.model.requests == []


async def test_gateway_refuses_a_long_url_with_431(served: tuple[Harness, str]) -> None:
    gw, url = served
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{url}/monitoring/healthz?{'q' * 20_000}")
    assert response.status_code == 431
    assert gw.model.requests == []


async def test_gateway_refuses_more_than_100_headers_with_431(
    served: tuple[Harness, str],
) -> None:
    gw, url = served
    extra = {f"X-Extra-{n}": "1" for n in range(101)}
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{url}/v2/code/completions", json=gw.body(), headers={**gw.headers(), **extra}
        )
    assert response.status_code == 431
    detail = response.json()["detail"]
    assert "more than 100 headers" in detail and "ENCLAVE_GATEWAY__MAX_HEADERS" in detail
    assert gw.model.requests == []


async def test_gateway_serves_requests_within_the_head_limits(
    served: tuple[Harness, str],
) -> None:
    gw, url = served
    extra = {f"X-Extra-{n}": "1" for n in range(60)}
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{url}/v2/code/completions",
            json=gw.body(),
            headers={**gw.headers(), **extra, "X-Padding": "a" * 8000},
        )
        assert response.status_code == 200, response.text
        # Keep-alive: many heads on one connection, together far over the limit, each within.
        for _ in range(5):
            again = await client.post(
                f"{url}/v2/code/completions",
                json=gw.body(),
                headers={**gw.headers(), "X-Padding": "a" * 8000},
            )
            assert again.status_code == 200


async def test_pipelined_requests_each_within_the_limit_are_all_answered(
    served: tuple[Harness, str],
) -> None:
    _, url = served
    one = b"GET /monitoring/healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 6000 + b"\r\n\r\n"
    last = b"GET /monitoring/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await asyncio.to_thread(raw_exchange, url, one * 4 + last)
    assert re.findall(rb"HTTP/1\.1 (\d{3})", answer) == [b"200"] * 5


async def test_head_that_never_ends_is_cut_at_the_limit(served: tuple[Harness, str]) -> None:
    """A client that keeps sending one header line gets its 431 after 16 KiB, not never."""
    _, url = served
    payload = b"GET /monitoring/healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 20_000
    answer = await asyncio.to_thread(raw_exchange, url, payload)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")


async def test_gateway_head_limits_are_settings(gw: Harness) -> None:
    settings = GatewaySettings(max_header_bytes=4096, max_headers=20)
    async with _Server(gw.app, settings) as server:
        url = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient() as client:
            big = await client.get(f"{url}/monitoring/healthz", headers={"X-P": "a" * 5000})
            many = await client.get(
                f"{url}/monitoring/healthz", headers={f"X-{n}": "1" for n in range(21)}
            )
            fine = await client.get(f"{url}/monitoring/healthz", headers={"X-P": "a" * 3000})
    assert big.status_code == 431 and "over 4096 bytes" in big.json()["detail"]
    assert many.status_code == 431 and "more than 20 headers" in many.json()["detail"]
    assert fine.status_code == 200
