"""Direct access: the instance hands out a gateway-signed user token, the IDE calls the gateway."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack, gateway_body, ide_body

pytestmark = pytest.mark.e2e


def direct_access(stack: Stack) -> dict[str, Any]:
    response = httpx.post(
        f"{stack.instance_url}/api/v4/code_suggestions/direct_access",
        headers={"PRIVATE-TOKEN": stack.admin_token},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def call(access: dict[str, Any], path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{access['base_url']}{path}",
        json=body,
        headers={**access["headers"], "Authorization": f"Bearer {access['token']}"},
        timeout=60,
    )


def completed(access: dict[str, Any], path: str, timeout_s: float = 30) -> httpx.Response:
    """The answer once the gateway has read the routes (in the background, at start-up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = call(access, path, ide_body())
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(0.3)


@pytest.mark.parametrize("path", ["/v2/code/completions", "/v2/completions"])
def test_the_ide_completes_code_straight_at_the_gateway(
    stack: Stack, expected_answer: str, path: str
) -> None:
    access = direct_access(stack)
    assert access["base_url"] == stack.gateway_url
    assert access["model_details"] == {}
    assert access["headers"]["X-Gitlab-Authentication-Type"] == "oidc"
    # No model in the body: the gateway serves the model the administrator assigned.
    response = completed(access, path)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == expected_answer


def test_the_user_token_cannot_choose_the_endpoint_or_key(stack: Stack) -> None:
    access = direct_access(stack)
    assert completed(access, "/v2/code/completions").status_code == 200  # routes are loaded
    attacks = [
        {"model_endpoint": f"{stack.instance_url}/api/v4/internal?x=", "model_api_key": "mine"},
        {"model_endpoint": f"{stack.model_url}/../other"},
        {"model_api_key": "a-key-of-my-choice"},
        {"model_identifier": "custom_openai/another-model"},
    ]
    for fields in attacks:
        response = call(access, "/v2/code/completions", {**ide_body(), **fields})
        assert response.status_code == 403, (fields, response.text)
        assert "chosen by the administrator" in response.json()["detail"]


def test_the_user_token_does_not_generate_code(stack: Stack) -> None:
    access = direct_access(stack)
    body = {**gateway_body(stack), "prompt": "Write a function", "prompt_id": "x"}
    assert call(access, "/v2/code/generations", body).status_code == 403


def test_the_user_token_cannot_mint_another(stack: Stack) -> None:
    access = direct_access(stack)
    response = call(access, "/v1/code/user_access_token", {})
    assert response.status_code == 403


def test_without_a_personal_access_token_it_is_401(stack: Stack) -> None:
    response = httpx.post(f"{stack.instance_url}/api/v4/code_suggestions/direct_access", timeout=30)
    assert response.status_code == 401


def test_the_ide_may_echo_the_routed_model(stack: Stack, expected_answer: str) -> None:
    """The Language Server spreads the answer's ``model_details`` (``model_provider``,
    ``model_name``) into its body: naming exactly the routed model is no attempt to choose."""
    access = direct_access(stack)
    assert completed(access, "/v2/completions").status_code == 200  # routes are loaded
    setting = httpx.get(
        f"{stack.instance_url}/api/v4/admin/ai/feature_settings/code_completions",
        headers={"PRIVATE-TOKEN": stack.admin_token},
        timeout=30,
    ).json()
    echoed = {"model_provider": "litellm", "model_name": setting["self_hosted_model"]["model"]}
    response = call(access, "/v2/completions", {**ide_body(), "prompt_version": 1, **echoed})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == expected_answer
    other = call(access, "/v2/completions", {**ide_body(), "model_provider": "anthropic"})
    assert other.status_code == 403
