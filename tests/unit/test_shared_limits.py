"""The rate limits of both roles on both backends: in process, and in a real ``redis-server``.

The same tests run against each backend (``backend`` parameter), in real time with short
windows (Redis counts with its own clock, so no injected clock here). Then what only Redis
has: two replicas share one limit, and the failure modes while Redis is refused or frozen:
closed answers 503 with Retry-After, open lets requests through, both within the timeout
(never a hang), logged once per transition and counted in /metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from enclave.common.net import free_port
from enclave.common.shared_store import SharedStateUnavailable, SharedStore
from enclave.config import EnclaveSettings, InstanceSettings
from enclave.gateway.rate_limit import RateLimited, RateLimiter, RedisTokenBuckets
from enclave.instance.api.errors import InstanceAPIError  # first: limits imports the API
from enclave.instance.limits import CHAT, CODE_SUGGESTIONS, InstanceLimits
from tests.redis_server import RedisServer, redis_server, redis_wanted

pytestmark = pytest.mark.anyio

Backend = Literal["local", "redis"]


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    wanted, reason = redis_wanted()
    if not wanted:
        pytest.skip(reason)
    with redis_server() as server:
        yield server


def new_store(url: str, mode: Literal["open", "closed"] = "closed", **extra: Any) -> SharedStore:
    settings = EnclaveSettings(redis_url=url, redis_failure_mode=mode, **extra)
    store = SharedStore.from_settings(settings, "test")
    assert store is not None
    return store


@pytest.fixture(params=["local", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SharedStore | None]:
    if request.param == "local":
        yield None
        return
    server: RedisServer = request.getfixturevalue("redis")
    server.command("FLUSHALL")
    shared = new_store(server.url)
    yield shared
    await shared.close()


def instance_limits(store: SharedStore | None, **settings: Any) -> InstanceLimits:
    return InstanceLimits(InstanceSettings(**settings), store=store)


# --- the same semantics on both backends ----------------------------------------------------


async def test_instance_limit_429_after_the_limit_then_frees(store: SharedStore | None) -> None:
    lim = instance_limits(store, code_suggestions_api_rate_limit=3)
    for _ in range(3):
        await lim.check(CODE_SUGGESTIONS, 7)
    with pytest.raises(InstanceAPIError) as refused:
        await lim.check(CODE_SUGGESTIONS, 7)
    assert refused.value.status == 429
    assert refused.value.headers == {"Retry-After": "60"}
    assert "limit for code suggestions is 3 requests per minute" in refused.value.message
    await lim.check(CODE_SUGGESTIONS, 8)  # another user is not affected
    await lim.check(CHAT, 7)  # nor another limit
    assert (
        "enclave_instance_rate_limited_requests_total"
        in generate_latest(lim.metrics.registry).decode()
    )


async def test_instance_window_slides(store: SharedStore | None) -> None:
    lim = instance_limits(store, duo_chat_rate_limit=2, duo_chat_rate_limit_window_s=1)
    await lim.check(CHAT, 1)
    await lim.check(CHAT, 1)
    with pytest.raises(InstanceAPIError) as refused:
        await lim.check(CHAT, 1)
    assert refused.value.headers == {"Retry-After": "1"}
    await asyncio.sleep(1.1)
    await lim.check(CHAT, 1)


async def test_failed_auth_ban_on_both_backends(store: SharedStore | None) -> None:
    lim = instance_limits(store, failed_auth_max_retry=3, failed_auth_ban_time_s=1)
    for _ in range(2):
        await lim.auth_failed("10.0.0.5", "unknown")
        await lim.check_address("10.0.0.5")  # not banned yet
    await lim.auth_failed("10.0.0.5", "unknown")  # the 3rd bans
    with pytest.raises(InstanceAPIError) as banned:
        await lim.check_address("10.0.0.5")
    assert banned.value.status == 429
    assert banned.value.headers == {"Retry-After": "1"}
    await lim.check_address("10.0.0.6")
    await lim.auth_failed("10.0.0.7", "missing")  # no token: never counts
    await asyncio.sleep(1.1)
    await lim.check_address("10.0.0.5")  # the ban is over


async def test_gateway_buckets_burst_then_refill(store: SharedStore | None) -> None:
    limiter = RateLimiter(
        per_instance_rps=0, per_instance_burst=1, per_user_rpm=600, per_user_burst=3, store=store
    )
    assert isinstance(limiter.users, RedisTokenBuckets) == (store is not None)
    for _ in range(3):
        await limiter.check("iss", "inst", "u1")
    with pytest.raises(RateLimited) as refused:
        await limiter.check("iss", "inst", "u1")
    assert (refused.value.status, refused.value.scope, refused.value.retry_after_s) == (
        429,
        "user",
        1,
    )
    await limiter.check("iss", "inst", "u2")
    await asyncio.sleep(0.15)  # 10 tokens a second: one is back
    await limiter.check("iss", "inst", "u1")


async def test_gateway_instance_limit(store: SharedStore | None) -> None:
    limiter = RateLimiter(
        per_instance_rps=2, per_instance_burst=2, per_user_rpm=0, per_user_burst=1, store=store
    )
    await limiter.check("iss", "a", None)
    await limiter.check("iss", "a", None)
    with pytest.raises(RateLimited) as refused:
        await limiter.check("iss", "a", None)
    assert refused.value.scope == "instance"
    assert refused.value.detail == (
        "Rate limit exceeded for instance a: 2 requests per second; retry after 1 s"
    )
    await limiter.check("iss", "b", None)


# --- what only the shared backend does ------------------------------------------------------


async def test_two_replicas_share_one_limit(redis: RedisServer) -> None:
    redis.command("FLUSHALL")
    # 100 checks at once open dozens of connections: on a loaded CI box that takes longer
    # than the 0.1 s default, which is about Redis answering, not about this test.
    stores = [new_store(redis.url, redis_timeout_s=1), new_store(redis.url, redis_timeout_s=1)]
    replicas = [instance_limits(s, code_suggestions_api_rate_limit=10) for s in stores]
    admitted = 0
    refused = 0

    async def one(i: int) -> None:
        nonlocal admitted, refused
        try:
            await replicas[i % 2].check(CODE_SUGGESTIONS, 42)
            admitted += 1
        except InstanceAPIError as exc:
            assert exc.status == 429
            refused += 1

    await asyncio.gather(*(one(i) for i in range(100)))
    assert (admitted, refused) == (10, 90)  # atomic scripts: exactly the limit, not 2x
    gateways = [
        RateLimiter(
            per_instance_rps=0, per_instance_burst=1, per_user_rpm=1, per_user_burst=5, store=s
        )
        for s in stores
    ]
    results = await asyncio.gather(
        *(gateways[i % 2].check("iss", "inst", "u") for i in range(50)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 5
    for s in stores:
        await s.close()


async def test_keys_expire_and_hold_no_user_in_clear(redis: RedisServer) -> None:
    redis.command("FLUSHALL")
    store = new_store(redis.url)
    lim = instance_limits(store, duo_chat_rate_limit=5, duo_chat_rate_limit_window_s=1)
    await lim.check(CHAT, 123456789)
    keys = redis.command("KEYS", "*").decode()
    assert "enclave:test:window:duo_chat:" in keys
    assert "123456789" not in keys
    assert b":1\r\n" in redis.command("DBSIZE")
    await asyncio.sleep(1.2)
    assert b":0\r\n" in redis.command("DBSIZE")  # expired with its window
    await store.close()


# --- Redis away: refused connections, and a frozen server -----------------------------------


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


async def test_closed_mode_answers_503_fast_logs_once_and_counts(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://:hunter2secret@127.0.0.1:{free_port()}/0"  # nothing listens there
    store = new_store(url, "closed")
    lim = instance_limits(store)
    started = time.monotonic()
    for _ in range(20):
        with pytest.raises(InstanceAPIError) as refused:
            await lim.check(CODE_SUGGESTIONS, 1)
        assert refused.value.status == 503
        assert refused.value.headers == {"Retry-After": "1"}
    assert time.monotonic() - started < 2
    assert "ENCLAVE_REDIS_FAILURE_MODE=open" in refused.value.message
    # A banned-address check refuses the same way; a failed auth is still just a 401.
    with pytest.raises(InstanceAPIError):
        await lim.check_address("10.1.1.1")
    await lim.auth_failed("10.1.1.1", "unknown")
    text = generate_latest(lim.metrics.registry).decode()
    assert metric_value(text, "enclave_instance_redis_up") == 0
    assert metric_value(text, "enclave_instance_redis_failures_total") == 1  # then short-cut
    # 20 checks, the address check, and the failed auth that could not be counted.
    assert 'enclave_instance_redis_degraded_checks_total{decision="refused"} 22.0' in text
    logged = capsys.readouterr().out + capsys.readouterr().err + caplog.text
    assert logged.count("redis_unreachable") == 1
    assert "hunter2secret" not in logged
    assert "hunter2secret" not in refused.value.message
    await store.close()


async def test_open_mode_lets_requests_through() -> None:
    store = new_store(f"redis://127.0.0.1:{free_port()}/0", "open")
    registry = CollectorRegistry(auto_describe=False)
    store.count_in("enclave_gateway", registry)
    limiter = RateLimiter(
        per_instance_rps=1, per_instance_burst=1, per_user_rpm=1, per_user_burst=1, store=store
    )
    for _ in range(10):
        await limiter.check("iss", "inst", "u")  # no limit while Redis is away
    text = generate_latest(registry).decode()
    # Two checks a request (user, instance), each let through.
    assert 'enclave_gateway_redis_degraded_checks_total{decision="allowed"} 20.0' in text
    assert "enclave_gateway_redis_up 0.0" in text
    await store.close()


async def test_frozen_redis_never_hangs_and_recovery_is_logged(
    redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    redis.command("FLUSHALL")
    store = new_store(redis.url, "closed", redis_retry_s=0.2)
    limiter = RateLimiter(
        per_instance_rps=0, per_instance_burst=1, per_user_rpm=600, per_user_burst=100, store=store
    )
    await limiter.check("iss", "inst", "u")
    redis.pause()
    try:
        started = time.monotonic()
        with pytest.raises(RateLimited) as refused:
            await limiter.check("iss", "inst", "u")
        assert time.monotonic() - started < 0.5  # redis_timeout_s 0.1, not a hang
        assert refused.value.status == 503
        assert not store.available
    finally:
        redis.resume()
    await asyncio.sleep(0.3)  # past redis_retry_s: the next call tries Redis again
    await limiter.check("iss", "inst", "u")
    assert store.available
    out = capsys.readouterr().out
    assert out.count("redis_unreachable") == 1
    assert out.count("redis_reachable_again") == 1
    await store.close()


async def test_unavailable_message_is_actionable() -> None:
    exc = SharedStateUnavailable(2)
    assert "retry in 2 s" in exc.message
    assert "ENCLAVE_REDIS_URL" in exc.message
