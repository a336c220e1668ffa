"""The instance's limits in a real Redis, over HTTP: the shared count answers 429 as the
in-process one does; a Redis that cannot be reached answers 503 with Retry-After (closed) or
lets requests through (open), while health and metrics never need it. The unit cases of both
backends are in tests/unit/test_shared_limits.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import httpx
import pytest

from enclave.common.net import free_port
from enclave.common.shared_store import SharedStore
from enclave.config import EnclaveSettings
from enclave.instance.limits import InstanceLimits
from tests.redis_server import RedisServer, redis_server, redis_wanted
from tests.unit.instance.conftest import FakeGateway, LiveInstance

COMPLETIONS = "/api/v4/code_suggestions/completions"
BODY = {"current_file": {"file_name": "a.py", "content_above_cursor": "def add(a, b):"}}


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    wanted, reason = redis_wanted()
    if not wanted:
        pytest.skip(reason)
    with redis_server() as server:
        yield server


@pytest.fixture()
def shared(instance: LiveInstance) -> Iterator[Any]:
    """Swap the instance's limits for ones in Redis (as ENCLAVE_REDIS_URL does at start-up)."""
    saved = instance.ctx.limits

    def use(url: str, mode: Literal["open", "closed"] = "closed", **limits: Any) -> None:
        settings = EnclaveSettings(redis_url=url, redis_failure_mode=mode)
        store = SharedStore.from_settings(settings, "instance")
        instance_settings = instance.settings.instance.model_copy(update=limits)
        instance.ctx.limits = InstanceLimits(instance_settings, store=store)

    yield use
    instance.ctx.limits = saved


def test_the_shared_count_answers_429(
    instance: LiveInstance, fresh_gateway: FakeGateway, redis: RedisServer, shared: Any
) -> None:
    redis.command("FLUSHALL")
    shared(redis.url, code_suggestions_api_rate_limit=3)
    token = instance.new_token(("ai_features",))
    with httpx.Client(base_url=instance.url, headers={"PRIVATE-TOKEN": token}) as client:
        statuses = [client.post(COMPLETIONS, json=BODY).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = client.post(COMPLETIONS, json=BODY)
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert "3 requests per minute per user" in limited.json()["message"]
    metrics = httpx.get(instance.url + "/metrics").text
    assert "enclave_instance_redis_up 1.0" in metrics
    assert b"enclave:instance:window:code_suggestions_api:" in redis.command("KEYS", "*")


def test_redis_away_closed_is_503_open_serves(
    instance: LiveInstance, fresh_gateway: FakeGateway, shared: Any
) -> None:
    nowhere = f"redis://:s3cretpass@127.0.0.1:{free_port()}/0"
    token = instance.new_token(("api",))
    shared(nowhere, "closed")
    refused = httpx.get(instance.url + "/api/v4/user", headers={"PRIVATE-TOKEN": token})
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "1"
    assert "ENCLAVE_REDIS_FAILURE_MODE=open" in refused.json()["message"]
    assert "s3cretpass" not in refused.text
    # Health, readiness and metrics need no Redis.
    assert httpx.get(instance.url + "/-/liveness").status_code == 200
    metrics = httpx.get(instance.url + "/metrics")
    assert metrics.status_code == 200
    assert "enclave_instance_redis_up 0.0" in metrics.text
    shared(nowhere, "open")
    served = httpx.get(instance.url + "/api/v4/user", headers={"PRIVATE-TOKEN": token})
    assert served.status_code == 200, served.text
