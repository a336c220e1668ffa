"""Duo Chat over REST (feature routing, fallback, forwarding) and the full readiness probe."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web

from enclave.common.net import free_port
from enclave.instance.api import chat
from tests.unit.instance.admin_helpers import ADMIN, Api
from tests.unit.instance.conftest import (
    EMBEDDED_ENDPOINT,
    MODEL_API_KEY,
    FakeGateway,
    Handler,
    LiveInstance,
    check_disconnect_cancels_upstream,
    check_relayed_chunk_by_chunk,
)


@pytest.fixture(scope="module")
def instance(instance17: LiveInstance) -> LiveInstance:
    """This module pins GitLab 17's gateway API (chat on /v1/chat/*); GitLab 18's chat is
    tested in test_chat_gitlab18.py."""
    return instance17


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
    assert fresh_gateway.requests == []


def test_resource_and_current_file_go_with_the_question(
    api: Api, chat_gateway: FakeGateway
) -> None:
    response = api.post(
        CHAT,
        {
            "content": "What does this do?",
            "resource_type": "issue",
            "resource_id": 42,
            "current_file": {
                "file_name": "calc.py",
                "selected_text": "return a + b",
                "content_above_cursor": "def add(a, b):",
                "content_below_cursor": "",
            },
            "additional_context": [{"type": "snippet", "name": "s", "content": "x = 1"}],
        },
    )
    assert response.status_code == 200, response.text
    [sent] = chat_gateway.requests
    assert sent.body["prompt_components"][0]["payload"]["content"][0]["content"] == (
        "<current_file name='calc.py'>\n"
        "<content_above_cursor>\ndef add(a, b):\n</content_above_cursor>\n"
        "<selected_text>\nreturn a + b\n</selected_text>\n"
        "</current_file>\n\n"
        "<snippet name='s'>\nx = 1\n</snippet>\n\n"
        "What does this do?"
    )
    bad = api.post(CHAT, {"content": "x", "current_file": {"file_name": "a.py"}})
    assert bad.status_code == 400
    assert "current_file.selected_text" in bad.json()["message"]


def test_streamed_chat_is_relayed_chunk_by_chunk(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    check_relayed_chunk_by_chunk(
        instance, fresh_gateway, CHAT, {"content": "How do I flatten a list?"}
    )


def test_chat_client_disconnect_cancels_the_upstream(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    check_disconnect_cancels_upstream(instance, fresh_gateway, CHAT, {"content": "hi"})


def answering(status: int, body: Any, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
        if isinstance(body, bytes):
            return web.Response(body=body, status=status, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    return handler


async def break_mid_body(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = 1000
    await response.prepare(request)
    await response.write(b'{"response": "Use a')
    assert request.transport is not None
    request.transport.close()  # the gateway dies mid-answer
    return response


def assert_chat_error(response: httpx.Response, status: int, code: str, *phrases: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["x-gitlab-error-origin"] == "monolith"
    body = response.json()
    assert set(body) == {"message", "error_code"}
    assert body["error_code"] == code
    assert body["message"].endswith(f" Error code: {code}")
    for phrase in phrases:
        assert phrase in body["message"]
    assert MODEL_API_KEY not in response.text
    assert "Traceback" not in response.text


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("handler", "status", "code", "phrase"),
    [
        (answering(401, {"error": "Forbidden by auth provider"}), 502, "A1001", "401"),
        (answering(403, {"detail": "Unauthorized to access duo_chat"}), 502, "A1001", "403"),
        (answering(200, {"response": ""}), 502, "A1002", "without a usable response"),
        (answering(200, b"<html>oops</html>"), 502, "A1002", "without a usable response"),
        (answering(200, {"metadata": {}}), 502, "A1002", "without a usable response"),
        (answering(421, {"detail": "401 invalid api key"}), 502, "A1003", "401 invalid api key"),
        (
            answering(503, {"detail": f"Inference failed: key {MODEL_API_KEY}"}),
            502,
            "A1003",
            "Inference failed: key [redacted]",
        ),
        (answering(500, {"detail": "boom"}), 502, "A9999", "500: boom"),
    ],
)
def test_gateway_failures_carry_gitlab_chat_error_codes(
    api: Api,
    fresh_gateway: FakeGateway,
    handler: Handler,
    status: int,
    code: str,
    phrase: str,
    stream: bool,
) -> None:
    fresh_gateway.handler = handler
    response = api.post(CHAT, {"content": "hi", "stream": stream})
    if stream and code == "A1002":
        # A 200 stream is relayed as it comes; there is no answer to judge before it ends.
        assert response.status_code == 200
        return
    assert_chat_error(response, status, code, phrase)


def test_rate_limited_model_is_429_with_retry_after(api: Api, fresh_gateway: FakeGateway) -> None:
    fresh_gateway.handler = answering(429, {"detail": "slow down"}, {"Retry-After": "7"})
    response = api.post(CHAT, {"content": "hi"})
    assert_chat_error(response, 429, "A1003", "in 7 s")
    assert response.headers["retry-after"] == "7"


def test_an_answer_that_breaks_off_is_a1003(api: Api, fresh_gateway: FakeGateway) -> None:
    fresh_gateway.handler = break_mid_body
    assert_chat_error(api.post(CHAT, {"content": "hi"}), 502, "A1003", "broke off")


def test_unreachable_gateway_is_a1001(live_instance_factory: Callable[..., LiveInstance]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    live = live_instance_factory(gateway_url=dead, embedded_model_endpoint=EMBEDDED_ENDPOINT)
    response = Api(live).post(CHAT, {"content": "hi"})
    assert_chat_error(
        response, 502, "A1001", f"Could not connect to the AI gateway at {dead}. Check"
    )


def test_an_unexpected_failure_is_a9999(
    api: Api, chat_gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug with a secret inside: " + MODEL_API_KEY)

    monkeypatch.setattr(chat, "_answer", broken)
    response = api.post(CHAT, {"content": "hi"})
    assert_chat_error(response, 500, "A9999", "failed unexpectedly")


async def too_slow(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    await asyncio.sleep(3)
    return web.json_response({"response": "late"})


def test_gateway_timeout_is_a1000(
    live_instance_factory: Callable[..., LiveInstance], fresh_gateway: FakeGateway
) -> None:
    fresh_gateway.handler = too_slow
    live = live_instance_factory(
        gateway_url=fresh_gateway.url,
        gateway_timeout_s=1,
        embedded_model_endpoint=EMBEDDED_ENDPOINT,
        ai_gateway_api="gitlab17",
    )
    response = Api(live).post(CHAT, {"content": "hi"})
    assert_chat_error(response, 504, "A1000", "did not answer in time")


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
