"""The per-endpoint circuit breaker: a failing endpoint is not called again for a while."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from provider_fakes import FakeProvider
from provider_setup import error_reply, no_sleep, success
from wire_fixtures import ANSWER

from enclave.common.http1 import Http1Client
from enclave.gateway.models.anthropic import AnthropicClient
from enclave.gateway.models.base import (
    ModelRequest,
    ModelRequestRejected,
    ModelServerError,
    ModelUnreachable,
)
from enclave.gateway.models.http_provider import CircuitBreaker

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    server = FakeProvider()
    await server.start()
    yield server
    await server.stop()


async def test_breaker_opens_waits_and_closes(fake: FakeProvider) -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, cooldown_s=10, clock=clock)
    async with Http1Client() as session:
        client = AnthropicClient(session, 5, retries=0, sleep=no_sleep, breaker=breaker)
        request = ModelRequest(endpoint=fake.base, model="claude", api="chat", api_key="k" * 8)
        fake.script(
            error_reply("anthropic", 500),
            error_reply("anthropic", 500),
            success("anthropic", False),
        )
        for _ in range(2):
            with pytest.raises(ModelServerError):
                await client.complete(request)
        with pytest.raises(ModelUnreachable, match="failed several times in a row"):
            await client.complete(request)
        assert len(fake.seen) == 2  # the open circuit called nothing
        clock.now += 10
        assert (await client.complete(request)).text == ANSWER  # the probe succeeds: closed
        fake.script(error_reply("anthropic", 500), success("anthropic", False))
        with pytest.raises(ModelServerError):
            await client.complete(request)  # one failure after closing: still closed
        assert (await client.complete(request)).text == ANSWER


async def test_caller_errors_do_not_open_the_breaker(fake: FakeProvider) -> None:
    breaker = CircuitBreaker(threshold=1, cooldown_s=10, clock=Clock())
    async with Http1Client() as session:
        client = AnthropicClient(session, 5, retries=0, sleep=no_sleep, breaker=breaker)
        request = ModelRequest(endpoint=fake.base, model="claude", api="chat", api_key="k" * 8)
        fake.script(error_reply("anthropic", 400, "bad request"), success("anthropic", False))
        with pytest.raises(ModelRequestRejected):
            await client.complete(request)
        assert (await client.complete(request)).text == ANSWER
        fake.script(error_reply("anthropic", 429))
        with pytest.raises(Exception, match="rate limiting"):
            await client.complete(request)
        fake.script(success("anthropic", False))
        assert (await client.complete(request)).text == ANSWER
