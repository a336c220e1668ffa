"""A user's token for the OpenAI-compatible API works there and nowhere else.

The GitLab endpoints take the model's endpoint and API key from the request body, because only
the instance calls them; a token a user holds must not open them (deny by default).
"""

from __future__ import annotations

from typing import Any

import pytest
from gateway_fakes import INSTANCE_ID, MODEL_API_KEY
from openai_harness import USER_ID, OpenAIHarness, make_openai, oai

from enclave.common import wire

pytestmark = pytest.mark.anyio

__all__ = ["make_openai", "oai"]  # fixtures

ALL_SCOPES = [
    wire.UP_COMPLETE_CODE,
    wire.UP_GENERATE_CODE,
    wire.UP_DUO_CHAT,
    "explain_code",
    "generate_commit_message",
]


def gitlab_headers(token: str) -> dict[str, str]:
    # Everything GitLab's instance would send: the token's own claims all match.
    return {
        "Authorization": f"Bearer {token}",
        "X-Gitlab-Authentication-Type": "oidc",
        "X-Gitlab-Instance-Id": INSTANCE_ID,
        "X-Gitlab-Realm": wire.REALM_SELF_MANAGED,
        "X-Gitlab-Global-User-Id": USER_ID,
    }


def metadata(endpoint: str) -> dict[str, Any]:
    return {"provider": "openai", "name": "mistral", "endpoint": endpoint, "api_key": "k"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/code/completions", "completion"),
        ("/v2/code/generations", "completion"),
        ("/v4/code/suggestions", "completion"),
        ("/v2/chat/agent", "agent"),
        ("/v1/prompts/generate_commit_message", "prompt"),
        ("/v1/prompts/model_configuration%2Fcheck", "prompt"),
    ],
)
async def test_openai_token_is_refused_by_gitlab_endpoints(
    oai: OpenAIHarness, path: str, body: str
) -> None:
    endpoint = oai.model.endpoint
    bodies: dict[str, Any] = {
        "completion": oai.h.body(model_endpoint=endpoint, model_name="mistral"),
        "agent": {
            "messages": [{"role": "user", "content": "hi"}],
            "model_metadata": metadata(endpoint),
        },
        "prompt": {"inputs": {"diff": "+x\n"}, "model_metadata": metadata(endpoint)},
    }
    token = oai.token(scopes=ALL_SCOPES)
    response = await oai.client.post(path, json=bodies[body], headers=gitlab_headers(token))
    assert response.status_code == 401, response.text
    assert "only valid for the OpenAI-compatible API" in response.json()["error"]
    assert oai.model.requests == []


async def test_openai_token_cannot_mint_a_direct_access_token(oai: OpenAIHarness) -> None:
    token = oai.token(scopes=ALL_SCOPES)
    response = await oai.client.post("/v1/code/user_access_token", headers=gitlab_headers(token))
    assert response.status_code == 403
    assert "user token cannot create another token" in response.json()["detail"]


async def test_the_same_token_works_on_the_openai_api(oai: OpenAIHarness) -> None:
    token = oai.token(scopes=ALL_SCOPES)
    response = await oai.client.post(
        "/v1/completions",
        json={"model": "code_completions", "prompt": "def add(a, b):\n    "},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    assert MODEL_API_KEY not in response.text
