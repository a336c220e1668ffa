"""Fixtures for the gateway tests: a running gateway app wired to a fake issuer and model.

The gateway runs in-process behind httpx's ASGI transport with its lifespan entered explicitly.
A plain module (not conftest) so that other test directories (tests/security) can import the
fixtures into their own conftest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_fakes import (
    ROUTES_SECRET,
    FakeClock,
    FakeIssuer,
    FakeModel,
    Harness,
    HarnessFactory,
    Keys,
    jwk_of,
    new_keys,
    pem_of,
    route_entry,
)

from enclave.common import wire
from enclave.common.net import free_port
from enclave.config import EnclaveSettings, GatewaySettings
from enclave.gateway.app import create_app


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp needs asyncio


@pytest.fixture(scope="session")
def keys() -> Keys:
    return new_keys()


@pytest.fixture(scope="session")
def gateway_key_file(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One gateway signing key for the session (generating RSA keys per test is slow)."""
    path = tmp_path_factory.mktemp("gateway-key") / "gateway-signing.pem"
    path.write_bytes(pem_of(keys.gateway))
    path.chmod(0o600)
    return path


@pytest.fixture
async def make_harness(
    keys: Keys, tmp_path: Path, gateway_key_file: Path
) -> AsyncIterator[HarnessFactory]:
    """Build a running gateway + fakes; call it with settings overrides."""
    cleanups: list[Any] = []

    async def factory(
        *,
        refresh_keys_in_background: bool = False,
        issuer_up: bool = True,
        direct_jwks_url: bool = False,
        routes: bool = True,
        **gateway_overrides: Any,
    ) -> Harness:
        """``routes``: the gateway shares the routes secret with the issuer (as under ``enclave
        up``) and has loaded its routes: code completions and generations on the fake model."""
        issuer = FakeIssuer()
        model = FakeModel()
        await issuer.start()
        await model.start()
        cleanups.extend([issuer.stop, model.stop])
        issuer.jwks = {"keys": [jwk_of(keys.rsa, "key-1", "RS256")]}
        issuer.routes = {
            "version": 1,
            "routes": [
                route_entry("code_completions", wire.UP_COMPLETE_CODE, model.endpoint),
                route_entry("code_generations", wire.UP_GENERATE_CODE, model.endpoint),
            ],
        }
        if routes and issuer_up:
            secret_file = tmp_path / "routes.secret"
            secret_file.write_text(ROUTES_SECRET + "\n")
            gateway_overrides.setdefault("gateway_routes_secret_file", secret_file)
        issuer_url = issuer.base
        if direct_jwks_url:
            gateway_overrides["jwks_url"] = f"{issuer.base}/oauth/discovery/keys"
        if not issuer_up:
            issuer_url = f"http://127.0.0.1:{free_port()}"
            issuer.base = issuer_url  # tokens name the unreachable issuer
        gateway_overrides.setdefault("self_signing_key_file", gateway_key_file)
        settings = EnclaveSettings(
            data_dir=tmp_path / "data",
            gateway=GatewaySettings(issuer_url=issuer_url, **gateway_overrides),
        )
        clock = FakeClock()
        app = create_app(
            settings, clock=clock, refresh_keys_in_background=refresh_keys_in_background
        )
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")

        async def close() -> None:
            await client.aclose()
            await lifespan.__aexit__(None, None, None)

        cleanups.append(close)
        table = app.state.gateway.routes_table
        if table.enabled:
            assert await table.refresh(), table.last_error
        return Harness(app, client, issuer, model, clock, keys)

    yield factory
    for cleanup in reversed(cleanups):
        await cleanup()


@pytest.fixture
async def gw(make_harness: HarnessFactory) -> Harness:
    harness: Harness = await make_harness()
    return harness
