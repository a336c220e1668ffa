"""The gateway's limits in a real Redis, over HTTP: shared buckets answer 429 as the in-process
ones do, and a Redis that cannot be reached answers 503 (closed) or lets requests through
(open), counted at /metrics. The unit cases of both backends are in
tests/unit/test_shared_limits.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from gateway_fakes import Harness, HarnessFactory

# This folder is on sys.path as itself (no package); the repository root holds tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tests.redis_server import RedisServer, redis_server, redis_wanted

from enclave.common.net import free_port
from enclave.common.shared_store import SharedStore
from enclave.config import EnclaveSettings
from enclave.gateway.rate_limit import RateLimiter

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    wanted, reason = redis_wanted()
    if not wanted:
        pytest.skip(reason)
    with redis_server() as server:
        yield server


def share_limits(gw: Harness, url: str, mode: Literal["open", "closed"] = "closed") -> None:
    """Give the harness's gateway limits in Redis at ``url`` (as ENCLAVE_REDIS_URL would)."""
    gateway = gw.app.state.gateway
    store = SharedStore.from_settings(
        EnclaveSettings(redis_url=url, redis_failure_mode=mode), "gateway"
    )
    assert store is not None
    store.count_in("enclave_gateway", gateway.metrics.registry)
    gateway.shared_store = store  # closed with the app
    gateway.rate_limiter = RateLimiter(
        per_instance_rps=0,
        per_instance_burst=1,
        per_user_rpm=60,
        per_user_burst=2,
        limited=gateway.metrics.rate_limited_scopes,
        store=store,
    )


async def test_shared_buckets_answer_429_with_retry_after(
    make_harness: HarnessFactory, redis: RedisServer
) -> None:
    redis.command("FLUSHALL")
    first: Harness = await make_harness()
    second: Harness = await make_harness()
    share_limits(first, redis.url)
    share_limits(second, redis.url)
    # Two gateways, one bucket: the user's burst of 2 is spent across both.
    assert (await first.complete()).status_code == 200
    assert (await second.complete()).status_code == 200
    refused = await first.complete()
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["detail"].startswith("Rate limit exceeded for user user-1")
    assert (await second.complete()).status_code == 429
    metrics = (await first.client.get("/metrics")).text
    assert 'enclave_gateway_rate_limited_total{scope="user"} 1.0' in metrics
    assert "enclave_gateway_redis_up 1.0" in metrics


async def test_redis_away_closed_is_503_open_serves(make_harness: HarnessFactory) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    closed: Harness = await make_harness()
    share_limits(closed, nowhere, "closed")
    response = await closed.complete()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "ENCLAVE_REDIS_URL" in response.json()["detail"]
    assert len(closed.model.requests) == 0  # refused before the model
    metrics = (await closed.client.get("/metrics")).text
    assert "enclave_gateway_redis_up 0.0" in metrics
    assert 'enclave_gateway_redis_degraded_checks_total{decision="refused"} 1.0' in metrics
    opened: Harness = await make_harness()
    share_limits(opened, nowhere, "open")
    for _ in range(4):  # over the burst of 2: no limit while Redis is away
        assert (await opened.complete()).status_code == 200
