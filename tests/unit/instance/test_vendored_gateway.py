"""The vendored AI gateway on the instance side: the AI setting, which features may be set to
vendored, and where each feature's requests go (two fake gateways on loopback record them).

A vendored feature goes to the vendored gateway with no model in the body and a token minted
for its audience; a self-hosted feature goes to the self-hosted gateway with its model and the
usual audience; neither ever reaches the other gateway, whatever the client sends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from aiohttp import web
from sqlalchemy import select

from enclave.common import wire
from enclave.common.features import Feature
from enclave.instance.db import SelfHostedModel
from enclave.instance.duo_availability import served
from tests.unit.instance.conftest import (
    EMBEDDED_ENDPOINT,
    FakeGateway,
    LiveInstance,
    write_model_api_key,
)

ADMIN = "/api/v4/admin/ai"
COMPLETIONS = "/api/v4/code_suggestions/completions"
VENDORED_AUDIENCE = "enclave-shared-ai-gateway"
COMPLETION: dict[str, Any] = {
    "current_file": {
        "file_name": "calc.py",
        "content_above_cursor": "def add(a, b):\n    ",
        "content_below_cursor": "\n",
    },
    "intent": "completion",
    "stream": False,
}
GENERATION: dict[str, Any] = {**COMPLETION, "intent": "generation"}
MODEL_FIELDS = ("model_provider", "model_name", "model_endpoint", "model_api_key")


@pytest.fixture(scope="module")
def vendored_gateway() -> Iterator[FakeGateway]:
    fake = FakeGateway()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture()
def live(
    live_instance_factory: Callable[..., LiveInstance],
    fresh_gateway: FakeGateway,
    vendored_gateway: FakeGateway,
    tmp_path: Path,
) -> LiveInstance:
    vendored_gateway.reset()
    data_dir = tmp_path / "vendored-data"
    write_model_api_key(data_dir)
    return live_instance_factory(
        data_dir, gateway_url=fresh_gateway.url, embedded_model_endpoint=EMBEDDED_ENDPOINT
    )


def admin(live: LiveInstance, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(
        method,
        live.url + ADMIN + path,
        json=body,
        headers={"PRIVATE-TOKEN": live.admin_token},
        timeout=20,
    )


def complete(live: LiveInstance, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        live.url + COMPLETIONS,
        json=body,
        headers={"PRIVATE-TOKEN": live.admin_token, **headers},
        timeout=20,
    )


def audience(headers: dict[str, str]) -> Any:
    token = headers["Authorization"].removeprefix("Bearer ")
    return jwt.decode(token, options={"verify_signature": False})["aud"]


def test_vendored_is_refused_until_a_vendored_gateway_is_set(live: LiveInstance) -> None:
    refused = admin(live, "PUT", "/feature_settings/duo_chat", {"provider": "vendored"})
    assert refused.status_code == 400, refused.text
    assert "vendored_ai_gateway_url" in refused.text
    bad = admin(live, "PATCH", "/settings", {"vendored_ai_gateway_url": "ftp://shared"})
    assert bad.status_code == 400
    assert "vendored_ai_gateway_url" in bad.text


def test_each_feature_goes_to_its_own_gateway(
    live: LiveInstance, fresh_gateway: FakeGateway, vendored_gateway: FakeGateway
) -> None:
    settings = admin(live, "PATCH", "/settings", {"vendored_ai_gateway_url": vendored_gateway.url})
    assert settings.status_code == 200, settings.text
    assert settings.json()["vendored_ai_gateway_url"] == vendored_gateway.url
    assert settings.json()["vendored_ai_gateway_url_source"] == "database"
    setting = admin(live, "PUT", "/feature_settings/code_completions", {"provider": "vendored"})
    assert setting.status_code == 200, setting.text
    assert (setting.json()["gateway"], setting.json()["gateway_url"]) == (
        "vendored",
        vendored_gateway.url,
    )
    with live.ctx.sessions() as session:  # editors are told it is available (GraphQL)
        assert served(session, Feature.CODE_COMPLETIONS, vendored_gateway=True)
        assert not served(session, Feature.CODE_COMPLETIONS, vendored_gateway=False)
    listed = {v["feature"]: v for v in admin(live, "GET", "/feature_settings?per_page=100").json()}
    assert listed["code_generations"]["gateway"] == "self_hosted"
    assert listed["code_generations"]["gateway_url"] == fresh_gateway.url

    # Completions (vendored): to the vendored gateway, no model, its own audience. A client
    # that names a gateway or model of its own changes nothing.
    answer = complete(live, {**COMPLETION, "model_endpoint": "http://10.9.9.9/v1"})
    assert answer.status_code == 200, answer.text  # the unknown field is ignored
    answer = complete(live, COMPLETION, **{"X-Gitlab-Ai-Gateway-Url": fresh_gateway.url})
    assert answer.status_code == 200, answer.text
    assert [r.path for r in fresh_gateway.requests] == []
    assert len(vendored_gateway.requests) == 2
    assert "10.9.9.9" not in str(vendored_gateway.requests[0].body)
    sent = vendored_gateway.requests[-1]
    assert sent.path == "/v2/code/completions"
    assert not any(name in sent.body for name in MODEL_FIELDS)
    assert audience(sent.headers) == VENDORED_AUDIENCE

    # Generations (self-hosted): to the self-hosted gateway with the model, the usual audience.
    seen = len(vendored_gateway.requests)
    answer = complete(live, GENERATION)
    assert answer.status_code == 200, answer.text
    assert len(vendored_gateway.requests) == seen
    sent = fresh_gateway.requests[-1]
    assert sent.path == "/v2/code/generations"
    assert sent.body["model_endpoint"] == EMBEDDED_ENDPOINT
    assert audience(sent.headers) == wire.AUDIENCE


def test_a_vendored_feature_never_falls_back_to_the_self_hosted_gateway(
    live: LiveInstance, fresh_gateway: FakeGateway, vendored_gateway: FakeGateway
) -> None:
    assert admin(live, "PATCH", "/settings", {"vendored_ai_gateway_url": vendored_gateway.url})
    assert admin(live, "PUT", "/feature_settings/code_completions", {"provider": "vendored"})
    # The vendored gateway goes away (the setting is cleared): the feature is refused, and
    # nothing goes to the self-hosted gateway instead.
    cleared = admin(live, "PATCH", "/settings", {"vendored_ai_gateway_url": None})
    assert cleared.json()["vendored_ai_gateway_url"] is None
    answer = complete(live, COMPLETION)
    assert answer.status_code == 403
    assert "no vendored AI gateway is configured" in answer.json()["message"]
    assert fresh_gateway.requests == [] and vendored_gateway.requests == []


async def agent_answer(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    event = {"type": "final_answer_delta", "data": {"text": "Use git.", "finish_reason": "stop"}}
    return web.Response(body=orjson.dumps(event) + b"\n", content_type="application/x-ndjson")


async def prompt_answer(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response("It adds two numbers.")


def test_chat_and_ai_features_follow_their_setting(
    live: LiveInstance, fresh_gateway: FakeGateway, vendored_gateway: FakeGateway
) -> None:
    """Chat vendored, a chat sub-feature (explain code) kept on its own model: each to its
    gateway, the vendored one without model_metadata; direct access stays self-hosted only."""
    assert admin(live, "PATCH", "/settings", {"vendored_ai_gateway_url": vendored_gateway.url})
    batch = {"features": ["duo_chat", "generate_commit_message"], "provider": "vendored"}
    assert admin(live, "PUT", "/feature_settings", batch).status_code == 200
    with live.ctx.sessions() as session:
        model_id = session.scalars(select(SelfHostedModel.id)).one()
    live.set_feature("duo_chat_explain_code", "self_hosted", model_id)
    vendored_gateway.handler = agent_answer
    fresh_gateway.handler = prompt_answer
    token = {"PRIVATE-TOKEN": live.admin_token}

    answer = httpx.post(
        live.url + "/api/v4/chat/completions", json={"content": "How?"}, headers=token, timeout=20
    )
    assert answer.status_code == 200, answer.text
    assert "Use git." in answer.text
    [sent] = vendored_gateway.requests
    assert sent.path == "/v2/chat/agent" and "model_metadata" not in sent.body
    assert audience(sent.headers) == VENDORED_AUDIENCE

    explain = httpx.post(
        live.url + "/api/v4/chat/completions",
        json={"content": "/explain def add(a, b): return a + b"},
        headers=token,
        timeout=20,
    )
    assert explain.status_code == 200, explain.text
    [own] = fresh_gateway.requests
    assert own.path.startswith("/v1/prompts/chat") and "model_metadata" in own.body
    assert len(vendored_gateway.requests) == 1

    vendored_gateway.handler = prompt_answer
    commit = httpx.post(
        live.url + "/api/v4/ai/generate_commit_message",
        json={"diff": "+print(1)\n"},
        headers=token,
        timeout=20,
    )
    assert commit.status_code == 200, commit.text
    sent = vendored_gateway.requests[-1]
    assert sent.path == "/v1/prompts/generate_commit_message"
    assert "model_metadata" not in sent.body and audience(sent.headers) == VENDORED_AUDIENCE
    assert len(fresh_gateway.requests) == 1

    # Direct access reads the self-hosted gateway's routes: not for vendored completions.
    assert admin(live, "PUT", "/feature_settings/code_completions", {"provider": "vendored"})
    direct = httpx.post(
        live.url + "/api/v4/code_suggestions/direct_access", headers=token, timeout=20
    )
    assert direct.status_code == 403
    assert "code completions are vendored" in direct.json()["message"]
