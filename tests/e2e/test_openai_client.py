"""The official ``openai`` client against a real stack: instance → gateway /v1 → llama.cpp.

A user gets a token from the instance (``POST /api/v4/ai/openai/direct_access`` with a PAT) and
points the client at the gateway's OpenAI-compatible API; model ids are AI feature names, served
by whatever model the instance maps to each feature. The stack runs with a 1 s routes refresh
so a mapping change made with the admin API is seen by the gateway within seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from enclave.supervisor import ensure_routes_secret
from tests.e2e.conftest import Stack, gateway_body, running_stack

pytestmark = pytest.mark.e2e

ADMIN = "/api/v4/admin/ai"
REFRESH_S = 1.0
PICKUP_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def oai_stack(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("enclave-openai")
    # As `enclave up` does: one generated 0600 secret, given to the instance and the gateway.
    secret = ensure_routes_secret(data_dir / "keys" / "gateway-routes.secret")
    assert secret.stat().st_mode & 0o777 == 0o600
    with running_stack(
        data_dir,
        tiny_gguf,
        ENCLAVE_INSTANCE__GATEWAY_ROUTES_SECRET_FILE=str(secret),
        ENCLAVE_GATEWAY__GATEWAY_ROUTES_SECRET_FILE=str(secret),
        ENCLAVE_GATEWAY__ROUTES_REFRESH_S=str(REFRESH_S),
    ) as stack:
        yield stack


def grant(stack: Stack, features: list[str] | None = None) -> dict[str, Any]:
    response = httpx.post(
        f"{stack.instance_url}/api/v4/ai/openai/direct_access",
        headers={"PRIVATE-TOKEN": stack.admin_token},
        json={"features": features} if features else None,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def client_for(access: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=access["base_url"], api_key=access["token"], timeout=60, max_retries=0
    )


def eventually(check: Any, timeout_s: float = PICKUP_TIMEOUT_S) -> Any:
    """``check()``'s first truthy result, retried until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


@pytest.fixture(scope="module")
def access(oai_stack: Stack) -> dict[str, Any]:
    granted = grant(oai_stack)
    client = client_for(granted)

    def routes_loaded() -> bool:  # the gateway reads the routes in the background
        try:
            return bool(client.models.list().data)
        except openai.APIStatusError:
            return False

    assert eventually(routes_loaded), "the gateway never loaded the routes"
    return granted


