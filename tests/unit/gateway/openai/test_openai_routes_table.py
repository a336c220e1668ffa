"""The in-memory feature→model routes: loading, refresh, bounded staleness, clear 503s."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openai_harness import (
    REFRESH_S,
    ROUTES_SECRET,
    STALE_S,
    OpenAIFactory,
    RoutesIssuer,
    available,
    make_openai,
)

from enclave.common import wire
from enclave.config import GatewaySettings, TrustedIssuer
from enclave.gateway.routes_table import MAX_ROUTES, RoutesError, RoutesTable, parse_routes

__all__ = ["make_openai"]  # fixture

pytestmark = pytest.mark.anyio


def code_of(response: Any) -> str:
    return str(response.json()["error"]["code"])


async def test_instance_unreachable_is_503_saying_so(make_openai: OpenAIFactory) -> None:
    oai = await make_openai(load=False)
    oai.issuer.routes_status = 500
    assert (await oai.client.get("/v1/models", headers=oai.auth())).status_code == 503  # keys now
    await oai.table.refresh()  # joins the fetch that request started
    await oai.issuer.stop()  # the instance goes away before the routes ever loaded
    assert not await oai.table.refresh()
    response = await oai.chat()
    assert response.status_code == 503
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("routes_unavailable", "api_error")
    assert "has not loaded the AI feature routes from the instance" in error["message"]
    assert "cannot connect" in error["message"]


async def test_routes_never_loaded_is_503(make_openai: OpenAIFactory) -> None:
    oai = await make_openai(load=False)
    oai.issuer.routes_status = 500
    assert not await oai.table.refresh()
    response = await oai.chat()
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "routes_unavailable"
    assert "has not loaded the AI feature routes" in error["message"]
    assert "HTTP 500" in error["message"]


async def test_wrong_secret_is_named_without_the_secret(make_openai: OpenAIFactory) -> None:
    oai = await make_openai(load=False, secret="enclkey-routes-not-the-right-one-123")
    assert not await oai.table.refresh()
    response = await oai.chat()
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "refused the gateway routes secret" in message
    assert "not-the-right-one" not in message and ROUTES_SECRET not in message


async def test_no_secret_configured_means_the_api_is_off(make_openai: OpenAIFactory) -> None:
    oai = await make_openai(load=False, secret=None)
    assert not oai.table.enabled
    response = await oai.client.get("/v1/models", headers=oai.auth())
    assert response.status_code == 503
    assert "GATEWAY_ROUTES_SECRET_FILE" in response.json()["error"]["message"]
    assert oai.issuer.routes_hits == 0


async def test_stale_routes_serve_for_a_bounded_time(make_openai: OpenAIFactory) -> None:
    oai = await make_openai()
    oai.issuer.routes_status = 500
    oai.clock.advance(REFRESH_S + 1)  # due: served, and a refresh starts in the background
    hits = oai.issuer.routes_hits
    assert (await oai.chat()).status_code == 200
    await oai.table.refresh()
    assert oai.issuer.routes_hits > hits
    oai.clock.advance(STALE_S)  # past the stale window
    response = await oai.chat()
    assert response.status_code == 503
    assert "out of date" in response.json()["error"]["message"]
    oai.issuer.routes_status = None  # the instance is back
    assert await oai.table.refresh()
    assert (await oai.chat()).status_code == 200


async def test_a_changed_mapping_is_picked_up_on_refresh(make_openai: OpenAIFactory) -> None:
    oai = await make_openai()
    assert (await oai.chat()).status_code == 200
    oai.issuer.routes["routes"][0] = {
        "feature": "duo_chat",
        "unit_primitive": wire.UP_DUO_CHAT,
        "available": False,
        "reason": "disabled",
        "message": "General chat is disabled on this instance.",
    }
    assert (await oai.chat()).status_code == 200  # still fresh: from memory, no fetch
    generation = oai.table.generation
    oai.clock.advance(REFRESH_S)
    await oai.chat()  # due: starts the refresh
    await oai.table.refresh()
    assert oai.table.generation == generation + 1
    response = await oai.chat()
    assert response.status_code == 403
    assert code_of(response) == "model_unavailable"


async def test_the_background_refresher_keeps_it_fresh(tmp_path: Path) -> None:
    issuer = RoutesIssuer()
    await issuer.start()
    secret_file = tmp_path / "secret"
    secret_file.write_text(ROUTES_SECRET)
    session = aiohttp.ClientSession()
    table = RoutesTable(
        issuer=issuer.base, secret_file=secret_file, session=lambda: session, refresh_s=0.2
    )
    issuer.routes = {"routes": [available("duo_chat", "duo_chat", "http://127.0.0.1:9/v1")]}
    task = asyncio.create_task(table.run_refresher())
    try:
        deadline = time.monotonic() + 5
        while table.fetches < 3 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert table.fetches >= 3
        assert table.routes()["duo_chat"].upstream_model == "codestral-local"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await table.aclose()
        await session.close()
        await issuer.stop()


def test_parse_routes_bounds_and_shapes() -> None:
    with pytest.raises(RoutesError):
        parse_routes({"routes": [{}] * (MAX_ROUTES + 1)})
    with pytest.raises(RoutesError):
        parse_routes(["not", "a", "document"])
    routes = parse_routes(
        {
            "routes": [
                "junk",
                available("duo_chat", "duo_chat", "http://m:8000/v1/", identifier="qwen-coder"),
                available("code_completions", "complete_code", "http://m/v1", provider="bedrock"),
                available("code_generations", "generate_code", ""),
                available(
                    "explain_code",
                    "explain_code",
                    "https://api.anthropic.com",
                    provider="anthropic",
                    identifier="anthropic/claude-3-5-sonnet-20241022",
                ),
            ]
        }
    )
    chat = routes["duo_chat"]
    assert (chat.available, chat.endpoint, chat.upstream_model) == (
        True,
        "http://m:8000/v1",
        "qwen-coder",
    )
    assert "enclkey" not in repr(chat)  # the key is kept out of reprs
    # Every provider is served; a provider that contradicts the identifier is misconfigured.
    assert (routes["code_completions"].available, routes["code_completions"].reason) == (
        False,
        "misconfigured",
    )
    assert "not 'bedrock'" in (routes["code_completions"].message or "")
    assert routes["code_generations"].reason == "misconfigured"
    claude = routes["explain_code"]
    assert (claude.available, claude.provider, claude.upstream_model) == (
        True,
        "anthropic",
        "claude-3-5-sonnet-20241022",
    )


def test_a_shared_gateway_has_no_routes(tmp_path: Path) -> None:
    settings = GatewaySettings(
        trusted_issuers=[TrustedIssuer(url="http://a.example"), TrustedIssuer(url="http://b")],
        gateway_routes_secret_file=tmp_path / "secret",
    )
    table = RoutesTable.from_settings(settings, lambda: aiohttp.ClientSession())
    assert not table.enabled
    assert "single instance" in (table.off_reason or "")
