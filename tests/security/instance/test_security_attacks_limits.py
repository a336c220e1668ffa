"""Attacks on the instance's limits (issue 10, point 6).

* one user floods completions, chat or an AI feature: the request over the per-user limit gets
  429 with Retry-After and a message that says what to do; other users are unaffected;
* someone guesses tokens: after ``failed_auth_max_retry`` bad tokens the client address is
  banned, and while banned even a valid token from it gets 429 (our choice, as GitLab's ban
  refuses the address: a guesser cannot tell a hit from a miss); other addresses are not;
  rotating X-Forwarded-For does not escape the ban unless the peer is a trusted proxy;
* a flood of distinct keys cannot grow the limiter without bound;
* every refusal is counted at ``GET /metrics``, by limit name, never by user or address.

Time is an injected clock (the instance's limits are swapped for ones that read it), so no
test sleeps through a window. Runs on SQLite and PostgreSQL (``db_backend``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from tests.unit.instance.conftest import FakeGateway, LiveInstance, answer_json

from enclave.instance import limits
from enclave.instance.limits import InstanceLimits
from enclave.instance.rate_limit import BanList, SlidingWindowLimiter

COMPLETIONS = "/api/v4/code_suggestions/completions"
CHAT = "/api/v4/chat/completions"
EXPLAIN = "/api/v4/ai/explain_code"
COMPLETION_BODY = {"current_file": {"file_name": "a.py", "content_above_cursor": "def add(a, b):"}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def use_limits(live: LiveInstance, clock: Clock, **settings: Any) -> InstanceLimits:
    """Give ``live`` fresh limits that read ``clock``, with ``settings`` overridden."""
    instance_settings = live.settings.instance.model_copy(update=settings)
    live.ctx.limits = InstanceLimits(instance_settings, clock=clock)
    return live.ctx.limits


@pytest.fixture()
def clock(instance: LiveInstance) -> Iterator[Clock]:
    saved = instance.ctx.limits
    yield Clock()
    instance.ctx.limits = saved


def metric(live: LiveInstance, name: str, **labels: str) -> float:
    response = httpx.get(live.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} is not in /metrics")


def assert_429(response: httpx.Response, *fragments: str) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["X-GitLab-Error-Origin"] == "monolith"
    message = response.json()["message"]
    for fragment in fragments:
        assert fragment in message


# --- per-user limits ------------------------------------------------------------------------


def test_61st_completion_in_a_minute_is_429_and_other_users_are_unaffected(
    instance: LiveInstance, fresh_gateway: FakeGateway, clock: Clock
) -> None:
    use_limits(instance, clock)  # the defaults: 60 a minute
    flooder, other = instance.new_token(("ai_features",)), instance.new_token(("ai_features",))
    with httpx.Client(base_url=instance.url, headers={"PRIVATE-TOKEN": flooder}) as client:
        statuses = [client.post(COMPLETIONS, json=COMPLETION_BODY).status_code for _ in range(60)]
        assert statuses == [200] * 60
        clock.advance(30)
        limited = client.post(COMPLETIONS, json=COMPLETION_BODY)
        assert_429(
            limited,
            "requested too many times",
            "60 requests per minute per user",
            "ENCLAVE_INSTANCE__CODE_SUGGESTIONS_API_RATE_LIMIT",
        )
        assert int(limited.headers["Retry-After"]) == 30  # when the first hit leaves the window
        assert flooder not in limited.text
        other_user = httpx.post(
            instance.url + COMPLETIONS, json=COMPLETION_BODY, headers={"PRIVATE-TOKEN": other}
        )
        assert other_user.status_code == 200
        clock.advance(30)
        assert client.post(COMPLETIONS, json=COMPLETION_BODY).status_code == 200
    assert len(fresh_gateway.requests) == 62  # the refused request never reached the gateway
    assert (
        metric(
            instance, "enclave_instance_rate_limited_requests_total", limit="code_suggestions_api"
        )
        == 1
    )
    # Labels name the limit, never the user.
    assert "user" not in httpx.get(instance.url + "/metrics").text.replace("user_", "")


async def chat_answer(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response({"response": "An answer.", "metadata": {"provider": "litellm"}})


async def prompt_answer(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response("An explanation.")


@pytest.mark.parametrize(
    ("path", "body", "handler", "setting", "limit_name", "window"),
    [
        (
            CHAT,
            {"content": "What is a list?"},
            chat_answer,
            "duo_chat_rate_limit",
            limits.CHAT,
            "minute",
        ),
        (
            EXPLAIN,
            {"code": "x = 1"},
            prompt_answer,
            "ai_action_rate_limit",
            limits.AI_ACTION,
            "minute",
        ),
    ],
)
def test_chat_and_ai_features_are_limited_per_user(
    instance: LiveInstance,
    fresh_gateway: FakeGateway,
    clock: Clock,
    path: str,
    body: dict[str, Any],
    handler: Any,
    setting: str,
    limit_name: str,
    window: str,
) -> None:
    fresh_gateway.handler = handler
    use_limits(instance, clock, **{setting: 3})
    flooder, other = instance.new_token(("ai_features",)), instance.new_token(("ai_features",))
    with httpx.Client(base_url=instance.url, headers={"PRIVATE-TOKEN": flooder}) as client:
        first = [client.post(path, json=body) for _ in range(3)]
        assert [r.status_code for r in first] == [200] * 3, first[0].text
        assert_429(
            client.post(path, json=body), f"3 requests per {window} per user", setting.upper()
        )
    assert (
        httpx.post(instance.url + path, json=body, headers={"PRIVATE-TOKEN": other}).status_code
        == 200
    )
    clock.advance(61)
    assert (
        httpx.post(instance.url + path, json=body, headers={"PRIVATE-TOKEN": flooder}).status_code
        == 200
    )
    assert metric(instance, "enclave_instance_rate_limited_requests_total", limit=limit_name) == 1


def test_a_limit_set_to_0_is_off(
    instance: LiveInstance, fresh_gateway: FakeGateway, clock: Clock
) -> None:
    fresh_gateway.handler = answer_json
    use_limits(instance, clock, code_suggestions_api_rate_limit=0)
    token = instance.new_token(("ai_features",))
    with httpx.Client(base_url=instance.url, headers={"PRIVATE-TOKEN": token}) as client:
        statuses = {client.post(COMPLETIONS, json=COMPLETION_BODY).status_code for _ in range(70)}
    assert statuses == {200}


# --- failed authentications per client address --------------------------------------------


@pytest.fixture()
def behind_proxy(live_instance_factory: Callable[..., LiveInstance]) -> LiveInstance:
    """An instance behind a reverse proxy on loopback: X-Forwarded-For names the client."""
    return live_instance_factory(trusted_proxies=["127.0.0.1/32"])


def from_address(live: LiveInstance, address: str, token: str) -> httpx.Response:
    return httpx.get(
        live.url + "/api/v4/user",
        headers={"PRIVATE-TOKEN": token, "X-Forwarded-For": address},
    )


BAD = "enclpat-" + "x" * 43


def test_failed_authentications_ban_the_address_until_the_ban_ends(
    behind_proxy: LiveInstance,
) -> None:
    clock = Clock()
    use_limits(
        behind_proxy,
        clock,
        failed_auth_max_retry=3,
        failed_auth_find_time_s=60,
        failed_auth_ban_time_s=600,
    )
    good = behind_proxy.new_token(("api",))
    attacker, neighbour = "10.9.0.1", "10.9.0.2"
    # Three wrong tokens: still 401 each (the third is the one that bans).
    assert [from_address(behind_proxy, attacker, BAD).status_code for _ in range(3)] == [401] * 3
    banned = from_address(behind_proxy, attacker, good)  # a valid token, from the banned address
    assert_429(
        banned, "Too many failed authentication attempts", "ENCLAVE_INSTANCE__FAILED_AUTH_MAX_RETRY"
    )
    assert banned.headers["Retry-After"] == "600"
    assert good not in banned.text and BAD not in banned.text
    # Another address behind the same proxy is not affected, nor are token-free endpoints.
    assert from_address(behind_proxy, neighbour, good).status_code == 200
    assert (
        httpx.get(
            behind_proxy.url + "/oauth/discovery/keys", headers={"X-Forwarded-For": attacker}
        ).status_code
        == 200
    )
    clock.advance(599)
    assert from_address(behind_proxy, attacker, good).status_code == 429
    clock.advance(2)
    assert from_address(behind_proxy, attacker, good).status_code == 200
    assert (
        metric(behind_proxy, "enclave_instance_failed_authentications_total", reason="unknown") == 3
    )
    assert metric(behind_proxy, "enclave_instance_failed_authentication_bans_total") == 1
    assert (
        metric(
            behind_proxy,
            "enclave_instance_rate_limited_requests_total",
            limit="failed_authentication",
        )
        == 2
    )
    assert "10.9.0.1" not in httpx.get(behind_proxy.url + "/metrics").text


def test_failures_spread_beyond_the_find_time_do_not_ban(behind_proxy: LiveInstance) -> None:
    clock = Clock()
    use_limits(behind_proxy, clock, failed_auth_max_retry=3, failed_auth_find_time_s=60)
    good = behind_proxy.new_token(("api",))
    for _ in range(6):
        assert from_address(behind_proxy, "10.9.0.3", BAD).status_code == 401
        clock.advance(31)  # never three within a minute
    assert from_address(behind_proxy, "10.9.0.3", good).status_code == 200


def test_requests_without_a_token_do_not_count(behind_proxy: LiveInstance) -> None:
    use_limits(behind_proxy, Clock(), failed_auth_max_retry=2)
    for _ in range(5):
        response = httpx.get(
            behind_proxy.url + "/api/v4/user", headers={"X-Forwarded-For": "10.9.0.4"}
        )
        assert response.status_code == 401
    assert (
        from_address(behind_proxy, "10.9.0.4", behind_proxy.new_token(("api",))).status_code == 200
    )


def test_rotating_x_forwarded_for_does_not_escape_the_ban_without_a_trusted_proxy(
    live_instance_factory: Callable[..., LiveInstance],
) -> None:
    live = live_instance_factory()  # no trusted proxies: the TCP peer is the client
    use_limits(live, Clock(), failed_auth_max_retry=3, failed_auth_exempt_cidrs=[])
    for n in range(3):
        assert from_address(live, f"10.9.1.{n}", BAD).status_code == 401
    assert from_address(live, "10.9.1.99", live.admin_token).status_code == 429


def test_exempt_addresses_are_never_banned(
    live_instance_factory: Callable[..., LiveInstance],
) -> None:
    # GitLab's ip_whitelist, for a same-host proxy that cannot send X-Forwarded-For.
    live = live_instance_factory()
    use_limits(live, Clock(), failed_auth_max_retry=2, failed_auth_exempt_cidrs=["127.0.0.0/8"])
    for _ in range(4):
        assert from_address(live, "10.9.2.1", BAD).status_code == 401
    assert from_address(live, "10.9.2.1", live.admin_token).status_code == 200


def test_loopback_is_banned_by_default(live_instance_factory: Callable[..., LiveInstance]) -> None:
    # Deny when unsure: a flood of bad tokens from the instance's own host is throttled too.
    live = live_instance_factory()
    use_limits(live, Clock(), failed_auth_max_retry=2)
    for _ in range(2):
        assert from_address(live, "127.0.0.1", BAD).status_code == 401
    refused = from_address(live, "127.0.0.1", live.admin_token)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1


# --- bounded memory -------------------------------------------------------------------------


def test_a_flood_of_distinct_addresses_keeps_the_limiter_bounded() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(3, 60, clock=clock, max_keys=100)
    for n in range(10_000):
        assert limiter.hit(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}") is None
    assert len(limiter) == 100
    # The most recent keys are the ones kept, and they are still counted.
    assert limiter.count("10.0.39.15") == 1
    bans = BanList(clock=clock, max_keys=100)
    for n in range(10_000):
        bans.ban(n, 600 + n)
    assert len(bans) == 100
    assert bans.remaining(9_999) is not None  # the longest bans survive
    assert bans.remaining(0) is None


def test_a_flood_of_bad_tokens_from_many_addresses_is_bounded(behind_proxy: LiveInstance) -> None:
    limits_ = use_limits(behind_proxy, Clock(), failed_auth_max_retry=1, rate_limit_max_keys=100)
    with httpx.Client(base_url=behind_proxy.url) as client:
        for n in range(150):
            response = client.get(
                "/api/v4/user",
                headers={"PRIVATE-TOKEN": BAD, "X-Forwarded-For": f"10.8.0.{n % 250}"},
            )
            assert response.status_code in (401, 429)
    assert len(limits_.bans) <= 100
