"""``/monitoring/ready`` reports the routed model servers as ok or down (cached, never 503 for
a model alone); ``/monitoring/healthz`` does not depend on them. Plus the probe's cache."""

from __future__ import annotations

import pytest
from openai_harness import OpenAIFactory, OpenAIHarness, make_openai, oai

from enclave.common.http1 import ConnectFailed
from enclave.common.model_probe import ModelProbe

__all__ = ["make_openai", "oai"]  # fixtures

pytestmark = pytest.mark.anyio

MODELS = ["code_completions-model", "code_generations-model", "duo_chat-model"]


async def test_ready_lists_the_routed_models(oai: OpenAIHarness) -> None:
    response = await oai.client.get("/monitoring/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert [m["model"] for m in body["models"]] == MODELS
    assert {m["status"] for m in body["models"]} == {"ok"}


async def test_a_model_that_is_down_makes_ready_degraded_not_503(oai: OpenAIHarness) -> None:
    oai.h.app.state.gateway.model_probe = ModelProbe(ttl_s=0)
    await oai.model.stop()  # the model server crashed
    response = await oai.client.get("/monitoring/ready")
    assert response.status_code == 200  # still serves: "model unavailable" errors, other models
    body = response.json()
    assert body["status"] == "degraded"
    assert {m["status"] for m in body["models"]} == {"down"}
    assert all("unreachable" in m["detail"] for m in body["models"])
    assert "http" not in str(body["models"])  # names only: no endpoint in an open probe
    liveness = await oai.client.get("/monitoring/healthz")
    assert liveness.status_code == 200

    await oai.model.start()  # back (on another port here: the routes follow the instance)
    oai.issuer.routes["routes"][0]["model"]["endpoint"] = oai.model.endpoint
    for route in oai.issuer.routes["routes"][1:3]:
        route["model"]["endpoint"] = oai.model.endpoint
    assert await oai.table.refresh()
    body = (await oai.client.get("/monitoring/ready")).json()
    assert body["status"] == "ok"


async def test_without_routes_ready_has_no_models(make_openai: OpenAIFactory) -> None:
    harness = await make_openai(secret=None, load=False)
    response = await harness.client.get("/monitoring/ready")
    assert response.json() == {"status": "ok"}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_probe_results_are_cached_for_the_ttl() -> None:
    clock = Clock()
    probe = ModelProbe(ttl_s=2.0, clock=clock)
    calls: list[str] = []
    statuses = {"http://a/v1/models": 401, "http://b/v1/models": 503}

    async def get(url: str, timeout_s: float) -> int:
        calls.append(url)
        if url == "http://c/v1/models":
            # What the probe's client raises for a refused connection.
            raise ConnectFailed("cannot connect to c", ConnectionRefusedError())
        return statuses[url]

    targets = [("a", "http://a/v1"), ("b", "http://b/v1")]
    first = await probe.check(get, targets)
    assert [(s.name, s.up) for s in first] == [("a", True), ("b", False)]  # 401: alive
    assert "503" in first[1].detail
    assert await probe.check(get, targets) == first
    assert len(calls) == 2  # cached
    clock.now = 2.5
    await probe.check(get, targets)
    assert len(calls) == 4  # expired: probed again
    [down] = await probe.check(get, [("c", "http://c/v1")])  # other targets: probed now
    assert not down.up and "unreachable" in down.detail
