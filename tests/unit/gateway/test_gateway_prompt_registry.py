"""POST /v1/prompts/{prompt_id}: model_configuration/check, as the instance's Test connection."""

from __future__ import annotations

from typing import Any

import pytest
from gateway_fakes import MODEL_API_KEY, Harness

from enclave.common import wire
from enclave.common.net import free_port
from enclave.instance.connection import model_status_of

pytestmark = pytest.mark.anyio

CHECK = "/v1/prompts/model_configuration%2Fcheck"


def check_body(gw: Harness, **metadata: Any) -> dict[str, Any]:
    model_metadata: dict[str, Any] = {
        "name": "mistral",
        "endpoint": gw.model.endpoint,
        "api_key": MODEL_API_KEY,
        "provider": "openai",
        "identifier": "custom_openai/mistral-local",
    }
    model_metadata.update(metadata)
    return {"stream": False, "inputs": {}, "model_metadata": model_metadata}


def check_token(gw: Harness, scopes: list[str] | None = None) -> dict[str, str]:
    return gw.headers(gw.token(scopes=scopes or [wire.UP_COMPLETE_CODE]))


async def test_check_calls_the_model_and_answers_its_text(gw: Harness) -> None:
    gw.model.text = "OK"
    response = await gw.client.post(CHECK, json=check_body(gw), headers=check_token(gw))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == "OK"
    assert "x-request-id" in response.headers
    [call] = gw.model.requests
    assert call.path == "/v1/chat/completions"
    assert call.headers["Authorization"] == f"Bearer {MODEL_API_KEY}"
    assert call.json["model"] == "mistral-local"
    assert call.json["max_tokens"] == 16
    assert [m["role"] for m in call.json["messages"]] == ["user"]


async def test_legacy_code_suggestions_scope_is_accepted(gw: Harness) -> None:
    headers = check_token(gw, [wire.UP_CODE_SUGGESTIONS])
    response = await gw.client.post(CHECK, json=check_body(gw), headers=headers)
    assert response.status_code == 200, response.text


async def test_model_refusing_the_key_is_421_with_its_status_first(gw: Harness) -> None:
    gw.model.status = 401
    response = await gw.client.post(CHECK, json=check_body(gw), headers=check_token(gw))
    assert response.status_code == 421
    message = response.json()["detail"]
    assert message.startswith("401 ")
    assert "API key" in message and MODEL_API_KEY not in message
    assert model_status_of(message) == 401


async def test_model_404_is_421_with_the_code(gw: Harness) -> None:
    gw.model.status = 404
    response = await gw.client.post(CHECK, json=check_body(gw), headers=check_token(gw))
    assert response.status_code == 421
    assert model_status_of(response.json()["detail"]) == 404
    assert response.json()["detail"].startswith("404 ")


async def test_model_server_error_is_421(gw: Harness) -> None:
    gw.model.status = 500
    response = await gw.client.post(CHECK, json=check_body(gw), headers=check_token(gw))
    assert response.status_code == 421
    assert model_status_of(response.json()["detail"]) == 500


async def test_unreachable_model_is_421_without_a_status(gw: Harness) -> None:
    body = check_body(gw, endpoint=f"http://127.0.0.1:{free_port()}/v1")
    response = await gw.client.post(CHECK, json=body, headers=check_token(gw))
    assert response.status_code == 421
    message = response.json()["detail"]
    assert "cannot connect" in message
    assert model_status_of(message) is None


async def test_unknown_prompt_is_404(gw: Harness) -> None:
    response = await gw.client.post(
        "/v1/prompts/chat%2Fnope", json=check_body(gw), headers=check_token(gw)
    )
    assert response.status_code == 404
    assert response.json() == {"detail": "Prompt 'chat/nope' not found"}
    assert gw.model.requests == []


async def test_missing_scope_is_403(gw: Harness) -> None:
    headers = check_token(gw, [wire.UP_DUO_CHAT])
    response = await gw.client.post(CHECK, json=check_body(gw), headers=headers)
    assert response.status_code == 403
    assert response.json() == {"detail": "Unauthorized to access model_configuration/check"}


async def test_unauthenticated_is_401(gw: Harness) -> None:
    response = await gw.client.post(
        CHECK, json=check_body(gw), headers=gw.headers(Authorization=None)
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"stream": False}, ["body", "inputs"]),
        (
            {"inputs": {}, "model_metadata": {"provider": "openai"}},
            ["body", "model_metadata", "name"],
        ),
        ({"inputs": {}}, ["body", "model_metadata"]),
        (
            {"inputs": {}, "model_metadata": {"provider": "openai", "name": "mistral"}},
            ["body", "model_metadata", "endpoint"],
        ),
    ],
)
async def test_invalid_body_is_422(gw: Harness, body: dict[str, Any], loc: list[str]) -> None:
    response = await gw.client.post(CHECK, json=body, headers=check_token(gw))
    assert response.status_code == 422, response.text
    assert loc in [item["loc"] for item in response.json()["detail"]]
    assert gw.model.requests == []


async def test_api_key_is_not_echoed_in_validation_errors(gw: Harness) -> None:
    body = check_body(gw)
    del body["model_metadata"]["name"]  # the error's input is the whole model_metadata
    response = await gw.client.post(CHECK, json=body, headers=check_token(gw))
    assert response.status_code == 422
    assert MODEL_API_KEY not in response.text
