"""Test connection: the instance asks the (fake) gateway to call the model, GitLab's contract."""

from __future__ import annotations

import jwt
import pytest
from aiohttp import web

from tests.unit.instance.admin_helpers import ADMIN, Api, fake_model_server
from tests.unit.instance.conftest import FakeGateway, LiveInstance

MODELS = f"{ADMIN}/self_hosted_models"
KEY = "enclkey-connection-test-key-000111"


@pytest.fixture()
def api(instance: LiveInstance) -> Api:
    return Api(instance)


def answer(status: int, body: object) -> object:
    async def handler(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
        return web.json_response(body, status=status)

    return handler


def test_success_and_gitlabs_request(
    api: Api, instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    fresh_gateway.handler = answer(200, "ok")  # type: ignore[assignment]
    model = api.create_model(
        name="checked", model="mistral", endpoint="http://10.2.2.2:8000/v1", api_token=KEY
    )
    response = api.post(f"{MODELS}/{model['id']}/test")
    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "result": "ok",
        "message": "Successfully connected to the self-hosted model 'checked' at "
        f"http://10.2.2.2:8000/v1 through the AI gateway {fresh_gateway.url}",
        "gateway_status": 200,
        "model_status": None,
        "suggested_identifiers": [],
    }
    [sent] = fresh_gateway.requests
    assert sent.raw_path == "/v1/prompts/model_configuration%2Fcheck"
    assert sent.body == {
        "stream": False,
        "inputs": {},
        "model_metadata": {
            "name": "mistral",
            "endpoint": "http://10.2.2.2:8000/v1",
            "api_key": KEY,
            "provider": "openai",
            "identifier": "custom_openai/Mistral-7B-Instruct-v0.3",
        },
    }
    token = sent.headers["Authorization"].removeprefix("Bearer ")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["scopes"] == ["complete_code"]
    assert sent.headers["X-Gitlab-Instance-Id"] == str(instance.ctx.instance_id)
    assert KEY not in response.text


def test_the_model_refuses_the_key(api: Api, fresh_gateway: FakeGateway) -> None:
    fresh_gateway.handler = answer(  # type: ignore[assignment]
        421, {"detail": f"401: Unauthorized: invalid api key {KEY}"}
    )
    model = api.create_model(endpoint="http://10.2.2.3:8000/v1", api_token=KEY)
    body = api.post(f"{MODELS}/{model['id']}/test").json()
    assert body["success"] is False
    assert (body["result"], body["gateway_status"], body["model_status"]) == (
        "model_error",
        421,
        401,
    )
    assert body["message"] == (
        "the model server at http://10.2.2.3:8000/v1 refused the API key (401 from the model: "
        "401: Unauthorized: invalid api key [REDACTED]). Set the model's api_token to a key the "
        "server accepts"
    )


def test_wrong_identifier_gets_suggestions_from_the_model_server(
    api: Api, fresh_gateway: FakeGateway
) -> None:
    fresh_gateway.handler = answer(  # type: ignore[assignment]
        421, {"detail": "404: The model `mistral` does not exist."}
    )
    with fake_model_server(["Qwen2.5-Coder-7B", "mistral-small"], api_key=KEY) as endpoint:
        model = api.create_model(
            endpoint=endpoint, identifier="custom_openai/mistral", api_token=KEY
        )
        body = api.post(f"{MODELS}/{model['id']}/test").json()
    assert (body["result"], body["model_status"]) == ("model_error", 404)
    assert body["suggested_identifiers"] == [
        "custom_openai/Qwen2.5-Coder-7B",
        "custom_openai/mistral-small",
    ]
    assert body["message"] == (
        f"the model server at {endpoint} does not serve a model named by the identifier "
        "'custom_openai/mistral' (404 from the model: 404: The model `mistral` does not exist.). "
        "It serves: custom_openai/Qwen2.5-Coder-7B, custom_openai/mistral-small; use one of "
        "them as identifier"
    )


def test_wrong_identifier_without_a_model_list(api: Api, fresh_gateway: FakeGateway) -> None:
    fresh_gateway.handler = answer(421, {"detail": "404: not found"})  # type: ignore[assignment]
    model = api.create_model(endpoint="http://127.0.0.1:9/v1")  # nothing listens there
    body = api.post(f"{MODELS}/{model['id']}/test").json()
    assert body["suggested_identifiers"] == []
    assert body["message"].endswith(
        "Check the identifier (custom_openai/<served-model-name>) and endpoint"
    )


def test_the_model_is_unreachable(api: Api, fresh_gateway: FakeGateway) -> None:
    fresh_gateway.handler = answer(  # type: ignore[assignment]
        421, {"detail": "Connection error: all connection attempts failed"}
    )
    model = api.create_model(endpoint="http://10.2.2.4:8000/v1")
    body = api.post(f"{MODELS}/{model['id']}/test").json()
    assert body["result"] == "model_unreachable"
    assert body["message"].startswith(
        "the AI gateway could not connect to the model endpoint http://10.2.2.4:8000/v1: "
        "Connection error: all connection attempts failed. Check the endpoint URL"
    )


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {"error": "Header mismatch"}, "refused the instance's token (401: Header mismatch)"),
        (404, {"detail": "Not Found"}, "has no /v1/prompts/model_configuration%2Fcheck endpoint"),
        (503, {"detail": "Inference failed"}, "AI Gateway returned code 503: Inference failed"),
    ],
)
def test_gateway_errors(
    api: Api, fresh_gateway: FakeGateway, status: int, body: object, expected: str
) -> None:
    fresh_gateway.handler = answer(status, body)  # type: ignore[assignment]
    model = api.create_model()
    result = api.post(f"{MODELS}/{model['id']}/test").json()
    assert (result["success"], result["result"], result["gateway_status"]) == (
        False,
        "gateway_error",
        status,
    )
    assert expected in result["message"]


def test_the_gateway_is_unreachable(api: Api) -> None:
    model = api.create_model()
    api.put(f"{ADMIN}/settings", {"ai_gateway_url": "http://127.0.0.1:9"})
    try:
        body = api.post(f"{MODELS}/{model['id']}/test").json()
    finally:
        api.put(f"{ADMIN}/settings", {"ai_gateway_url": None})
    assert body["result"] == "gateway_unreachable"
    assert body["message"].startswith("could not connect to the AI gateway at http://127.0.0.1:9")


def test_unsaved_definition_can_be_tested_and_is_validated(
    api: Api, fresh_gateway: FakeGateway
) -> None:
    fresh_gateway.handler = answer(200, "ok")  # type: ignore[assignment]
    response = api.post(
        f"{MODELS}/test",
        {"model": "llama3", "endpoint": "http://10.3.3.3/v1", "identifier": "custom_openai/l3"},
    )
    assert response.status_code == 200
    assert response.json()["success"] is True
    bad = api.post(f"{MODELS}/test", {"model": "llama3", "endpoint": "file:///etc/passwd"})
    assert bad.status_code == 400
    assert "endpoint must be an http:// or https:// URL (got scheme 'file'" in bad.json()["message"]


def test_unknown_model(api: Api) -> None:
    response = api.post(f"{MODELS}/987654/test")
    assert response.status_code == 404
    assert response.json()["message"] == "404 Not Found - self-hosted model 987654 does not exist"
