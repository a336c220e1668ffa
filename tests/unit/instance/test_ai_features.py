"""The non-chat AI feature endpoints (``/api/v4/ai/<feature>``) against a fake gateway: the exact
prompt-registry body, path and token scopes forwarded, and every way they refuse or fail."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web
from sqlalchemy import select

from enclave.common.net import free_port
from enclave.instance.api.ai_features import AI_FEATURES, AiFeature, language_info
from enclave.instance.bootstrap import EMBEDDED_MODEL_NAME
from enclave.instance.db import FeatureSetting
from enclave.instance.db.models import SelfHostedModel
from tests.unit.instance.admin_helpers import Api
from tests.unit.instance.conftest import (
    EMBEDDED_ENDPOINT,
    MODEL_API_KEY,
    FakeGateway,
    LiveInstance,
    check_disconnect_cancels_upstream,
    check_relayed_chunk_by_chunk,
)

ANSWER = "Add a + b."
METADATA = {
    "provider": "openai",
    "name": "general",
    "endpoint": EMBEDDED_ENDPOINT,
    "api_key": MODEL_API_KEY,
    "identifier": "custom_openai/smollm2",
}
CODE_TASK = {"code": "def f(a, b): return a+b", "file_name": "calc.py", "language": "Python"}
CODE_TASK_INPUTS = {
    "selected_text": "def f(a, b): return a+b",
    "file_name": "calc.py",
    "file_content": "",
    "file_content_reuse": "",
    "language_info": "The code is written in Python",
    "input": "",
}

# path → (request body, encoded gateway path, inputs forwarded, token scopes)
CASES: dict[str, tuple[dict[str, Any], str, dict[str, Any], list[str]]] = {
    "generate_commit_message": (
        {"diff": "+x = 1\n"},
        "/v1/prompts/generate_commit_message",
        {"diff": "+x = 1\n"},
        ["generate_commit_message"],
    ),
    "summarize_new_merge_request": (
        {"diff": "+x = 1\n", "title": "Add x"},
        "/v1/prompts/summarize_new_merge_request",
        {"extracted_diff": "+x = 1\n"},
        ["summarize_new_merge_request"],
    ),
    "summarize_review": (
        {"draft_notes": ["Rename x.", "Add a test."]},
        "/v1/prompts/summarize_review",
        {"draft_notes_content": "Rename x.\nAdd a test."},
        ["summarize_review"],
    ),
    "review_merge_request": (
        {"diff": "+x = 1\n", "title": "Add x", "description": "Needed for y."},
        "/v1/prompts/review_merge_request",
        {
            "diff_lines": "+x = 1\n",
            "mr_title": "Add x",
            "mr_description": "Needed for y.",
            "custom_instructions_section": "",
            "full_content_section": "",
        },
        ["review_merge_request"],
    ),
    "explain_vulnerability": (
        {
            "title": "SQL injection",
            "description": "User input reaches a query.",
            "identifiers": ["CWE-89", "CVE-2024-0001"],
            "file_name": "db.py",
            "code": "cur.execute(q % name)",
        },
        "/v1/prompts/chat%2Fexplain_vulnerability",
        {
            "title": "SQL injection",
            "vulnerability_description": "User input reaches a query.",
            "identifiers": "CWE-89, CVE-2024-0001",
            "vulnerability_info": "The vulnerability is in the file db.py.\n"
            "The vulnerable code is:\n```\ncur.execute(q % name)\n```",
            "language_info": "",
        },
        ["explain_vulnerability"],
    ),
    "resolve_vulnerability": (
        {
            "name": "SQL injection",
            "description": "User input reaches a query.",
            "identifiers": ["CWE-89"],
            "file_name": "db.py",
            "source_code": "import db\ncur.execute(q % name)\n",
            "vulnerable_code": "cur.execute(q % name)",
        },
        "/v1/prompts/resolve_vulnerability",
        {
            "name": "SQL injection",
            "vulnerability_description": "User input reaches a query.",
            "identifiers": "CWE-89",
            "filename": "db.py",
            "source_code": "import db\ncur.execute(q % name)\n",
            "vulnerable_code": "cur.execute(q % name)",
        },
        ["resolve_vulnerability"],
    ),
    "glab_ask_git_command": (
        {"prompt": "undo my last commit"},
        "/v1/prompts/glab_ask_git_command",
        {"prompt": "undo my last commit"},
        ["glab_ask_git_command"],
    ),
    "troubleshoot_job": (
        {"job_log": "$ pytest\nE   AssertionError"},
        "/v1/prompts/chat%2Ftroubleshoot_job",
        {"selected_text": "$ pytest\nE   AssertionError", "language_info": ""},
        ["duo_chat", "troubleshoot_job"],
    ),
    **{
        name: (
            CODE_TASK,
            f"/v1/prompts/chat%2F{name}",
            CODE_TASK_INPUTS,
            sorted(["duo_chat", name]),
        )
        for name in ("explain_code", "write_tests", "refactor_code", "fix_code")
    },
}
SPECS = {spec.path: spec for spec in AI_FEATURES}


def url(path: str) -> str:
    return f"/api/v4/ai/{path}"


async def prompt_answer(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response(ANSWER)


@pytest.fixture()
def api(instance: LiveInstance) -> Api:
    return Api(instance)


@pytest.fixture(scope="module")
def all_features_assigned(instance: LiveInstance) -> None:
    """Bootstrap assigns the embedded model to completions, generations and chat only."""
    with instance.ctx.sessions() as session:
        model = session.scalar(
            select(SelfHostedModel).where(SelfHostedModel.name == EMBEDDED_MODEL_NAME)
        )
        assert model is not None
        model_id = model.id
    for spec in AI_FEATURES:
        if spec.feature.value not in CHAT_SUB_FEATURE_NAMES:  # these follow duo_chat
            instance.set_feature(spec.feature.value, "self_hosted", model_id)


CHAT_SUB_FEATURE_NAMES = {
    "duo_chat_explain_code",
    "duo_chat_write_tests",
    "duo_chat_refactor_code",
    "duo_chat_fix_code",
    "duo_chat_troubleshoot_job",
}


@pytest.fixture()
def prompt_gateway(fresh_gateway: FakeGateway, all_features_assigned: None) -> FakeGateway:
    fresh_gateway.handler = prompt_answer
    return fresh_gateway


@pytest.fixture()
def restore_features(instance: LiveInstance) -> Iterator[None]:
    with instance.ctx.sessions() as session:
        saved = {
            r.feature: (r.provider, r.self_hosted_model_id)
            for r in session.scalars(select(FeatureSetting))
        }
    yield
    for feature, (provider, model_id) in saved.items():
        instance.set_feature(feature, provider, model_id)


def test_every_feature_endpoint_is_covered() -> None:
    assert set(CASES) == set(SPECS)


@pytest.mark.parametrize("path", sorted(CASES))
def test_forwards_the_prompt_registry_request(
    api: Api, prompt_gateway: FakeGateway, path: str
) -> None:
    body, gateway_path, inputs, scopes = CASES[path]
    response = api.post(url(path), body)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "response": ANSWER,
        "feature": SPECS[path].feature.value,
        "model": EMBEDDED_MODEL_NAME,
    }
    [sent] = prompt_gateway.requests
    assert sent.raw_path == gateway_path
    assert sent.body == {
        "inputs": inputs,
        # GitLab 18 asks for version 2 of the two summaries.
        "prompt_version": "^2.0.0" if path.startswith("summarize_") else "^1.0.0",
        "stream": False,
        "model_metadata": METADATA,
    }
    token = sent.headers["Authorization"].removeprefix("Bearer ")
    assert jwt.decode(token, options={"verify_signature": False})["scopes"] == scopes
    assert sent.headers["X-Gitlab-Authentication-Type"] == "oidc"
    assert sent.headers["X-Gitlab-Realm"] == "self-managed"


def test_optional_fields_default_to_empty_inputs(api: Api, prompt_gateway: FakeGateway) -> None:
    assert api.post(url("explain_code"), {"code": "x = 1"}).status_code == 200
    assert api.post(url("review_merge_request"), {"diff": "+x"}).status_code == 200
    assert api.post(url("explain_vulnerability"), {"title": "t", "description": "d"}).is_success
    explain, review, vulnerability = (r.body["inputs"] for r in prompt_gateway.requests)
    assert explain == {
        "selected_text": "x = 1",
        "file_name": "",
        "file_content": "",
        "file_content_reuse": "",
        "language_info": "",
        "input": "",
    }
    assert review == {
        "diff_lines": "+x",
        "mr_title": "",
        "mr_description": "",
        "custom_instructions_section": "",
        "full_content_section": "",
    }
    assert vulnerability == {
        "title": "t",
        "vulnerability_description": "d",
        "identifiers": "",
        "vulnerability_info": "",
        "language_info": "",
    }


def test_language_info() -> None:
    assert language_info("Go") == "The code is written in Go"
    assert language_info(None) == ""


def test_model_metadata_drops_missing_fields(
    api: Api, prompt_gateway: FakeGateway, restore_features: None
) -> None:
    # A model registered without an API key: no api_key in model_metadata at all.
    model = api.create_model(model="mistral", endpoint="http://10.1.1.1:8000/v1")
    api.put(
        "/api/v4/admin/ai/feature_settings/generate_commit_message",
        {"provider": "self_hosted", "self_hosted_model_id": model["id"]},
    )
    response = api.post(url("generate_commit_message"), {"diff": "+x"})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == model["name"]
    assert prompt_gateway.requests[-1].body["model_metadata"] == {
        "provider": "openai",
        "name": "mistral",
        "endpoint": "http://10.1.1.1:8000/v1",
        "identifier": "custom_openai/Mistral-7B-Instruct-v0.3",
    }


@pytest.mark.parametrize("path", sorted(CASES))
def test_401_without_a_token(
    instance: LiveInstance, prompt_gateway: FakeGateway, path: str
) -> None:
    response = Api(instance, "").post(url(path), CASES[path][0])
    assert response.status_code == 401
    assert response.json() == {"message": "401 Unauthorized"}
    assert response.headers["x-gitlab-error-origin"] == "monolith"
    assert prompt_gateway.requests == []


def test_403_for_a_token_without_ai_scopes(
    instance: LiveInstance, prompt_gateway: FakeGateway
) -> None:
    token = instance.new_token(("read_user",))
    response = Api(instance, token).post(url("generate_commit_message"), {"diff": "+x"})
    assert response.status_code == 403
    assert "insufficient_scope" in response.json()["message"]


def test_403_when_the_feature_is_disabled(
    instance: LiveInstance, api: Api, prompt_gateway: FakeGateway, restore_features: None
) -> None:
    instance.set_feature("generate_commit_message", "disabled")
    refused = api.post(url("generate_commit_message"), {"diff": "+x"})
    assert refused.status_code == 403
    assert refused.headers["x-gitlab-error-origin"] == "monolith"
    assert refused.json()["message"] == (
        "403 Forbidden - Merge commit message generation is disabled on this instance. Ask an "
        "administrator to assign a self-hosted model to the generate_commit_message feature."
    )
    instance.set_feature("review_merge_request", "unassigned")
    unassigned = api.post(url("review_merge_request"), {"diff": "+x"})
    assert unassigned.status_code == 403
    assert "Code review has no model assigned" in unassigned.json()["message"]
    # Chat code tasks follow duo_chat when they have no setting of their own.
    instance.set_feature("duo_chat", "disabled")
    chat_task = api.post(url("explain_code"), {"code": "x"})
    assert chat_task.status_code == 403
    assert "(it uses the duo_chat setting)" in chat_task.json()["message"]
    assert prompt_gateway.requests == []


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("generate_commit_message", {"diff": "+" * 400_001}, "diff"),
        ("generate_commit_message", {}, "diff"),
        ("generate_commit_message", {"diff": ""}, "diff"),
        ("summarize_review", {"draft_notes": ["n"] * 101}, "draft_notes"),
        ("summarize_review", {"draft_notes": []}, "draft_notes"),
        ("summarize_review", {"draft_notes": ["ok", "x" * 100_001]}, "draft_notes.1"),
        ("explain_code", {"code": "x" * 100_001}, "code"),
        ("explain_code", {"code": "x", "question": "q" * 100_001}, "question"),
        ("resolve_vulnerability", {"name": "n", "description": "d"}, "file_name"),
        ("troubleshoot_job", {"job_log": 42}, "job_log"),
        ("glab_ask_git_command", {"prompt": "p" * 10_001}, "prompt"),
        ("review_merge_request", {"diff": "+x", "title": "t" * 1_001}, "title"),
        ("explain_code", {"code": "x", "language": "l" * 256}, "language"),
        (
            "explain_vulnerability",
            {"title": "t", "description": "d", "identifiers": ["CWE-89" * 1000] * 2},
            "identifiers",
        ),
    ],
)
def test_422_names_the_bad_field(
    api: Api, prompt_gateway: FakeGateway, path: str, body: dict[str, Any], field: str
) -> None:
    response = api.post(url(path), body)
    assert response.status_code == 422, response.text
    assert response.headers["x-gitlab-error-origin"] == "monolith"
    data = response.json()
    assert field in data["errors"]
    assert data["message"].startswith("422 Unprocessable Entity - ")
    assert f"{field}: " in data["message"]
    assert prompt_gateway.requests == []


def test_a_large_diff_within_the_limit_is_forwarded(api: Api, prompt_gateway: FakeGateway) -> None:
    diff = "+" * 400_000
    assert api.post(url("generate_commit_message"), {"diff": diff}).status_code == 200
    assert prompt_gateway.requests[0].body["inputs"] == {"diff": diff}


async def model_failed(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response({"detail": "401 invalid api key"}, status=421)


async def inference_failed(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response({"detail": f"Inference failed: bad key {MODEL_API_KEY}"}, status=503)


@pytest.mark.parametrize("stream", [False, True])
def test_model_failure_is_502_with_the_reason(
    api: Api, prompt_gateway: FakeGateway, stream: bool
) -> None:
    prompt_gateway.handler = model_failed
    response = api.post(url("generate_commit_message"), {"diff": "+x", "stream": stream})
    assert response.status_code == 502
    assert response.headers["x-gitlab-error-origin"] == "monolith"
    message = response.json()["message"]
    assert message.startswith(
        "502 Bad Gateway - the model 'embedded-smollm2' failed to answer: 401 invalid api key."
    )
    prompt_gateway.handler = inference_failed
    response = api.post(url("fix_code"), {"code": "x", "stream": stream})
    assert response.status_code == 502
    assert MODEL_API_KEY not in response.text  # never echo a secret
    assert "Inference failed: bad key [redacted]" in response.json()["message"]


async def refuse(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response({"detail": "Unauthorized to access summarize_review"}, status=403)


def test_other_gateway_errors_are_relayed(api: Api, prompt_gateway: FakeGateway) -> None:
    prompt_gateway.handler = refuse
    response = api.post(url("summarize_review"), {"draft_notes": ["x"]})
    assert response.status_code == 403
    assert response.json() == {"detail": "Unauthorized to access summarize_review"}
    assert "x-gitlab-error-origin" not in response.headers


async def not_text(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response({"unexpected": True})


def test_an_answer_without_text_is_502(api: Api, prompt_gateway: FakeGateway) -> None:
    prompt_gateway.handler = not_text
    response = api.post(url("glab_ask_git_command"), {"prompt": "undo"})
    assert response.status_code == 502
    assert "without the model's text" in response.json()["message"]


def test_unreachable_gateway(
    live_instance_factory: Callable[..., LiveInstance],
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    live = live_instance_factory(gateway_url=dead, embedded_model_endpoint=EMBEDDED_ENDPOINT)
    # troubleshoot_job follows duo_chat, which bootstrap assigned to the embedded model.
    response = Api(live).post(url("troubleshoot_job"), {"job_log": "boom"})
    assert response.status_code == 502
    assert response.headers["x-gitlab-error-origin"] == "monolith"
    message = response.json()["message"]
    assert message.startswith("502 Bad Gateway - could not connect to the AI gateway at " + dead)
    assert "Traceback" not in response.text
    assert MODEL_API_KEY not in response.text


@pytest.mark.parametrize("path", ["review_merge_request", "explain_code"])
def test_streaming_is_relayed_chunk_by_chunk(
    instance: LiveInstance, prompt_gateway: FakeGateway, path: str
) -> None:
    check_relayed_chunk_by_chunk(instance, prompt_gateway, url(path), CASES[path][0])


def test_client_disconnect_cancels_the_upstream_request(
    instance: LiveInstance, prompt_gateway: FakeGateway
) -> None:
    check_disconnect_cancels_upstream(
        instance, prompt_gateway, url("summarize_new_merge_request"), {"diff": "+x"}
    )


def test_openapi_documents_each_body(instance: LiveInstance) -> None:
    schema = httpx.get(f"{instance.url}/openapi.json", timeout=10).json()
    spec: AiFeature
    for spec in AI_FEATURES:
        operation = schema["paths"][f"/api/v4/ai/{spec.path}"]["post"]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith(spec.body.__name__)


def test_422_for_a_body_that_is_not_json(api: Api, prompt_gateway: FakeGateway) -> None:
    response = api.post(
        url("generate_commit_message"),
        content=b'{"diff": ',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["errors"] == {"body": ["the body is not valid JSON"]}


def test_413_for_a_body_over_the_limit(api: Api, prompt_gateway: FakeGateway) -> None:
    response = api.post(url("generate_commit_message"), {"diff": "+" * (9 * 1024 * 1024)})
    assert response.status_code == 413
    assert response.json()["message"] == (
        "413 Request Entity Too Large - the request body is over 8 MiB, the limit of this "
        "endpoint (ENCLAVE_INSTANCE__MAX_AI_BODY_BYTES); send a smaller body"
    )
    assert prompt_gateway.requests == []


async def rate_limited(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response({"detail": "rate limited"}, status=429, headers={"Retry-After": "3"})


def test_rate_limit_is_relayed_with_retry_after(api: Api, prompt_gateway: FakeGateway) -> None:
    prompt_gateway.handler = rate_limited
    response = api.post(url("write_tests"), {"code": "x"})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.json() == {"detail": "rate limited"}


def test_413_for_a_chunked_body_over_the_limit(
    instance: LiveInstance, prompt_gateway: FakeGateway
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"diff": "'
        for _ in range(9):
            yield b"+" * (1024 * 1024)
        yield b'"}'

    response = httpx.post(
        instance.url + url("generate_commit_message"),
        content=chunks(),  # a generator: sent chunked, without Content-Length
        headers={"PRIVATE-TOKEN": instance.admin_token, "Content-Type": "application/json"},
        timeout=20,
    )
    assert response.status_code == 413
    assert prompt_gateway.requests == []
