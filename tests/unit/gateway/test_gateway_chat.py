"""POST /v1/chat/{invokable}: GitLab's legacy chat API, as the instance's Duo Chat calls it."""

from __future__ import annotations

from typing import Any

import pytest
from gateway_fakes import MODEL_API_KEY, Harness

from enclave.common import wire
from enclave.gateway.prompts.registry import get_registry
from enclave.instance.api.chat import chat_body
from enclave.instance.features import Feature, ResolvedModel


def chat_instructions(invokable: str) -> str:
    text = get_registry().resolve(f"chat/{invokable}", "base").instructions()
    assert text
    return text


pytestmark = pytest.mark.anyio


def component(gw: Harness, content: Any = "What is 1 + 1?", **payload: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "content": content,
        "provider": "litellm",
        "model": "mistral",
        "model_endpoint": gw.model.endpoint,
        "model_api_key": MODEL_API_KEY,
        "model_identifier": "custom_openai/mistral-local",
    }
    data.update(payload)
    return {
        "type": "string",
        "metadata": {"source": "test", "version": "1.0.0"},
        "payload": data,
    }


def chat_request(gw: Harness, stream: bool = False, **payload: Any) -> dict[str, Any]:
    return {"prompt_components": [component(gw, **payload)], "stream": stream}


def chat_headers(gw: Harness, *scopes: str) -> dict[str, str]:
    return gw.headers(gw.token(scopes=list(scopes or (wire.UP_DUO_CHAT,))))


async def test_agent_answers_with_response_and_metadata(gw: Harness) -> None:
    gw.model.text = "2"
    response = await gw.client.post(
        "/v1/chat/agent", json=chat_request(gw), headers=chat_headers(gw)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["metadata"].pop("timestamp"), int)
    assert body == {"response": "2", "metadata": {"provider": "litellm", "model": "mistral"}}
    [call] = gw.model.requests
    assert call.path == "/v1/chat/completions"
    assert call.headers["Authorization"] == f"Bearer {MODEL_API_KEY}"
    assert call.json["model"] == "mistral-local"
    assert call.json["stream"] is False
    # Mistral's chat template wants strict user/assistant turns: the instructions lead the
    # first user message instead of being a system message.
    [message] = call.json["messages"]
    assert message["role"] == "user"
    assert message["content"] == f"{chat_instructions('agent')}\n\nWhat is 1 + 1?"


async def test_what_the_instance_sends_is_served(gw: Harness) -> None:
    model = ResolvedModel(
        feature=Feature.DUO_CHAT_EXPLAIN_CODE,
        model_id=1,
        name="m",
        family="mistral",
        provider="api",
        endpoint=gw.model.endpoint,
        identifier="custom_openai/mistral-local",
        api_key=MODEL_API_KEY,
    )
    body = chat_body("Explain this code:\n\nx = 1", [], model)
    headers = chat_headers(gw, "explain_code", wire.UP_DUO_CHAT)
    response = await gw.client.post("/v1/chat/explain_code", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["response"] == gw.model.text
    [call] = gw.model.requests
    [user] = call.json["messages"]
    instructions = chat_instructions("explain_code")
    assert "Explain" in instructions
    assert user == {"role": "user", "content": f"{instructions}\n\nExplain this code:\n\nx = 1"}


@pytest.mark.parametrize("family", ["gpt", "llama3", "claude_3", "general", "qwen"])
async def test_other_families_get_the_instructions_as_a_system_message(
    gw: Harness, family: str
) -> None:
    body = chat_request(gw)
    body["prompt_components"][0]["payload"]["model"] = family
    response = await gw.client.post("/v1/chat/agent", json=body, headers=chat_headers(gw))
    assert response.status_code == 200, response.text
    [call] = gw.model.requests
    assert call.json["messages"] == [
        {"role": "system", "content": chat_instructions("agent")},
        {"role": "user", "content": "What is 1 + 1?"},
    ]


async def test_messages_list_and_params_are_passed(gw: Harness) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
    ]
    body = chat_request(gw, content=messages, params={"temperature": 0.5, "max_tokens": 64})
    response = await gw.client.post("/v1/chat/agent", json=body, headers=chat_headers(gw))
    assert response.status_code == 200, response.text
    [call] = gw.model.requests
    assert call.json["messages"] == messages  # the caller's own system prompt is kept
    assert call.json["temperature"] == 0.5
    assert call.json["max_tokens"] == 64


