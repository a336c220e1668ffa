"""The network budget of the warm hot path: no issuer call, no DNS, one model call per request.

Like LiteLLM's auth hot-path test, but counting calls on the wire: the fake issuer counts every
discovery and key request, the key stores count fetch attempts, and the event loop's resolver
is wrapped to count look-ups.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from gateway_fakes import Harness

pytestmark = pytest.mark.anyio

REQUESTS = 40


async def test_warm_hot_path_makes_no_issuer_calls(
    gw: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = gw.app.state.gateway
    await gw.warm_keys()  # cold start: the one and only key fetch
    issuer_calls = gw.issuer.hits
    fetches = {issuer: store.fetches for issuer, store in gateway.stores.items()}
    session = gateway.session

    lookups: list[Any] = []
    loop = asyncio.get_running_loop()
    real_getaddrinfo = loop.getaddrinfo

    async def counting_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        lookups.append(args[0])
        return await real_getaddrinfo(*args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", counting_getaddrinfo)

    same = gw.headers(gw.token())
    for index in range(REQUESTS):
        # Half reuse one token (verified-token cache), half are new (signature checked).
        headers = same if index % 2 else gw.headers(gw.token())
        response = await gw.complete(headers=headers)
        assert response.status_code == 200

    assert gw.issuer.hits == issuer_calls  # zero issuer calls per request
    assert {issuer: store.fetches for issuer, store in gateway.stores.items()} == fetches
    assert lookups == []  # no DNS either (the model endpoint is an address literal)
    assert gateway.egress.resolutions == 0
    assert len(gw.model.requests) == REQUESTS  # exactly one model call each
    assert gateway.session is session  # one pooled client, never one per request
    assert gateway.authenticator.verifications == REQUESTS // 2 + 1
    assert gateway.authenticator.cache_hits == REQUESTS // 2 - 1


async def test_model_calls_keep_no_cookies(gw: Harness) -> None:
    """One pooled client serves every instance and user: a cookie a vendor endpoint sets
    (load balancer affinity, bot management) must never ride along on a later call."""
    gw.model.set_cookie = "affinity=node-7; Path=/"
    for _ in range(2):
        assert (await gw.complete()).status_code == 200
    assert [r for r in gw.model.requests if "Cookie" in r.headers] == []


async def test_warm_user_tokens_need_no_network_at_all(gw: Harness) -> None:
    await gw.warm_keys()
    token = await gw.user_token()
    issuer_calls = gw.issuer.hits
    for _ in range(10):
        response = await gw.complete(gw.user_body(), headers=gw.user_headers(token))
        assert response.status_code == 200
    assert gw.issuer.hits == issuer_calls
