"""Duo Chat over REST (feature routing, fallback, forwarding) and the full readiness probe."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import jwt
import pytest
from aiohttp import web
from sqlalchemy import select

from enclave.instance.db import FeatureSetting
from tests.unit.instance.admin_helpers import ADMIN, Api
from tests.unit.instance.conftest import EMBEDDED_ENDPOINT, MODEL_API_KEY, FakeGateway, LiveInstance

CHAT = "/api/v4/chat/completions"


async def chat_answer(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response(
        {"response": "Use a list comprehension.", "metadata": {"provider": "litellm"}}
    )


@pytest.fixture()
def api(instance: LiveInstance) -> Api:
    return Api(instance)


@pytest.fixture()
def chat_gateway(fresh_gateway: FakeGateway) -> FakeGateway:
    fresh_gateway.handler = chat_answer
    return fresh_gateway


@pytest.fixture()
def restore_features(instance: LiveInstance) -> Iterator[None]:
    with instance.ctx.sessions() as session:
        saved = [
            (r.feature, r.provider, r.self_hosted_model_id)
            for r in session.scalars(select(FeatureSetting))
        ]
    yield
    with instance.ctx.sessions() as session, session.begin():
        for row in session.scalars(select(FeatureSetting)):
            session.delete(row)
        session.flush()
        for feature, provider, model_id in saved:
            session.add(
                FeatureSetting(feature=feature, provider=provider, self_hosted_model_id=model_id)
            )


def test_chat_goes_to_the_duo_chat_model(api: Api, chat_gateway: FakeGateway) -> None:
    response = api.post(CHAT, {"content": "How do I flatten a list?", "resource_type": "issue"})
    assert response.status_code == 200, response.text
    assert response.json() == "Use a list comprehension."
    [sent] = chat_gateway.requests
    assert sent.path == "/v1/chat/agent"
    [component] = sent.body["prompt_components"]
    assert component["payload"] == {
        "content": [{"role": "user", "content": "How do I flatten a list?"}],
        "provider": "litellm",
        "model": "general",
        "model_endpoint": EMBEDDED_ENDPOINT,
        "model_api_key": MODEL_API_KEY,
        "model_identifier": "custom_openai/smollm2",
    }
    token = sent.headers["Authorization"].removeprefix("Bearer ")
    assert jwt.decode(token, options={"verify_signature": False})["scopes"] == ["duo_chat"]


def test_slash_commands_use_their_feature_with_fallback(
    api: Api, chat_gateway: FakeGateway, restore_features: None
) -> None:
    # Unassigned: /explain follows duo_chat.
    assert api.post(CHAT, {"content": "/explain x = [y for y in z]"}).status_code == 200
    sent = chat_gateway.requests[-1]
    assert sent.path == "/v1/chat/explain_code"
    assert sent.body["prompt_components"][0]["payload"]["content"][0]["content"] == (
        "Explain this code:\n\nx = [y for y in z]"
    )
    token = sent.headers["Authorization"].removeprefix("Bearer ")
    scopes = jwt.decode(token, options={"verify_signature": False})["scopes"]
    assert scopes == ["duo_chat", "explain_code"]
    # Its own model, registered and mapped through the admin API, takes over at once.
    model = api.create_model(
        model="mistral", endpoint="http://10.7.7.7:8000/v1", identifier="custom_openai/mistral"
    )
    api.put(
        f"{ADMIN}/feature_settings/duo_chat_explain_code",
        {"provider": "self_hosted", "self_hosted_model_id": model["id"]},
    )
    api.post(CHAT, {"content": "/explain x = 1"})
    payload = chat_gateway.requests[-1].body["prompt_components"][0]["payload"]
    assert (payload["model"], payload["model_endpoint"]) == ("mistral", "http://10.7.7.7:8000/v1")
    # General chat still uses duo_chat's model.
    api.post(CHAT, {"content": "hello"})
    assert chat_gateway.requests[-1].body["prompt_components"][0]["payload"]["model"] == "general"
    # Disabled duo_chat stops the sub-features that follow it, not those with their own model.
    api.put(f"{ADMIN}/feature_settings/duo_chat", {"provider": "disabled"})
    refused = api.post(CHAT, {"content": "/tests def f(): pass"})
    assert refused.status_code == 403
    assert refused.json()["message"] == (
        "403 Forbidden - Write tests is disabled on this instance (it uses the duo_chat "
        "setting). Ask an administrator to assign a self-hosted model to the "
        "duo_chat_write_tests feature."
    )
    assert api.post(CHAT, {"content": "/explain y"}).status_code == 200


def test_chat_errors(api: Api, instance: LiveInstance, fresh_gateway: FakeGateway) -> None:
    assert Api(instance, "").post(CHAT, {"content": "hi"}).status_code == 401
    missing = api.post(CHAT, {})
    assert missing.status_code == 400
    assert missing.json()["message"].startswith("400 Bad request - content is invalid")

    async def broken(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
        return web.json_response({"detail": "Inference failed"}, status=503)

    fresh_gateway.handler = broken
    failed = api.post(CHAT, {"content": "hi"})
    assert failed.status_code == 503
    assert failed.json() == {"detail": "Inference failed"}


def test_full_readiness_includes_the_gateway(instance: LiveInstance, api: Api) -> None:
    ready = httpx.get(f"{instance.url}/-/readiness", params={"all": "1"}, timeout=10)
    assert ready.status_code == 200
    assert ready.json()["gateway_check"] == [{"status": "ok"}]
    assert "gateway_check" not in httpx.get(f"{instance.url}/-/readiness", timeout=10).json()
    api.put(f"{ADMIN}/settings", {"ai_gateway_url": "http://127.0.0.1:9"})
    try:
        down = httpx.get(f"{instance.url}/-/readiness", params={"all": "1"}, timeout=10)
    finally:
        api.put(f"{ADMIN}/settings", {"ai_gateway_url": None})
    assert down.status_code == 503
    body = down.json()
    assert body["master_check"] == [{"status": "failed", "message": "failed checks: gateway_check"}]
    assert body["gateway_check"][0]["message"].startswith(
        "AI gateway http://127.0.0.1:9 unreachable"
    )
