"""A running gateway whose issuer also serves the instance's feature→model routes.

Builds on the gateway fakes (issuer with keys, OpenAI-compatible fake model): the issuer here
also answers ``GET /api/v4/internal/ai/gateway_routes`` when shown the shared secret, and the
tokens are the instance's OpenAI-API tokens (``enclave_surface: openai``, one user).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_fakes import ROUTES_SECRET, FakeClock, FakeIssuer, FakeModel, Harness, Keys, jwk_of
from gateway_fakes import call_asgi as gateway_call_asgi
from starlette.types import Message

from enclave.common import wire
from enclave.config import EnclaveSettings, GatewaySettings
from enclave.gateway.app import create_app
from enclave.gateway.routes_table import RoutesTable

MODEL_API_KEY = "enclkey-upstream-model-key-abcdef012345"
USER_ID = "5f0c1d-user-pseudonym"
REFRESH_S = 30.0
STALE_S = 60.0


def available(feature: str, primitive: str, endpoint: str, **model: Any) -> dict[str, Any]:
    return {
        "feature": feature,
        "unit_primitive": primitive,
        "available": True,
        "model": {
            "name": f"{feature}-model",
            "family": "codestral",
            "provider": "api",
            "endpoint": endpoint,
            "identifier": "custom_openai/codestral-local",
            "api_key": MODEL_API_KEY,
            **model,
        },
    }


def routes_document(endpoint: str) -> dict[str, Any]:
    return {
        "version": 1,
        "routes": [
            available("duo_chat", wire.UP_DUO_CHAT, endpoint),
            available("code_completions", wire.UP_COMPLETE_CODE, endpoint),
            available("code_generations", wire.UP_GENERATE_CODE, endpoint),
            {
                "feature": "summarize_review",
                "unit_primitive": "summarize_review",
                "available": False,
                "reason": "disabled",
                "message": "Code review summary is disabled on this instance.",
            },
        ],
    }


# The fake issuer serves the routes itself (gateway_fakes); the name stays for these tests.
RoutesIssuer = FakeIssuer


@dataclass
class OpenAIHarness:
    h: Harness
    issuer: RoutesIssuer
    model: FakeModel
    table: RoutesTable
    clock: FakeClock

    @property
    def client(self) -> httpx.AsyncClient:
        return self.h.client

    def token(self, scopes: list[str] | None = None, **claims: Any) -> str:
        claims.setdefault("sub", USER_ID)
        claims.setdefault("enclave_surface", "openai")
        if scopes is None:
            scopes = [wire.UP_DUO_CHAT, wire.UP_COMPLETE_CODE, "summarize_review"]
        return self.h.token(scopes=scopes, **claims)

    def auth(self, token: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token()}", **extra}

    async def post(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return await self.client.post(path, json=body, headers=headers or self.auth())

    async def chat(self, **body: Any) -> httpx.Response:
        body.setdefault("messages", [{"role": "user", "content": "add two numbers"}])
        return await self.post("/v1/chat/completions", body)


OpenAIFactory = Callable[..., Awaitable[OpenAIHarness]]


@pytest.fixture
async def make_openai(
    keys: Keys, tmp_path: Path, gateway_key_file: Path
) -> AsyncIterator[OpenAIFactory]:
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def factory(
        *, load: bool = True, secret: str | None = ROUTES_SECRET, **overrides: Any
    ) -> OpenAIHarness:
        issuer, model = RoutesIssuer(), FakeModel()
        await issuer.start()
        await model.start()
        cleanups.extend([issuer.stop, model.stop])
        issuer.jwks = {"keys": [jwk_of(keys.rsa, "key-1", "RS256")]}
        issuer.routes = routes_document(model.endpoint)
        if secret is not None:
            secret_file = tmp_path / "routes.secret"
            secret_file.write_text(secret + "\n")
            overrides.setdefault("gateway_routes_secret_file", secret_file)
        overrides.setdefault("self_signing_key_file", gateway_key_file)
        overrides.setdefault("routes_refresh_s", REFRESH_S)
        overrides.setdefault("routes_stale_s", STALE_S)
        settings = EnclaveSettings(
            data_dir=tmp_path / "data",
            gateway=GatewaySettings(issuer_url=issuer.base, **overrides),
        )
        clock = FakeClock()
        app = create_app(settings, clock=clock, refresh_keys_in_background=False)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")

        async def close() -> None:
            await client.aclose()
            await lifespan.__aexit__(None, None, None)

        cleanups.append(close)
        table: RoutesTable = app.state.gateway.routes_table
        if load:
            assert await table.refresh(), table.last_error
        return OpenAIHarness(
            Harness(app, client, issuer, model, clock, keys), issuer, model, table, clock
        )

    yield factory
    for cleanup in reversed(cleanups):
        await cleanup()


@pytest.fixture
async def oai(make_openai: OpenAIFactory) -> OpenAIHarness:
    return await make_openai()


async def call_asgi(
    oai: OpenAIHarness,
    path: str,
    body: dict[str, Any],
    disconnect: asyncio.Event | None = None,
    on_body: Callable[[Message], None] | None = None,
) -> list[Message]:
    """Call the app directly to see every ASGI message it sends (httpx buffers them)."""
    return await gateway_call_asgi(
        oai.h, body, disconnect, on_body, path=path, request_headers=oai.auth()
    )
