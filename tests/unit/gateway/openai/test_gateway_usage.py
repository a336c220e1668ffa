"""Usage of the direct paths: the gateway counts requests made with users' tokens (the
OpenAI-compatible API, direct-access code completions) per user pseudonym, feature and model,
with the model's tokens, and pushes them to the instance with the routes secret; the
instance's own tokens are never counted here (the instance counts those itself)."""

from __future__ import annotations

from typing import Any

import pytest
from gateway_fakes import ROUTES_SECRET
from openai_harness import USER_ID, OpenAIFactory, OpenAIHarness, make_openai, oai

from enclave.gateway.usage import RequestUsage, UsageCounter, UsagePusher

__all__ = ["make_openai", "oai"]  # fixtures

pytestmark = pytest.mark.anyio


def pusher_of(oai: OpenAIHarness) -> UsagePusher:
    pusher = oai.h.app.state.gateway.usage_pusher
    assert pusher is not None
    return pusher


def entries(oai: OpenAIHarness) -> list[dict[str, Any]]:
    return [e for push in oai.issuer.usage_pushes for e in push["entries"]]


async def test_openai_calls_are_counted_per_user_feature_and_model(oai: OpenAIHarness) -> None:
    assert (await oai.chat()).status_code == 200
    assert (await oai.chat(stream=True)).status_code == 200
    oai.model.status = 500  # the model fails: an error of this user, feature and model
    refused = await oai.chat()
    assert refused.status_code == 503, refused.text
    assert await pusher_of(oai).push_once()
    [entry] = entries(oai)
    assert (entry["user"], entry["feature"], entry["model"]) == (
        USER_ID,
        "duo_chat",
        "duo_chat-model",
    )
    assert (entry["requests"], entry["errors"]) == (3, 1)
    # The fake model reports 27 prompt and 9 completion tokens per call (streamed or not).
    assert (entry["input_tokens"], entry["output_tokens"]) == (54, 18)
    assert entry["latency_ms_total"] >= 0
    assert oai.issuer.usage_pushes[0]["version"] == 1
    # Pushed once: nothing left to send.
    assert await pusher_of(oai).push_once()
    assert len(oai.issuer.usage_pushes) == 1


async def test_direct_access_is_counted_and_instance_tokens_are_not(oai: OpenAIHarness) -> None:
    gateway = oai.h.app.state.gateway
    # The instance's own token: the instance counts these, the gateway must not.
    assert (await oai.h.complete()).status_code == 200
    assert gateway.usage.pending() == 0
    token = await oai.h.user_token(USER_ID)
    headers = oai.h.user_headers(token, USER_ID)
    assert (await oai.h.complete(oai.h.user_body(), headers=headers)).status_code == 200
    assert await pusher_of(oai).push_once()
    [entry] = entries(oai)
    assert (entry["user"], entry["feature"], entry["requests"]) == (
        USER_ID,
        "code_completions",
        1,
    )
    assert entry["model"] == "code_completions-model"


async def test_a_failed_push_keeps_the_counts(oai: OpenAIHarness) -> None:
    assert (await oai.chat()).status_code == 200
    oai.issuer.usage_status = 503
    pusher = pusher_of(oai)
    assert not await pusher.push_once()
    assert pusher.last_error == "the instance answered HTTP 503"
    oai.issuer.usage_status = None
    assert await pusher.push_once()
    assert [e["requests"] for e in entries(oai)] == [1]


async def test_no_pusher_without_the_routes_secret(make_openai: OpenAIFactory) -> None:
    oai = await make_openai(load=False, secret=None)
    assert oai.h.app.state.gateway.usage_pusher is None
    assert ROUTES_SECRET  # the harness's default secret is what the pushes present


def test_counter_is_bounded_and_counts_drops() -> None:
    counter = UsageCounter(max_keys=1)
    counter.add(RequestUsage("u1", "duo_chat", "m"), 200, 0.1)
    counter.add(RequestUsage("u1", "duo_chat", "m"), 500, 0.1)
    counter.add(RequestUsage("u2", "duo_chat", "m"), 200, 0.1)
    counter.add(RequestUsage(None, "duo_chat", "m"), 200, 0.1)  # unclaimed: not counted
    assert counter.pending() == 1 and counter.dropped == 1
    [values] = counter.take().values()
    assert values[:2] == [2, 1]


async def test_whole_answers_carry_the_token_counts_for_the_instance(oai: OpenAIHarness) -> None:
    response = await oai.h.complete()  # the instance's token, a whole (not streamed) answer
    assert response.status_code == 200, response.text
    assert response.headers["X-Enclave-Input-Tokens"] == "27"
    assert response.headers["X-Enclave-Output-Tokens"] == "9"