@pytest.mark.parametrize(
    "invokable",
    ["explain_code", "write_tests", "refactor_code", "fix_code", "troubleshoot_job"],
)
async def test_chat_sub_features_accept_their_scope_or_duo_chat(
    gw: Harness, invokable: str
) -> None:
    for scope in (invokable, wire.UP_DUO_CHAT):
        response = await gw.client.post(
            f"/v1/chat/{invokable}", json=chat_request(gw), headers=chat_headers(gw, scope)
        )
        assert response.status_code == 200, (scope, response.text)


async def test_missing_scope_is_403(gw: Harness) -> None:
    headers = chat_headers(gw, wire.UP_COMPLETE_CODE)
    for invokable in ("agent", "explain_code", "explain_vulnerability"):
        response = await gw.client.post(
            f"/v1/chat/{invokable}", json=chat_request(gw), headers=headers
        )
        assert response.status_code == 403
        assert response.json() == {"detail": f"Unauthorized to access {invokable}"}
    # duo_chat does not grant what is not a chat feature
    response = await gw.client.post(
        "/v1/chat/explain_vulnerability", json=chat_request(gw), headers=chat_headers(gw)
    )
    assert response.status_code == 403
    assert gw.model.requests == []


async def test_unknown_invokable_is_404(gw: Harness) -> None:
    response = await gw.client.post(
        "/v1/chat/typing", json=chat_request(gw), headers=chat_headers(gw)
    )
    assert response.status_code == 404
    assert response.json() == {"detail": "Chat invokable 'typing' not found"}


async def test_model_refusing_the_key_is_503(gw: Harness) -> None:
    gw.model.status = 401
    response = await gw.client.post(
        "/v1/chat/agent", json=chat_request(gw), headers=chat_headers(gw)
    )
    assert response.status_code == 503
    message = response.json()["detail"]
    assert message.startswith("Inference failed: ") and "API key" in message
    assert MODEL_API_KEY not in message


async def test_model_rate_limit_is_passed_through(gw: Harness) -> None:
    gw.model.status, gw.model.retry_after = 429, "7"
    response = await gw.client.post(
        "/v1/chat/agent", json=chat_request(gw), headers=chat_headers(gw)
    )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"prompt_components": []}, ["body", "prompt_components"]),
        ({"stream": "maybe"}, ["body", "stream"]),
        (
            {"prompt_components": [{"type": "string", "metadata": {}, "payload": {}}]},
            ["body", "prompt_components", 0, "metadata", "source"],
        ),
    ],
)
async def test_invalid_body_is_422(gw: Harness, change: dict[str, Any], loc: list[Any]) -> None:
    body = {**chat_request(gw), **change}
    response = await gw.client.post("/v1/chat/agent", json=body, headers=chat_headers(gw))
    assert response.status_code == 422, response.text
    assert loc in [item["loc"] for item in response.json()["detail"]]
    assert MODEL_API_KEY not in response.text


async def test_two_components_are_refused(gw: Harness) -> None:
    body = {"prompt_components": [component(gw), component(gw)], "stream": False}
    response = await gw.client.post("/v1/chat/agent", json=body, headers=chat_headers(gw))
    assert response.status_code == 422


async def test_missing_endpoint_and_unsupported_provider_are_422(gw: Harness) -> None:
    body = chat_request(gw, model_endpoint=None)
    response = await gw.client.post("/v1/chat/agent", json=body, headers=chat_headers(gw))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == [
        "body",
        "prompt_components",
        0,
        "payload",
        "model_endpoint",
    ]
    body = chat_request(gw, provider="anthropic")
    response = await gw.client.post("/v1/chat/agent", json=body, headers=chat_headers(gw))
    assert response.status_code == 422
    assert "anthropic" in response.json()["detail"]
    assert gw.model.requests == []


async def test_streamed_answer_is_relayed_chunk_by_chunk(gw: Harness) -> None:
    gw.model.chunks = ["The", " answer", " is", " 2."]
    async with gw.client.stream(
        "POST", "/v1/chat/agent", json=chat_request(gw, stream=True), headers=chat_headers(gw)
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        text = "".join([chunk async for chunk in response.aiter_text()])
    assert text == "The answer is 2."
    [call] = gw.model.requests
    assert call.json["stream"] is True


async def test_streamed_model_error_before_the_first_byte_is_503(gw: Harness) -> None:
    gw.model.status = 500
    response = await gw.client.post(
        "/v1/chat/agent", json=chat_request(gw, stream=True), headers=chat_headers(gw)
    )
    assert response.status_code == 503
    assert response.json()["detail"].startswith("Inference failed: ")
