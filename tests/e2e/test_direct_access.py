"""Direct access: the instance hands out a gateway-signed user token, the IDE calls the gateway."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack, gateway_body

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


def test_the_ide_completes_code_straight_at_the_gateway(stack: Stack, expected_answer: str) -> None:
    access = direct_access(stack)
    assert access["base_url"] == stack.gateway_url
    assert access["model_details"] == {}
    assert access["headers"]["X-Gitlab-Authentication-Type"] == "oidc"
    response = call(access, "/v2/code/completions", gateway_body(stack))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == expected_answer


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
