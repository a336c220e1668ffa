"""The gateway under a real uvicorn server, and the edges of streaming and error handling."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
import uvicorn
from gateway_fakes import FakeClock, FakeIssuer, FakeModel, Harness, Keys, call_asgi, jwk_of

from enclave.common.net import free_port
from enclave.config import EnclaveSettings, GatewaySettings
from enclave.gateway.app import create_app, create_app_from_env
from enclave.gateway.models.base import ModelRequest

pytestmark = pytest.mark.anyio


class _Server:
    """uvicorn in a thread (its own event loop, like a real deployment)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, access_log=False,
            lifespan="on", loop="asyncio", http="h11",
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def __aenter__(self) -> _Server:
        self.thread.start()
        async with asyncio.timeout(20):
            while not self.server.started:  # noqa: ASYNC110 - uvicorn sets a plain flag
                await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await asyncio.to_thread(self.thread.join, 20)


@pytest.fixture
async def served(keys: Keys, tmp_path: Path) -> AsyncIterator[tuple[Harness, str]]:
    issuer, model = FakeIssuer(), FakeModel()
    await issuer.start()
    await model.start()
    issuer.jwks = {"keys": [jwk_of(keys.rsa, "key-1")]}
    settings = EnclaveSettings(
        data_dir=tmp_path / "data", gateway=GatewaySettings(issuer_url=issuer.base)
    )
    app = create_app(settings)  # real clock, background key refresh: as deployed
    harness = Harness(app, None, issuer, model, FakeClock(), keys)  # type: ignore[arg-type]
    try:
        async with _Server(app) as server:
            yield harness, f"http://127.0.0.1:{server.port}"
    finally:
        await model.stop()
        await issuer.stop()


async def test_streaming_through_uvicorn(served: tuple[Harness, str]) -> None:
    gw, url = served
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{url}/v2/code/completions", json=gw.body(stream=True), headers=gw.headers()
        ) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            assert "x-request-id" in response.headers
            text = (await response.read()).decode()
        assert text == "".join(gw.model.chunks)
        async with session.get(f"{url}/monitoring/ready") as ready:
            assert (ready.status, await ready.json()) == (200, {"status": "ok"})
    assert gw.issuer.jwks_hits == 1  # prefetched in the background at start-up


async def test_client_going_away_stops_the_model(served: tuple[Harness, str]) -> None:
    gw, url = served
    gw.model.endless_stream = True
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{url}/v2/code/completions", json=gw.body(stream=True), headers=gw.headers()
        )
        assert response.status == 200
        first = await response.content.readany()
        assert first  # the first delta arrived before the answer ended
        response.close()  # the IDE gives up on this suggestion
    async with asyncio.timeout(10):  # hang guard only
        await gw.model.stream_closed.wait()


# -- edges, in-process ----------------------------------------------------------------------


async def test_mid_stream_model_error_aborts_the_response(gw: Harness) -> None:
    gw.model.stream_error = "engine crashed"
    messages = await call_asgi(gw, gw.body(stream=True))
    bodies = [m for m in messages if m["type"] == "http.response.body"]
    assert [m["body"].decode() for m in bodies] == gw.model.chunks
    assert all(m.get("more_body") for m in bodies)  # never marked complete


@pytest.mark.parametrize("cut", ["abort", "eof"])
async def test_model_cut_mid_stream_leaves_the_raw_text_response_incomplete(
    gw: Harness, cut: Literal["abort", "eof"]
) -> None:
    # Raw text has no error event: the chunks so far, then no final (more_body False)
    # message, so the server closes the connection and the client sees a broken transfer.
    gw.model.stream_cut = cut
    messages = await call_asgi(gw, gw.body(stream=True))
    assert messages[0]["status"] == 200
    bodies = [m for m in messages if m["type"] == "http.response.body"]
    assert [m["body"].decode() for m in bodies] == gw.model.chunks
    assert all(m.get("more_body") for m in bodies)


async def test_server_that_ignores_stream_is_relayed_in_one_chunk(gw: Harness) -> None:
    gw.model.ignore_stream = True
    response = await gw.complete(gw.body(stream=True))
    assert response.status_code == 200
    assert response.text == gw.model.text


async def test_unexpected_errors_are_json_500_with_request_id(gw: Harness) -> None:
    class Broken:
        async def complete(self, request: ModelRequest) -> Any:
            raise RuntimeError("bug")

        async def stream(self, request: ModelRequest) -> Any:
            raise RuntimeError("bug")

    gw.app.state.gateway.models = Broken()
    response = await gw.complete(headers={**gw.headers(), "X-Request-ID": "r-1"})
    assert response.status_code == 500
    assert response.json() == {
        "detail": "Internal error in the AI gateway (request id r-1); the gateway log has the "
        "details"
    }
    assert response.headers["x-request-id"] == "r-1"


async def test_create_app_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ENCLAVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ENCLAVE_ISSUER_URL", "http://issuer.test:8080/")
    monkeypatch.setenv("ENCLAVE_GATEWAY__LEEWAY_S", "5")
    monkeypatch.delenv("ENCLAVE_CONFIG", raising=False)
    configured: list[tuple[str, ...]] = []
    # Logging is process-global; record the call instead of reconfiguring the test run.
    monkeypatch.setattr(
        "enclave.gateway.app.configure_logging", lambda *args: configured.append(args)
    )
    app = create_app_from_env()
    assert configured == [("gateway", "info", "json")]
    gateway = app.state.gateway
    assert list(gateway.stores) == ["http://issuer.test:8080"]
    assert gateway.settings.gateway.leeway_s == 5
