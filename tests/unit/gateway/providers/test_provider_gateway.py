"""Through the gateway app: a code completion and a chat for each provider, whole and streamed.

The model travels as GitLab's instance sends it (``model_provider: litellm`` with a
LiteLLM-style identifier); the provider is picked from the identifier's prefix, and the call
goes through the same egress check, metrics and error mapping as the OpenAI-compatible one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from gateway_fakes import Harness, HarnessFactory
from provider_fakes import FakeProvider, json_reply
from provider_setup import (
    ANTHROPIC_KEY,
    AZURE_KEY,
    BEDROCK_KEY,
    SA_KEY,
    error_reply,
    success,
)
from wire_fixtures import (
    ACCESS_TOKEN,
    ANTHROPIC_MODEL,
    AZURE_DEPLOYMENT,
    BEDROCK_MODEL,
    GEMINI_MODEL,
    TOKEN_ANSWER,
    VERTEX_CLAUDE_MODEL,
    VERTEX_LOCATION,
    VERTEX_PROJECT,
)

from enclave.common import wire

pytestmark = pytest.mark.anyio

# kind -> (identifier, family, key, path the provider must see)
MODELS: dict[str, tuple[str, str, str, str]] = {
    "anthropic": (f"anthropic/{ANTHROPIC_MODEL}", "claude_3", ANTHROPIC_KEY, "/v1/messages"),
    "azure": (
        f"azure/{AZURE_DEPLOYMENT}",
        "gpt",
        AZURE_KEY,
        f"/openai/deployments/{AZURE_DEPLOYMENT}/chat/completions",
    ),
    "bedrock": (
        f"bedrock/{BEDROCK_MODEL}",
        "claude_3",
        BEDROCK_KEY,
        "/model/anthropic.claude-3-5-sonnet-20240620-v1:0/converse",
    ),
    "vertex_gemini": (
        f"vertex_ai/{GEMINI_MODEL}",
        "general",
        SA_KEY,
        f"/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}/publishers/google/models/"
        f"{GEMINI_MODEL}:generateContent",
    ),
    "vertex_claude": (
        f"vertex_ai/{VERTEX_CLAUDE_MODEL}",
        "claude_3",
        SA_KEY,
        f"/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}/publishers/anthropic/models/"
        f"{VERTEX_CLAUDE_MODEL}:rawPredict",
    ),
}
STREAM_PATHS = {
    "anthropic": "/v1/messages",
    "azure": "/chat/completions",
    "bedrock": "/converse-stream",
    "vertex_gemini": ":streamGenerateContent",
    "vertex_claude": ":streamRawPredict",
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    server = FakeProvider()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def gw(make_harness: HarnessFactory, fake: FakeProvider) -> Harness:
    harness: Harness = await make_harness(
        bedrock_region="us-east-1",
        vertex_project=VERTEX_PROJECT,
        vertex_location=VERTEX_LOCATION,
        vertex_token_url=f"{fake.base}/token",
        model_retry_backoff_s=0,
    )
    return harness


def model_fields(kind: str, fake: FakeProvider) -> dict[str, str]:
    identifier, family, key, _ = MODELS[kind]
    return {
        "model_name": family,
        "model_endpoint": fake.base,
        "model_api_key": key,
        "model_identifier": identifier,
    }


def prepare(kind: str, fake: FakeProvider, stream: bool) -> None:
    from provider_fakes import json_reply

    fake.script(success(kind, stream))
    fake.token_replies = [json_reply(TOKEN_ANSWER)]


def check_call(kind: str, fake: FakeProvider, stream: bool) -> None:
    [seen] = fake.seen
    if stream:
        assert STREAM_PATHS[kind] in seen.path
    else:
        assert seen.path == MODELS[kind][3]
    headers = {name.lower(): value for name, value in seen.headers.items()}
    if kind == "anthropic":
        assert headers["x-api-key"] == ANTHROPIC_KEY
    elif kind == "azure":
        assert headers["api-key"] == AZURE_KEY
    elif kind == "bedrock":
        assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    else:
        assert headers["authorization"] == f"Bearer {ACCESS_TOKEN}"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", list(MODELS))
async def test_code_completion(kind: str, stream: bool, gw: Harness, fake: FakeProvider) -> None:
    prepare(kind, fake, stream)
    response = await gw.complete(gw.body(stream=stream, **model_fields(kind, fake)))
    assert response.status_code == 200, response.text
    text = response.text if stream else response.json()["choices"][0]["text"]
    assert "return a + b" in text
    if not stream:
        usage = response.json()["model"]["tokens_consumption_metadata"]
        assert (usage["input_tokens"], usage["output_tokens"]) == (25, 12)
    check_call(kind, fake, stream)


def chat_body(kind: str, fake: FakeProvider, stream: bool) -> dict[str, Any]:
    identifier, family, key, _ = MODELS[kind]
    payload = {
        "content": "How do I add two numbers in Python?",
        "provider": "litellm",
        "model": family,
        "model_endpoint": fake.base,
        "model_api_key": key,
        "model_identifier": identifier,
    }
    component = {"type": "string", "metadata": {"source": "t", "version": "1"}, "payload": payload}
    return {"prompt_components": [component], "stream": stream}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", list(MODELS))
async def test_chat(kind: str, stream: bool, gw: Harness, fake: FakeProvider) -> None:
    prepare(kind, fake, stream)
    headers = gw.headers(gw.token(scopes=[wire.UP_DUO_CHAT]))
    response = await gw.client.post(
        "/v1/chat/agent", json=chat_body(kind, fake, stream), headers=headers
    )
    assert response.status_code == 200, response.text
    text = response.text if stream else response.json()["response"]
    assert "return a + b" in text
    check_call(kind, fake, stream)


@pytest.mark.parametrize("kind", list(MODELS))
async def test_upstream_failures_keep_their_meaning(
    kind: str, gw: Harness, fake: FakeProvider
) -> None:
    prepare(kind, fake, False)
    fake.script(error_reply(kind, 429, "slow down", **{"Retry-After": "20"}))
    response = await gw.complete(gw.body(**model_fields(kind, fake)))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "20"
    fake.script(error_reply(kind, 401, "bad key"))
    response = await gw.complete(gw.body(**model_fields(kind, fake)))
    assert response.status_code == 503
    assert "check the" in response.json()["detail"]
    assert MODELS[kind][2] not in response.text


async def test_cloud_endpoint_comes_from_the_region(gw: Harness) -> None:
    # No endpoint registered: the region's public endpoint, through the same egress check
    # (refused by the default allow-list where it resolves; unresolvable in a sandbox).
    fields = {
        "model_name": "claude_3",
        "model_endpoint": "",
        "model_api_key": BEDROCK_KEY,
        "model_identifier": f"bedrock/{BEDROCK_MODEL}",
    }
    response = await gw.complete(gw.body(**fields))
    assert response.status_code in (403, 503)
    assert "https://bedrock-runtime.us-east-1.amazonaws.com" in response.json()["detail"]


async def test_missing_cloud_settings_are_explained(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness()
    fields = {
        "model_name": "general",
        "model_endpoint": "",
        "model_api_key": SA_KEY,
        "model_identifier": f"vertex_ai/{GEMINI_MODEL}",
    }
    response = await harness.complete(harness.body(**fields))
    assert response.status_code == 503
    assert "ENCLAVE_GATEWAY__VERTEX_PROJECT" in response.json()["detail"]


async def test_model_health_goes_through_the_egress_check(gw: Harness, fake: FakeProvider) -> None:
    from enclave.gateway.models.base import EndpointNotAllowed, ModelRequest

    gateway = gw.app.state.gateway
    request = ModelRequest(
        endpoint=fake.base,
        model=ANTHROPIC_MODEL,
        api="chat",
        api_key=ANTHROPIC_KEY,
        provider="anthropic",
    )
    fake.script(json_reply({"data": [{"id": ANTHROPIC_MODEL}]}))
    await gateway.model_health(request)
    assert fake.seen[-1].path == "/v1/models"
    with pytest.raises(EndpointNotAllowed):
        await gateway.model_health(
            ModelRequest(
                endpoint="http://169.254.169.254", model="m", api="chat", provider="anthropic"
            )
        )


@pytest.mark.parametrize("kind", list(MODELS))
async def test_instance_test_connection_reaches_each_provider(
    kind: str, gw: Harness, fake: FakeProvider
) -> None:
    # What the instance's "Test connection" sends (provider "openai", the identifier decides).
    identifier, family, key, path = MODELS[kind]
    metadata = {
        "name": family,
        "endpoint": fake.base,
        "api_key": key,
        "provider": "openai",
        "identifier": identifier,
    }
    body = {"stream": False, "inputs": {}, "model_metadata": metadata}
    headers = gw.headers(gw.token(scopes=[wire.UP_COMPLETE_CODE]))
    prepare(kind, fake, False)
    response = await gw.client.post(
        "/v1/prompts/model_configuration%2Fcheck", json=body, headers=headers
    )
    assert response.status_code == 200, response.text
    assert fake.seen[0].path == path
    fake.script(error_reply(kind, 403, "denied"))
    response = await gw.client.post(
        "/v1/prompts/model_configuration%2Fcheck", json=body, headers=headers
    )
    assert response.status_code == 421
    assert response.json()["detail"].startswith("403 ")
