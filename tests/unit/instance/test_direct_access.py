"""``POST /api/v4/code_suggestions/direct_access`` against a fake gateway, and the rate limiter."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web
from sqlalchemy import select

from enclave.instance.db.models import FeatureSetting
from enclave.instance.rate_limit import SlidingWindowLimiter, retry_after
from tests.unit.instance.conftest import FakeGateway, LiveInstance

PATH = "/api/v4/code_suggestions/direct_access"


def post(instance: LiveInstance, token: str | None = None) -> httpx.Response:
    return httpx.post(
        instance.url + PATH,
        headers={"PRIVATE-TOKEN": token or instance.admin_token},
        timeout=20,
    )


async def answer_token(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response({"token": "user-token", "expires_at": 1_900_000_000})


def status_answer(status: int, body: Any) -> Any:
    async def handler(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
        return web.json_response(body, status=status)

    return handler


def test_returns_gitlabs_shape(instance: LiveInstance, fresh_gateway: FakeGateway) -> None:
    fresh_gateway.handler = answer_token
    token = instance.new_token(("ai_features",))
    response = post(instance, token)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["base_url"] == fresh_gateway.url
    assert (body["token"], body["expires_at"], body["model_details"]) == (
        "user-token",
        1_900_000_000,
        {},
    )
    [sent] = fresh_gateway.requests
    assert sent.path == "/v1/code/user_access_token"
    claims = jwt.decode(
        sent.headers["Authorization"].split()[1], options={"verify_signature": False}
    )
    assert claims["scopes"] == ["complete_code"]
    headers = body["headers"]
    assert set(headers) == {
        "X-Gitlab-Instance-Id",
        "X-Gitlab-Realm",
        "X-Gitlab-Global-User-Id",
        "X-Gitlab-Host-Name",
        "X-Gitlab-Version",
        "X-Gitlab-Authentication-Type",
    }
    assert headers["X-Gitlab-Authentication-Type"] == "oidc"
    assert headers["X-Gitlab-Realm"] == "self-managed"
    assert headers["X-Gitlab-Instance-Id"] == str(instance.ctx.instance_id)
    # The same pseudonym the completions forwarding sends, and the one the gateway got.
    assert headers["X-Gitlab-Global-User-Id"] == sent.headers["X-Gitlab-Global-User-Id"]
    assert "Authorization" not in headers
    assert response.headers["cache-control"] == "no-store"


def test_global_user_id_is_the_forwarding_pseudonym(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    fresh_gateway.handler = answer_token
    response = post(instance)
    admin_id = 1
    expected = hmac.new(instance.ctx.user_id_salt, str(admin_id).encode(), hashlib.sha256)
    assert response.json()["headers"]["X-Gitlab-Global-User-Id"] == expected.hexdigest()


def test_needs_a_valid_pat_with_an_ai_scope(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    fresh_gateway.handler = answer_token
    assert httpx.post(instance.url + PATH, timeout=10).status_code == 401
    response = post(instance, instance.new_token(("read_user",)))
    assert response.status_code == 403
    assert "insufficient_scope" in response.json()["message"]
    assert post(instance, instance.new_token(("api",))).status_code == 200
    assert not any(r.path == "/v1/code/user_access_token" for r in fresh_gateway.requests[1:])


def test_disabled_feature_is_403(instance: LiveInstance, fresh_gateway: FakeGateway) -> None:
    fresh_gateway.handler = answer_token
    with instance.ctx.sessions() as session:
        model_id = session.scalar(
            select(FeatureSetting.self_hosted_model_id).where(
                FeatureSetting.feature == "code_completions"
            )
        )
    instance.set_feature("code_completions", "disabled")
    try:
        response = post(instance)
        assert response.status_code == 403
        assert "disabled" in response.json()["message"]
        assert response.headers["x-gitlab-error-origin"] == "monolith"
        assert fresh_gateway.requests == []
    finally:
        instance.set_feature("code_completions", "self_hosted", model_id)


@pytest.mark.parametrize(
    ("status", "body", "expected", "fragment"),
    [
        (403, {"detail": "Unauthorized to create user access token"}, 403, "Unauthorized to"),
        (401, {"error": "Forbidden by auth provider"}, 401, "Forbidden by auth provider"),
        (503, {"detail": "no signing key"}, 503, "no signing key"),
        (200, {"unexpected": True}, 503, "unexpected answer"),
        (302, {}, 503, "302"),
    ],
)
def test_gateway_errors_are_passed_on(
    instance: LiveInstance,
    fresh_gateway: FakeGateway,
    status: int,
    body: Any,
    expected: int,
    fragment: str,
) -> None:
    fresh_gateway.handler = status_answer(status, body)
    response = post(instance, instance.new_token(("ai_features",)))
    assert response.status_code == expected
    assert fragment in response.json()["message"]


def test_rate_limit_is_50_a_minute_per_user(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    fresh_gateway.handler = answer_token
    token = instance.new_token(("ai_features",))
    other = instance.new_token(("ai_features",))
    with httpx.Client(headers={"PRIVATE-TOKEN": token}, timeout=20) as client:
        statuses = [client.post(instance.url + PATH).status_code for _ in range(50)]
        assert statuses == [200] * 50
        limited = client.post(instance.url + PATH)
    assert limited.status_code == 429
    message = limited.json()["message"]
    assert message.startswith("This endpoint has been requested too many times. Try again later")
    assert "50 requests per minute per user" in message
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert post(instance, other).status_code == 200  # per user


def test_unreachable_gateway_is_502(
    instance: LiveInstance, fresh_gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    from enclave.instance import ai_settings

    real = ai_settings.effective

    def pointing_nowhere(session: Any, settings: Any) -> Any:
        from dataclasses import replace

        return replace(real(session, settings), ai_gateway_url="http://127.0.0.1:1")

    monkeypatch.setattr(ai_settings, "effective", pointing_nowhere)
    # The settings are cached with the model (caches.py); this swap bypasses the database, so
    # drop the cached ones before and after (the next test must not inherit the bad URL).
    instance.ctx.caches.invalidate("models")
    try:
        response = post(instance, instance.new_token(("ai_features",)))
    finally:
        instance.ctx.caches.invalidate("models")
    assert response.status_code == 502
    assert "could not connect" in response.json()["message"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(3, 60, clock=clock)
    assert [limiter.hit("a") for _ in range(3)] == [None, None, None]
    clock.now = 130
    assert limiter.hit("a") == pytest.approx(30)
    assert limiter.hit("b") is None
    clock.now = 160.5  # the first three hits left the window
    assert limiter.hit("a") is None
    assert retry_after(0.2) == "1"
    assert retry_after(29.1) == "30"


def test_idle_keys_are_forgotten() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(1, 10, clock=clock)
    for user in range(100):
        limiter.hit(user)
    clock.now += 25
    limiter.hit("new")
    assert len(limiter._hits) == 1