def admin(stack: Stack, method: str, path: str, body: Any = None) -> Any:
    response = httpx.request(
        method,
        f"{stack.instance_url}{ADMIN}{path}",
        json=body,
        headers={"PRIVATE-TOKEN": stack.admin_token},
        timeout=30,
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


def test_base_url_is_the_gateways_v1(oai_stack: Stack, access: dict[str, Any]) -> None:
    assert access["base_url"] == f"{oai_stack.gateway_url}/v1"
    assert "duo_chat" in access["models"] and "code_completions" in access["models"]


def test_list_models(access: dict[str, Any]) -> None:
    models = client_for(access).models.list().data
    ids = [model.id for model in models]
    assert ids == sorted(ids)
    assert {"duo_chat", "code_completions", "code_generations"} <= set(ids)
    chat = next(model for model in models if model.id == "duo_chat")
    assert chat.owned_by == "enclave"
    assert (chat.model_extra or {}).get("family") == "general"


def test_chat(access: dict[str, Any], expected_answer: str) -> None:
    answer = client_for(access).chat.completions.create(
        model="duo_chat", messages=[{"role": "user", "content": "add two numbers"}], max_tokens=32
    )
    assert answer.model == "duo_chat"
    assert answer.choices[0].message.content == expected_answer


def test_chat_streamed(access: dict[str, Any], expected_answer: str) -> None:
    stream = client_for(access).chat.completions.create(
        model="duo_chat",
        messages=[{"role": "user", "content": "add two numbers"}],
        max_tokens=32,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected_answer
    assert len([chunk for chunk in chunks if chunk.choices]) > 1  # really streamed
    assert all(chunk.model == "duo_chat" for chunk in chunks)
    assert any(chunk.usage is not None for chunk in chunks)  # include_usage added


def test_completions(access: dict[str, Any], expected_answer: str) -> None:
    client = client_for(access)
    answer = client.completions.create(
        model="code_completions", prompt="def add(a, b):\n    ", max_tokens=32
    )
    assert answer.model == "code_completions"
    assert answer.choices[0].text == expected_answer
    streamed = client.completions.create(
        model="code_completions", prompt="def add(a, b):\n    ", max_tokens=32, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == expected_answer


def test_bad_token_is_401(access: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=access["base_url"], api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_feature_not_granted_is_403(oai_stack: Stack, access: dict[str, Any]) -> None:
    only_completions = client_for(grant(oai_stack, ["code_completions"]))
    assert [model.id for model in only_completions.models.list().data] == ["code_completions"]
    with pytest.raises(openai.PermissionDeniedError) as refused:
        only_completions.chat.completions.create(
            model="duo_chat", messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.code == "insufficient_scope"


def test_unknown_model_is_404(access: dict[str, Any]) -> None:
    with pytest.raises(openai.NotFoundError):
        client_for(access).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )


def test_mapping_changes_reach_the_gateway(
    oai_stack: Stack, access: dict[str, Any], expected_answer: str
) -> None:
    client = client_for(access)

    def chat_model_name() -> str | None:
        models = {model.id: model for model in client.models.list().data}
        chat = models.get("duo_chat")
        return (chat.model_extra or {}).get("model_name") if chat else None

    original = chat_model_name()
    # Register a second model record (same llama.cpp server) and give it Duo Chat.
    second = admin(
        oai_stack,
        "POST",
        "/self_hosted_models",
        {
            "name": "second-smollm2",
            "model": "mistral",
            "endpoint": oai_stack.model_url,
            "identifier": "custom_openai/smollm2",
            "api_token": oai_stack.model_api_key,
        },
    )
    admin(
        oai_stack,
        "PUT",
        "/feature_settings/duo_chat",
        {"provider": "self_hosted", "self_hosted_model_id": second["id"]},
    )
    changed_at = time.monotonic()
    assert eventually(lambda: chat_model_name() == "second-smollm2"), original
    assert time.monotonic() - changed_at < PICKUP_TIMEOUT_S
    answer = client.chat.completions.create(
        model="duo_chat", messages=[{"role": "user", "content": "hi"}], max_tokens=32
    )
    assert answer.choices[0].message.content == expected_answer

    # Disabled on the instance: the same token is refused by the gateway soon after.
    admin(oai_stack, "PUT", "/feature_settings/duo_chat", {"provider": "disabled"})

    def refused() -> bool:
        try:
            client.chat.completions.create(
                model="duo_chat", messages=[{"role": "user", "content": "hi"}], max_tokens=8
            )
        except openai.PermissionDeniedError as exc:
            return exc.code == "model_unavailable"
        return False

    assert eventually(refused)
    assert "duo_chat" not in [model.id for model in client.models.list().data]


# -- revocation: the instance's revocations reach the gateway with the routes -----------------


def new_user_pat(stack: Stack, username: str) -> tuple[int, int, str]:
    """A fresh user with a PAT (scope ai_features): user id, PAT id, PAT."""
    headers = {"PRIVATE-TOKEN": stack.admin_token}
    user = httpx.post(
        f"{stack.instance_url}/api/v4/users",
        headers=headers,
        json={"username": username, "email": f"{username}@example.com"},
        timeout=30,
    )
    assert user.status_code == 201, user.text
    pat = httpx.post(
        f"{stack.instance_url}/api/v4/users/{user.json()['id']}/personal_access_tokens",
        headers=headers,
        json={"name": "ide", "scopes": ["ai_features"]},
        timeout=30,
    )
    assert pat.status_code == 201, pat.text
    return int(user.json()["id"]), int(pat.json()["id"]), str(pat.json()["token"])


def openai_access_with(stack: Stack, pat: str) -> dict[str, Any]:
    response = httpx.post(
        f"{stack.instance_url}/api/v4/ai/openai/direct_access",
        headers={"PRIVATE-TOKEN": pat},  # every feature served now
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def refused_as_revoked(client: openai.OpenAI) -> bool:
    try:
        client.models.list()
    except openai.AuthenticationError as exc:
        return exc.code == "token_revoked"
    return False


def test_a_revoked_pat_loses_its_openai_token_within_the_refresh_bound(
    oai_stack: Stack, access: dict[str, Any]
) -> None:
    _, pat_id, pat = new_user_pat(oai_stack, "revoked-pat-user")
    client = client_for(openai_access_with(oai_stack, pat))
    assert eventually(lambda: bool(client.models.list().data))
    revoked = httpx.delete(
        f"{oai_stack.instance_url}/api/v4/personal_access_tokens/{pat_id}",
        headers={"PRIVATE-TOKEN": oai_stack.admin_token},
        timeout=30,
    )
    assert revoked.status_code == 204, revoked.text
    revoked_at = time.monotonic()
    assert eventually(lambda: refused_as_revoked(client))
    assert time.monotonic() - revoked_at < PICKUP_TIMEOUT_S
    assert client_for(access).models.list().data  # other users' tokens keep working


def test_a_blocked_user_loses_openai_and_direct_access_tokens(oai_stack: Stack) -> None:
    user_id, _, pat = new_user_pat(oai_stack, "blocked-user")
    client = client_for(openai_access_with(oai_stack, pat))
    direct = httpx.post(
        f"{oai_stack.instance_url}/api/v4/code_suggestions/direct_access",
        headers={"PRIVATE-TOKEN": pat},
        timeout=30,
    )
    assert direct.status_code == 200, direct.text
    grant_ = direct.json()
    user_headers = {**grant_["headers"], "Authorization": f"Bearer {grant_['token']}"}

    def direct_status() -> int:
        response = httpx.post(
            f"{grant_['base_url']}/v2/code/completions",
            json=gateway_body(oai_stack),
            headers=user_headers,
            timeout=60,
        )
        return response.status_code

    assert eventually(lambda: bool(client.models.list().data))
    assert direct_status() == 200
    blocked = httpx.post(
        f"{oai_stack.instance_url}/api/v4/users/{user_id}/block",
        headers={"PRIVATE-TOKEN": oai_stack.admin_token},
        timeout=30,
    )
    assert blocked.status_code == 201, blocked.text
    assert eventually(lambda: refused_as_revoked(client))
    assert eventually(lambda: direct_status() == 401)
