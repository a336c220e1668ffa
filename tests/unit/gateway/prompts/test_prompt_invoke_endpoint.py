"""POST /v1/prompts/{prompt_id} for every prompt in the registry, against a fake model."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote

import pytest
from gateway_fakes import MODEL_API_KEY, Harness
from test_golden import SAMPLES

from enclave.gateway.prompts.registry import get_registry

pytestmark = pytest.mark.anyio

PROMPT_IDS = get_registry().prompt_ids


def url(prompt_id: str, encoded: bool = True) -> str:
    return f"/v1/prompts/{quote(prompt_id, safe='') if encoded else prompt_id}"


def body(gw: Harness, prompt_id: str, family: str = "gpt", **extra: Any) -> dict[str, Any]:
    prompt = get_registry().resolve(prompt_id, family)
    inputs = {name: SAMPLES[name] for name, spec in prompt.definition.inputs.items()}
    return {
        "inputs": inputs,
        "prompt_version": "^1.0.0",
        "stream": False,
        "model_metadata": {
            "provider": "openai",
            "name": family,
            "endpoint": gw.model.endpoint,
            "api_key": MODEL_API_KEY,
            "identifier": f"custom_openai/{family}-local",
        },
        **extra,
    }


def token_for(gw: Harness, prompt_id: str) -> dict[str, str]:
    scope = get_registry().unit_primitives(prompt_id)[0]
    return gw.headers(gw.token(scopes=[scope]))


@pytest.mark.parametrize("family", ["gpt", "mistral", "codestral"])
@pytest.mark.parametrize("prompt_id", PROMPT_IDS)
async def test_every_prompt_is_served(gw: Harness, prompt_id: str, family: str) -> None:
    gw.model.text = "answer"
    payload = body(gw, prompt_id, family)
    response = await gw.client.post(
        url(prompt_id, encoded=family != "mistral"), json=payload, headers=token_for(gw, prompt_id)
    )
    assert response.status_code == 200, response.text
    assert response.json() == "answer"
    [call] = gw.model.requests
    assert call.json["model"] == f"{family}-local"
    prompt = get_registry().resolve(prompt_id, family)
    rendered = prompt.render(payload["inputs"], dt.date.today())
    assert call.json["max_tokens"] == rendered.params.max_tokens
    if rendered.prompt is not None:
        assert call.path == "/v1/completions"
        assert call.json["prompt"] == rendered.prompt
        assert call.json["stop"] == list(rendered.params.stop)
    else:
        assert call.path == "/v1/chat/completions"
        sent = [(m["role"], m["content"]) for m in call.json["messages"]]
        assert sent == [(m.role, m.content) for m in rendered.messages]


async def test_streaming(gw: Harness) -> None:
    gw.model.chunks = ["fix: ", "typo"]
    payload = body(gw, "generate_commit_message", stream=True)
    headers = token_for(gw, "generate_commit_message")
    response = await gw.client.post(url("generate_commit_message"), json=payload, headers=headers)
    assert response.status_code == 200, response.text
    assert response.text == "fix: typo"


async def test_unknown_prompt_is_404(gw: Harness) -> None:
    for prompt_id in ("chat/nope", "chat", "definitions/_partials/chat_base.jinja", "../x"):
        response = await gw.client.post(
            url(prompt_id), json=body(gw, "chat/agent"), headers=token_for(gw, "chat/agent")
        )
        assert response.status_code == 404, prompt_id
        assert response.json() == {"detail": f"Prompt '{prompt_id}' not found"}


@pytest.mark.parametrize(("version", "status"), [("18.11.0-ee", 400), ("17.9.0", 404), ("", 404)])
async def test_unknown_prompt_status_follows_the_gitlab_generation(
    gw: Harness, version: str, status: int
) -> None:
    # GitLab's gateway of 2026 answers an unknown prompt id with 400, the 2024 one with 404.
    headers = {**token_for(gw, "chat/agent"), "X-Gitlab-Version": version}
    response = await gw.client.post(url("chat/nope"), json=body(gw, "chat/agent"), headers=headers)
    assert response.status_code == status
    assert response.json() == {"detail": "Prompt 'chat/nope' not found"}


@pytest.mark.parametrize("prompt_id", PROMPT_IDS)
async def test_missing_scope_is_403(gw: Harness, prompt_id: str) -> None:
    headers = gw.headers(gw.token(scopes=["some_other_feature"]))
    response = await gw.client.post(url(prompt_id), json=body(gw, prompt_id), headers=headers)
    assert response.status_code == 403
    assert response.json() == {"detail": f"Unauthorized to access {prompt_id}"}
    assert gw.model.requests == []


async def test_chat_sub_features_accept_duo_chat(gw: Harness) -> None:
    headers = gw.headers(gw.token(scopes=["duo_chat"]))
    for prompt_id in ("chat/explain_code", "chat/troubleshoot_job", "chat/agent"):
        response = await gw.client.post(url(prompt_id), json=body(gw, prompt_id), headers=headers)
        assert response.status_code == 200, response.text
    response = await gw.client.post(
        url("chat/explain_vulnerability"), json=body(gw, "chat/explain_vulnerability"),
        headers=headers,
    )  # fmt: skip
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("prompt_id", "inputs", "name", "kind"),
    [
        ("chat/explain_code", {}, "selected_text", "missing"),
        ("chat/explain_code", {"selected_text": None}, "selected_text", "missing"),
        ("chat/explain_code", {"selected_text": 12}, "selected_text", "string_type"),
        ("chat/explain_code", {"selected_text": "x", "input": {"a": 1}}, "input", "string_type"),
        ("glab_ask_git_command", {"prompt": "x" * 10_001}, "prompt", "string_too_long"),
        ("chat/explain_vulnerability", {"title": "t", "identifiers": "i",
         "vulnerability_description": "d"}, "vulnerability_info", "missing"),
        ("resolve_vulnerability", {**{k: "v" for k in ("filename", "identifiers", "name",
         "source_code", "vulnerability_description")}}, "vulnerable_code", "missing"),
        ("review_merge_request", {"diff_lines": "d", "mr_title": "t"}, "mr_description", "missing"),
    ],
)  # fmt: skip
async def test_bad_inputs_are_422_at_the_input(
    gw: Harness, prompt_id: str, inputs: dict[str, Any], name: str, kind: str
) -> None:
    payload = body(gw, prompt_id)
    payload["inputs"] = inputs
    response = await gw.client.post(url(prompt_id), json=payload, headers=token_for(gw, prompt_id))
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "inputs", name]
    assert error["type"] == kind
    assert gw.model.requests == []


@pytest.mark.parametrize("version", ["latest", "^3.0.0", "0.1.0", ">=9", "~1.0.0-dev"])
async def test_bad_or_unmatched_prompt_version_is_422(gw: Harness, version: str) -> None:
    payload = body(gw, "summarize_review", prompt_version=version)
    headers = token_for(gw, "summarize_review")
    response = await gw.client.post(url("summarize_review"), json=payload, headers=headers)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "prompt_version"]
    assert gw.model.requests == []


@pytest.mark.parametrize(
    "version", [None, "1.0.0", "^1.0.0", "~1.0.0", ">=1.0.0", "1", "^2.0.0", "2.0.0"]
)
async def test_accepted_prompt_versions(gw: Harness, version: str | None) -> None:
    payload = body(gw, "summarize_review", prompt_version=version)
    headers = token_for(gw, "summarize_review")
    response = await gw.client.post(url("summarize_review"), json=payload, headers=headers)
    assert response.status_code == 200, response.text


async def test_template_syntax_in_inputs_reaches_the_model_literally(gw: Harness) -> None:
    payload = body(gw, "glab_ask_git_command")
    payload["inputs"] = {"prompt": "{{ 7*7 }} {% raw %}{{ ''.__class__ }}"}
    headers = token_for(gw, "glab_ask_git_command")
    response = await gw.client.post(url("glab_ask_git_command"), json=payload, headers=headers)
    assert response.status_code == 200, response.text
    [call] = gw.model.requests
    user = call.json["messages"][-1]["content"]
    assert "{{ 7*7 }} {% raw %}{{ ''.__class__ }}" in user and "49" not in user


async def test_model_failure_is_421(gw: Harness) -> None:
    gw.model.status = 500
    headers = token_for(gw, "generate_commit_message")
    payload = body(gw, "generate_commit_message")
    response = await gw.client.post(url("generate_commit_message"), json=payload, headers=headers)
    assert response.status_code == 421
    assert response.json()["detail"].startswith("500 ")
