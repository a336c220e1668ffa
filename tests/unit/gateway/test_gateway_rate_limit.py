"""In-process rate limits: token buckets per instance and per user on the AI endpoints."""

from __future__ import annotations

import pytest
from gateway_fakes import INSTANCE_ID, Harness, HarnessFactory

from enclave.config import GatewaySettings
from enclave.gateway.rate_limit import RateLimited, RateLimiter, TokenBuckets

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_defaults_are_on_and_generous() -> None:
    settings = GatewaySettings()
    assert settings.rate_limit_per_instance_rps == 1000
    assert settings.rate_limit_per_instance_burst == 2000
    assert settings.rate_limit_per_user_rpm == 600
    assert settings.rate_limit_per_user_burst == 100
    assert settings.rate_limit_max_buckets == 100_000


def test_bucket_allows_a_burst_then_refills() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_s=2, capacity=3, clock=clock)
    assert [buckets.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k") == pytest.approx(0.5)
    clock.now += 0.5
    assert buckets.take("k") == 0.0
    clock.now += 100  # never more than the capacity
    assert [buckets.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k") > 0


def test_bucket_count_is_capped_oldest_first() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_s=1, capacity=1, clock=clock, max_buckets=3)
    for key in ("a", "b", "c", "d"):
        assert buckets.take(key) == 0.0
    assert len(buckets) == 3
    assert "a" not in buckets
    assert "d" in buckets
    assert buckets.take("b") > 0  # kept buckets keep their state


async def test_limiter_messages_and_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(
        per_instance_rps=0,
        per_instance_burst=1,
        per_user_rpm=6,
        per_user_burst=1,
        clock=clock,
    )
    await limiter.check("iss", "inst", "u1")
    with pytest.raises(RateLimited) as caught:
        await limiter.check("iss", "inst", "u1")
    assert caught.value.scope == "user"
    assert caught.value.retry_after_s == 10
    assert caught.value.detail == (
        "Rate limit exceeded for user u1 of instance inst: 6 requests per minute; retry after 10 s"
    )


async def test_limiter_off_when_both_zero() -> None:
    limiter = RateLimiter(
        per_instance_rps=0, per_instance_burst=1, per_user_rpm=0, per_user_burst=1
    )
    assert not limiter.enabled
    for _ in range(1000):
        await limiter.check("iss", "inst", "u1")


async def test_instance_burst_then_429(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(
        rate_limit_per_instance_rps=1, rate_limit_per_instance_burst=3, rate_limit_per_user_rpm=0
    )
    headers = gw.headers()
    for _ in range(3):
        assert (await gw.complete(headers=headers)).status_code == 200
    response = await gw.complete(headers=headers)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json() == {
        "detail": f"Rate limit exceeded for instance {INSTANCE_ID}: 1 requests per second; "
        "retry after 1 s"
    }
    assert len(gw.model.requests) == 3  # the refused request never reached the model
    gw.clock.advance(1)
    assert (await gw.complete(headers=headers)).status_code == 200
    metrics = (await gw.client.get("/metrics")).text
    assert 'enclave_gateway_rate_limited_total{scope="instance"} 1.0' in metrics
    assert (
        'enclave_gateway_requests_total{route="/v2/code/completions",status="429"} 1.0' in metrics
    )


async def test_users_are_limited_separately(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(rate_limit_per_user_rpm=60, rate_limit_per_user_burst=2)
    token = gw.token()
    alice = gw.headers(token, **{"X-Gitlab-Global-User-Id": "alice"})
    bob = gw.headers(token, **{"X-Gitlab-Global-User-Id": "bob"})
    assert (await gw.complete(headers=alice)).status_code == 200
    assert (await gw.complete(headers=alice)).status_code == 200
    refused = await gw.complete(headers=alice)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["detail"].startswith(
        f"Rate limit exceeded for user alice of instance {INSTANCE_ID}: 60 requests per minute"
    )
    assert (await gw.complete(headers=bob)).status_code == 200
    assert (await gw.complete(headers=bob)).status_code == 200
    # No user header: only the instance limit applies.
    anonymous = gw.headers(token, **{"X-Gitlab-Global-User-Id": None})
    for _ in range(5):
        assert (await gw.complete(headers=anonymous)).status_code == 200
    metrics = (await gw.client.get("/metrics")).text
    assert 'enclave_gateway_rate_limited_total{scope="user"} 1.0' in metrics


async def test_rate_limit_applies_to_generations_too(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(rate_limit_per_user_rpm=60, rate_limit_per_user_burst=1)
    headers = gw.headers()
    assert (await gw.complete(path="/v2/code/generations", headers=headers)).status_code == 200
    response = await gw.complete(path="/v2/code/generations", headers=headers)
    assert response.status_code == 429


async def test_unauthenticated_requests_are_not_rate_limited(
    make_harness: HarnessFactory,
) -> None:
    gw: Harness = await make_harness(
        rate_limit_per_instance_rps=1, rate_limit_per_instance_burst=1, rate_limit_per_user_rpm=0
    )
    for _ in range(3):
        response = await gw.client.post("/v2/code/completions", json=gw.body())
        assert response.status_code == 401
    assert (await gw.complete()).status_code == 200


async def test_disabled_when_zero(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(rate_limit_per_instance_rps=0, rate_limit_per_user_rpm=0)
    assert not gw.app.state.gateway.rate_limiter.enabled
    headers = gw.headers()
    for _ in range(120):
        assert (await gw.complete(headers=headers)).status_code == 200


async def test_gateway_bucket_cap(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(
        rate_limit_per_user_rpm=60, rate_limit_per_user_burst=1, rate_limit_max_buckets=2
    )
    token = gw.token()
    for user in ("u1", "u2", "u3"):
        headers = gw.headers(token, **{"X-Gitlab-Global-User-Id": user})
        assert (await gw.complete(headers=headers)).status_code == 200
    users = gw.app.state.gateway.rate_limiter.users
    assert users is not None and len(users) == 2
    # u1's bucket was dropped: it starts again full.
    headers = gw.headers(token, **{"X-Gitlab-Global-User-Id": "u1"})
    assert (await gw.complete(headers=headers)).status_code == 200
