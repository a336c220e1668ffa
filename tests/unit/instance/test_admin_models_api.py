"""Admin API: self-hosted models, feature settings, AI settings, validation and secrecy."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import structlog
from sqlalchemy import select, text

from enclave.instance.db import AuditEvent, SelfHostedModel
from tests.unit.instance.admin_helpers import ADMIN, Api
from tests.unit.instance.conftest import FakeGateway, LiveInstance

MODELS = f"{ADMIN}/self_hosted_models"
FEATURES = f"{ADMIN}/feature_settings"
SETTINGS = f"{ADMIN}/settings"
SECRET_KEY = "enclkey-very-secret-model-key-0123456789"
COMPLETION = {
    "current_file": {"file_name": "a.py", "content_above_cursor": "def f():\n    "},
    "intent": "completion",
}


@pytest.fixture()
def api(instance: LiveInstance) -> Api:
    return Api(instance)


# --- authentication and authorisation ---------------------------------------------------------

ADMIN_ROUTES = [
    ("GET", MODELS),
    ("POST", MODELS),
    ("GET", f"{MODELS}/1"),
    ("PUT", f"{MODELS}/1"),
    ("DELETE", f"{MODELS}/1"),
    ("POST", f"{MODELS}/1/test"),
    ("GET", FEATURES),
    ("PUT", f"{FEATURES}/duo_chat"),
    ("GET", SETTINGS),
    ("PUT", SETTINGS),
    ("GET", f"{ADMIN}/audit_events"),
    ("GET", "/api/v4/audit_events"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_need_a_token(instance: LiveInstance, method: str, path: str) -> None:
    response = Api(instance, token="").request(method, path, json={})
    assert response.status_code == 401
    assert response.json() == {"message": "401 Unauthorized"}


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_refuse_non_admins(instance: LiveInstance, method: str, path: str) -> None:
    response = Api(instance, instance.new_token(("api",))).request(method, path, json={})
    assert response.status_code == 403
    assert response.json()["message"] == (
        "403 Forbidden - this endpoint is for administrators; ask an administrator to do it for you"
    )


def test_admin_routes_need_the_api_scope(instance: LiveInstance) -> None:
    with instance.ctx.sessions() as session, session.begin():
        from enclave.instance.db import User
        from enclave.instance.pats import create_token

        root = session.scalar(select(User).where(User.username == "root"))
        assert root is not None
        token = create_token(session, root, name="ai only", scopes=["ai_features"]).plaintext
    response = Api(instance, token).get(MODELS)
    assert response.status_code == 403
    assert "api" in response.json()["message"]


# --- models: create, show, list ----------------------------------------------------------------


def test_create_model_returns_it_without_the_key(api: Api) -> None:
    response = api.post(
        MODELS,
        {
            "name": "vllm-mistral",
            "model": "mistral",
            "endpoint": "http://10.1.2.3:8000/v1/",
            "identifier": "custom_openai/Mistral-7B-Instruct-v0.3",
            "api_token": SECRET_KEY,
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert {k: body[k] for k in body if k not in ("id", "created_at", "updated_at")} == {
        "name": "vllm-mistral",
        "model": "mistral",
        "model_display_name": "Mistral",
        "provider": "api",
        "provider_display_name": "OpenAI-compatible API",
        "endpoint": "http://10.1.2.3:8000/v1",
        "region": None,
        "project": None,
        "location": None,
        "identifier": "custom_openai/Mistral-7B-Instruct-v0.3",
        "has_api_token": True,
        "release_state": "GA",
        "feature_settings": [],
    }
    assert SECRET_KEY not in response.text
    shown = api.get(f"{MODELS}/{body['id']}")
    assert shown.status_code == 200
    assert shown.json()["name"] == "vllm-mistral"
    assert SECRET_KEY not in shown.text


@pytest.mark.parametrize(
    ("family", "state"),
    [("codestral", "GA"), ("llama3", "BETA"), ("general", "BETA"), ("qwen", "EXPERIMENTAL")],
)
def test_release_state_follows_the_family(api: Api, family: str, state: str) -> None:
    assert api.create_model(model=family)["release_state"] == state


def test_every_provider_kind(api: Api) -> None:
    cases = [
        ("bedrock", None, "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0", "claude_3"),
        ("azure_openai", "https://acme.openai.azure.com", "azure/gpt-4o", "gpt"),
        ("vertex_ai", None, "vertex_ai/gemini-2.5-flash", "gemini"),
        ("anthropic", None, "anthropic/claude-sonnet-4-5", "claude_3"),
        ("api", "http://ollama.internal:11434/v1", "custom_openai/qwen2.5-coder:7b", "qwen"),
    ]
    for provider, endpoint, identifier, family in cases:
        model = api.create_model(
            provider=provider, endpoint=endpoint, identifier=identifier, model=family
        )
        assert (model["provider"], model["identifier"], model["endpoint"]) == (
            provider,
            identifier,
            endpoint,
        )


INVALID_MODELS: list[tuple[str, dict[str, Any], int, str]] = [
    (
        "ftp scheme",
        {"endpoint": "ftp://10.0.0.5/v1"},
        400,
        "endpoint must be an http:// or https:// URL (got scheme 'ftp' in 'ftp://10.0.0.5/v1')",
    ),
    (
        "no scheme",
        {"endpoint": "10.0.0.5:8000/v1"},
        400,
        "endpoint must be an http:// or https:// URL",
    ),
    (
        "credentials in url",
        {"endpoint": "http://user:pw@10.0.0.5/v1"},
        400,
        "endpoint must not contain a user name or password; give the model's API key in its "
        "own field",
    ),
    (
        "unknown family",
        {"model": "gpt5-turbo"},
        400,
        "model family 'gpt5-turbo' is unknown; use one of: claude_3, codegemma, codellama, "
        "codestral, deepseekcoder, gemini, general, gpt, llama3, mistral, mixtral, qwen",
    ),
    (
        "identifier of another provider",
        {"identifier": "bedrock/anthropic.claude-v2"},
        400,
        "identifier 'bedrock/anthropic.claude-v2' does not fit provider 'api' (OpenAI-compatible "
        "API): it must start with 'custom_openai/', for example "
        "custom_openai/Mistral-7B-Instruct-v0.3; bedrock/… is the format of provider 'bedrock'",
    ),
    (
        "identifier without model",
        {"identifier": "custom_openai/"},
        400,
        "identifier 'custom_openai/' needs a model name after 'custom_openai/'",
    ),
    (
        "bedrock identifier for api",
        {"provider": "bedrock", "identifier": "custom_openai/x"},
        400,
        "identifier 'custom_openai/x' does not fit provider 'bedrock' (Amazon Bedrock): it must "
        "start with 'bedrock/', for example bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0; "
        "custom_openai/… is the format of provider 'api'",
    ),
    (
        "missing identifier",
        {"identifier": None},
        400,
        "identifier is missing: OpenAI-compatible API models need custom_openai/<model>",
    ),
    (
        "missing endpoint",
        {"endpoint": None},
        400,
        "endpoint is missing: OpenAI-compatible API models need the URL of their server, for "
        "example http://vllm.internal:8000/v1",
    ),
    ("missing name", {"name": "  "}, 400, "name is missing"),
    (
        "unknown provider",
        {"provider": "openrouter"},
        400,
        "provider 'openrouter' is unknown; use one of: api, azure_openai, bedrock, vertex_ai, "
        "anthropic",
    ),
    ("extra field", {"temperature": 0.2}, 400, "temperature is invalid"),
]


@pytest.mark.parametrize(
    ("case", "fields", "status", "message"), INVALID_MODELS, ids=[c[0] for c in INVALID_MODELS]
)
def test_invalid_models_are_refused_precisely(
    api: Api, case: str, fields: dict[str, Any], status: int, message: str
) -> None:
    body = {
        "name": f"invalid-{case}",
        "model": "mistral",
        "endpoint": "http://10.0.0.5:8000/v1",
        "identifier": "custom_openai/m",
        **fields,
    }
    response = api.post(MODELS, body)
    assert response.status_code == status, response.text
    assert response.json()["message"].startswith(f"400 Bad request - {message}")
    assert response.headers["x-gitlab-error-origin"] == "monolith"


def test_duplicate_name_is_a_conflict(api: Api) -> None:
    api.create_model(name="twin")
    response = api.post(
        MODELS,
        {
            "name": "twin",
            "model": "mistral",
            "endpoint": "http://h/v1",
            "identifier": "custom_openai/m",
        },
    )
    assert response.status_code == 409
    assert response.json() == {
        "message": "409 Conflict - name 'twin' has already been taken by another self-hosted model",
        "errors": {"name": ["name 'twin' has already been taken by another self-hosted model"]},
    }


def test_list_is_paginated_the_gitlab_way(api: Api) -> None:
    for _ in range(3):
        api.create_model()
    total = len(api.get(MODELS, params={"per_page": 100}).json())
    response = api.get(MODELS, params={"per_page": 2, "page": 1})
    assert response.status_code == 200
    assert len(response.json()) == 2
    headers = response.headers
    assert headers["x-total"] == str(total)
    assert headers["x-per-page"] == "2"
    assert headers["x-page"] == "1"
    assert headers["x-next-page"] == "2"
    assert headers["x-prev-page"] == ""
    assert headers["x-total-pages"] == str((total + 1) // 2)
    assert 'rel="next"' in headers["link"] and "page=2" in headers["link"]
    assert 'rel="first"' in headers["link"] and 'rel="last"' in headers["link"]
    last = api.get(MODELS, params={"per_page": 2, "page": headers["x-total-pages"]})
    assert last.headers["x-next-page"] == ""
    ids = [m["id"] for m in response.json()] + [m["id"] for m in last.json()]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("params", [{"page": "0"}, {"per_page": "-1"}, {"page": "two"}])
def test_bad_page_parameters(api: Api, params: dict[str, str]) -> None:
    response = api.get(MODELS, params=params)
    assert response.status_code == 400
    name = next(iter(params))
    assert response.json()["message"] == (
        f"400 Bad request - {name} is invalid: it must be a whole number of 1 or more"
    )


# --- update and delete -------------------------------------------------------------------------


def test_update_changes_only_what_is_given(api: Api, instance: LiveInstance) -> None:
    model = api.create_model(api_token=SECRET_KEY)
    response = api.put(f"{MODELS}/{model['id']}", {"identifier": "custom_openai/other"})
    assert response.status_code == 200, response.text
    assert response.json()["identifier"] == "custom_openai/other"
    assert response.json()["has_api_token"] is True
    cleared = api.put(f"{MODELS}/{model['id']}", {"api_token": ""})
    assert cleared.json()["has_api_token"] is False
    with instance.ctx.sessions() as session:
        row = session.get(SelfHostedModel, model["id"])
        assert row is not None and row.api_token_encrypted is None


def test_update_validates_the_result_as_a_whole(api: Api) -> None:
    model = api.create_model()
    response = api.put(f"{MODELS}/{model['id']}", {"provider": "bedrock"})
    assert response.status_code == 400
    assert "does not fit provider 'bedrock'" in response.json()["message"]
    taken = api.create_model()
    renamed = api.put(f"{MODELS}/{model['id']}", {"name": taken["name"]})
    assert renamed.status_code == 409
    assert api.put(f"{MODELS}/99999", {"name": "x"}).status_code == 404


def test_deleting_a_model_in_use_is_refused_with_the_features(
    api: Api, restore_features: None
) -> None:
    model = api.create_model()
    for feature in ("code_generations", "duo_chat"):
        assert (
            api.put(
                f"{FEATURES}/{feature}",
                {"provider": "self_hosted", "self_hosted_model_id": model["id"]},
            ).status_code
            == 200
        )
    response = api.delete(f"{MODELS}/{model['id']}")
    assert response.status_code == 409
    body = response.json()
    assert body["message"] == (
        f"409 Conflict - self-hosted model {model['name']!r} is used by the features "
        "code_generations, duo_chat; assign another model to them (or disable them) first, "
        "then delete it"
    )
    assert body["features"] == ["code_generations", "duo_chat"]
    assert sorted(api.get(f"{MODELS}/{model['id']}").json()["feature_settings"]) == [
        "code_generations",
        "duo_chat",
    ]


def test_delete_an_unused_model(api: Api) -> None:
    model = api.create_model()
    assert api.delete(f"{MODELS}/{model['id']}").status_code == 204
    gone = api.get(f"{MODELS}/{model['id']}")
    assert gone.status_code == 404
    assert (
        gone.json()["message"] == f"404 Not Found - self-hosted model {model['id']} does not exist"
    )


def test_family_change_must_suit_the_features_using_the_model(
    api: Api, restore_features: None
) -> None:
    model = api.create_model(model="codestral")
    api.put(
        f"{FEATURES}/code_completions",
        {"provider": "self_hosted", "self_hosted_model_id": model["id"]},
    )
    response = api.put(f"{MODELS}/{model['id']}", {"model": "gemini"})
    assert response.status_code == 400
    assert "Gemini is incompatible with the Code completions feature" in response.json()["message"]


# --- feature settings --------------------------------------------------------------------------


def test_feature_list_has_every_feature(api: Api) -> None:
    response = api.get(FEATURES, params={"per_page": 100})
    assert response.status_code == 200
    features = [f["feature"] for f in response.json()]
    assert features == [
        "code_completions",
        "code_generations",
        "duo_chat",
        "duo_chat_explain_code",
        "duo_chat_write_tests",
        "duo_chat_refactor_code",
        "duo_chat_fix_code",
        "duo_chat_troubleshoot_job",
        "explain_vulnerability",
        "resolve_vulnerability",
        "summarize_review",
        "summarize_new_merge_request",
        "generate_commit_message",
        "review_merge_request",
        "glab_ask_git_command",
    ]
    assert response.headers["x-total"] == "15"


def test_chat_sub_features_follow_duo_chat(api: Api, restore_features: None) -> None:
    model = api.create_model(model="llama3")
    api.put(
        f"{FEATURES}/duo_chat", {"provider": "self_hosted", "self_hosted_model_id": model["id"]}
    )
    view = api.get(f"{FEATURES}/duo_chat_explain_code").json()
    assert view["provider"] == "unassigned"
    assert view["inherited_from"] == "duo_chat"
    assert view["effective_provider"] == "self_hosted"
    assert view["effective_self_hosted_model"]["id"] == model["id"]
    assert view["main_feature"] == "duo_chat"
    # Its own setting wins.
    api.put(f"{FEATURES}/duo_chat_explain_code", {"provider": "disabled"})
    view = api.get(f"{FEATURES}/duo_chat_explain_code").json()
    assert (view["effective_provider"], view["inherited_from"]) == ("disabled", None)


INVALID_FEATURES: list[tuple[str, str, dict[str, Any], str]] = [
    (
        "gemini for completions",
        "code_completions",
        {"provider": "self_hosted", "self_hosted_model_id": "gemini-model"},
        "Gemini is incompatible with the Code completions feature (code_completions); compatible "
        "model families: claude_3, codegemma, codellama, codestral, deepseekcoder, general, gpt, "
        "llama3, mistral, mixtral, qwen",
    ),
    (
        "codellama for chat",
        "duo_chat",
        {"provider": "self_hosted", "self_hosted_model_id": "codellama-model"},
        "Code Llama is incompatible with the General chat feature (duo_chat)",
    ),
    (
        "unknown feature",
        "code_reviews",
        {"provider": "disabled"},
        "feature 'code_reviews' is unknown; use one of: code_completions, code_generations",
    ),
    (
        "self hosted without model",
        "duo_chat",
        {"provider": "self_hosted"},
        "self_hosted_model_id is missing: provider self_hosted needs the model to use",
    ),
    (
        "model with disabled",
        "duo_chat",
        {"provider": "disabled", "self_hosted_model_id": 1},
        "self_hosted_model_id is only allowed with provider self_hosted (got provider disabled)",
    ),
    (
        "unknown provider",
        "duo_chat",
        {"provider": "sometimes"},
        "provider 'sometimes' is unknown; use one of: disabled, vendored, self_hosted, unassigned",
    ),
    (
        "missing model",
        "duo_chat",
        {"provider": "self_hosted", "self_hosted_model_id": 424242},
        "no self-hosted model is named or numbered 424242",
    ),
]


@pytest.mark.parametrize(
    ("case", "feature", "body", "message"), INVALID_FEATURES, ids=[c[0] for c in INVALID_FEATURES]
)
def test_invalid_feature_settings_are_refused(
    api: Api, case: str, feature: str, body: dict[str, Any], message: str
) -> None:
    for name, family in (("gemini-model", "gemini"), ("codellama-model", "codellama")):
        if api.get(MODELS, params={"per_page": 100}).text.find(f'"{name}"') < 0:
            api.create_model(name=name, model=family)
    response = api.put(f"{FEATURES}/{feature}", body)
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith(f"400 Bad request - {message}")


def test_batch_update_is_all_or_nothing(api: Api, restore_features: None) -> None:
    model = api.create_model(model="codestral")
    before = api.get(f"{FEATURES}/code_generations").json()
    response = api.put(
        FEATURES,
        {
            "features": ["code_generations", "review_merge_request"],
            "provider": "self_hosted",
            "self_hosted_model_id": model["id"],
        },
    )
    assert response.status_code == 400  # codestral cannot review merge requests
    assert "Codestral is incompatible with the Code review feature" in response.json()["message"]
    assert api.get(f"{FEATURES}/code_generations").json() == before
    ok = api.put(
        FEATURES,
        {
            "features": ["code_generations"],
            "provider": "self_hosted",
            "self_hosted_model_id": model["name"],
        },
    )
    assert ok.status_code == 200
    assert ok.json()[0]["self_hosted_model"]["name"] == model["name"]


# --- it takes effect on the next request ---------------------------------------------------------


def test_mapping_takes_effect_on_the_next_completion(
    api: Api, instance: LiveInstance, fresh_gateway: FakeGateway, restore_features: None
) -> None:
    model = api.create_model(
        model="codestral",
        endpoint="http://10.9.9.9:8000/v1",
        identifier="custom_openai/codestral-22b",
        api_token=SECRET_KEY,
    )
    assert (
        api.put(
            f"{FEATURES}/code_completions",
            {"provider": "self_hosted", "self_hosted_model_id": model["id"]},
        ).status_code
        == 200
    )
    response = api.post("/api/v4/code_suggestions/completions", COMPLETION)
    assert response.status_code == 200, response.text
    forwarded = fresh_gateway.requests[-1].body
    assert forwarded["model_endpoint"] == "http://10.9.9.9:8000/v1"
    assert forwarded["model_identifier"] == "custom_openai/codestral-22b"
    assert forwarded["model_name"] == "codestral"
    assert forwarded["model_api_key"] == SECRET_KEY
    api.put(f"{FEATURES}/code_completions", {"provider": "disabled"})
    refused = api.post("/api/v4/code_suggestions/completions", COMPLETION)
    assert refused.status_code == 403
    assert "Code completions is disabled on this instance" in refused.json()["message"]


# --- AI settings -------------------------------------------------------------------------------


def test_settings_default_to_the_configuration(api: Api, instance: LiveInstance) -> None:
    response = api.get(SETTINGS)
    assert response.status_code == 200
    assert response.json() == {
        "ai_gateway_url": instance.settings.instance.gateway_url,
        "ai_gateway_timeout_seconds": 60.0,
        "enabled_instance_verbose_ai_logs": False,
        "ai_gateway_url_source": "configuration",
        "ai_gateway_timeout_source": "configuration",
        "vendored_ai_gateway_url": None,
        "vendored_ai_gateway_url_source": "configuration",
    }


INVALID_SETTINGS: list[tuple[dict[str, Any], str]] = [
    (
        {"ai_gateway_timeout_seconds": 30},
        "ai_gateway_timeout_seconds must be between 60 and 600 (got 30)",
    ),
    (
        {"ai_gateway_timeout_seconds": 601},
        "ai_gateway_timeout_seconds must be between 60 and 600 (got 601)",
    ),
    (
        {"ai_gateway_url": "gopher://gw.internal"},
        "ai_gateway_url must be an http:// or https:// URL (got scheme 'gopher'",
    ),
    ({"ai_gateway_url": "http://"}, "ai_gateway_url 'http://' has no host name"),
    ({"enabled_instance_verbose_ai_logs": "maybe"}, "enabled_instance_verbose_ai_logs is invalid"),
    ({"ai_gateway_timeout_seconds": "soon"}, "ai_gateway_timeout_seconds is invalid"),
    ({"model_timeout": 5}, "model_timeout is invalid"),
]


@pytest.mark.parametrize(("body", "message"), INVALID_SETTINGS)
def test_invalid_settings_are_refused(api: Api, body: dict[str, Any], message: str) -> None:
    response = api.put(SETTINGS, body)
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith(f"400 Bad request - {message}")


def test_settings_take_effect_on_the_next_request(
    api: Api, instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    try:
        changed = api.put(
            SETTINGS, {"ai_gateway_timeout_seconds": 120, "enabled_instance_verbose_ai_logs": True}
        )
        assert changed.status_code == 200
        assert changed.json()["ai_gateway_timeout_seconds"] == 120.0
        assert changed.json()["ai_gateway_timeout_source"] == "database"
        assert api.post("/api/v4/code_suggestions/completions", COMPLETION).status_code == 200
        headers = {k.lower(): v for k, v in fresh_gateway.requests[-1].headers.items()}
        assert headers["x-gitlab-enabled-instance-verbose-ai-logs"] == "true"
        # A gateway URL nobody listens on: the next completion goes there and fails.
        api.put(SETTINGS, {"ai_gateway_url": "http://127.0.0.1:9/"})
        failed = api.post("/api/v4/code_suggestions/completions", COMPLETION)
        assert failed.status_code == 502
        assert "http://127.0.0.1:9" in failed.json()["message"]
    finally:
        reset = api.put(
            SETTINGS,
            {
                "ai_gateway_url": None,
                "ai_gateway_timeout_seconds": None,
                "enabled_instance_verbose_ai_logs": False,
            },
        )
        assert reset.json()["ai_gateway_url_source"] == "configuration"
    assert api.post("/api/v4/code_suggestions/completions", COMPLETION).status_code == 200


# --- secrecy ----------------------------------------------------------------------------------


def _raw_database_dump(instance: LiveInstance) -> bytes:
    """Every value of every table, as the database stores it (plus the SQLite file itself)."""
    dump = b""
    url = instance.settings.database_url
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        for name in (path, f"{path}-wal"):  # recent writes may still be in the WAL
            if os.path.exists(name):
                with open(name, "rb") as handle:
                    dump += handle.read()
    with instance.ctx.engine.connect() as connection:
        for table in ("ai_self_hosted_models", "audit_events", "ai_settings"):
            for row in connection.execute(text(f"SELECT * FROM {table}")):  # noqa: S608
                for value in row:
                    dump += (
                        bytes(value)
                        if isinstance(value, bytes | memoryview)
                        else str(value).encode()
                    )
    return dump


def test_api_keys_are_encrypted_at_rest_and_never_shown(
    api: Api, instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    key = "enclkey-plaintext-must-not-leak-77777"
    new_key = "enclkey-rotated-must-not-leak-88888"
    seen: list[str] = []
    with structlog.testing.capture_logs() as logs:
        created = api.post(
            MODELS,
            {
                "name": "secret-holder",
                "model": "gpt",
                "endpoint": "http://10.0.0.7/v1",
                "identifier": "custom_openai/gpt-oss-20b",
                "api_token": key,
            },
        )
        seen.append(created.text)
        model_id = created.json()["id"]
        seen.append(api.put(f"{MODELS}/{model_id}", {"api_token": new_key}).text)
        seen.append(api.get(f"{MODELS}/{model_id}").text)
        seen.append(api.get(MODELS, params={"per_page": 100}).text)
        seen.append(api.post(f"{MODELS}/{model_id}/test").text)
        seen.append(api.get(f"{ADMIN}/audit_events", params={"per_page": 100}).text)
        seen.append(api.get("/api/v4/audit_events", params={"per_page": 100}).text)
        seen.append(
            api.post(MODELS, {"name": "secret-holder", "model": "gpt", "api_token": key}).text
        )
    for secret in (key, new_key):
        assert all(secret not in text_ for text_ in seen)
        assert secret not in repr(logs)
        assert secret.encode() not in _raw_database_dump(instance)
    with instance.ctx.sessions() as session:
        row = session.get(SelfHostedModel, model_id)
        assert row is not None and row.api_token_encrypted is not None
        assert new_key.encode() not in row.api_token_encrypted
        assert row.api_token_encrypted[0] == 1  # version byte of the AES-256-GCM envelope
        # Only the instance's secret key opens it.
        from enclave.instance.features import API_TOKEN_PURPOSE

        assert (
            instance.ctx.secret_box.decrypt(row.api_token_encrypted, API_TOKEN_PURPOSE) == new_key
        )


def test_changes_are_audited_with_author_and_without_secrets(
    api: Api, instance: LiveInstance
) -> None:
    model = api.create_model(api_token=SECRET_KEY)
    api.put(f"{MODELS}/{model['id']}", {"api_token": "enclkey-another-secret-value-1"})
    api.delete(f"{MODELS}/{model['id']}")
    events = api.get(f"{ADMIN}/audit_events", params={"per_page": 100}).json()
    mine = [e for e in events if e["target"] == f"ai_self_hosted_model/{model['id']}"]
    assert [e["event_name"] for e in mine] == [
        "self_hosted_model_destroyed",
        "self_hosted_model_updated",
        "self_hosted_model_created",
    ]
    assert all(e["author_name"] == "root" and e["author_id"] == 1 for e in mine)
    assert mine[1]["details"]["changed"] == ["api_token"]
    assert mine[2]["message"].startswith(f"Self-hosted model {model['name']} created")
    gitlab = api.get("/api/v4/audit_events", params={"event_name": "self_hosted_model_created"})
    assert gitlab.status_code == 200
    entry = next(e for e in gitlab.json() if e["details"]["target_id"] == model["id"])
    assert entry["entity_type"] == "Gitlab::Audit::InstanceScope"
    assert entry["details"]["target_type"] == "Ai::SelfHostedModel"
    assert entry["details"]["author_name"] == "root"
    assert SECRET_KEY not in gitlab.text
    with instance.ctx.sessions() as session:
        rows = session.scalars(select(AuditEvent)).all()
        assert all(SECRET_KEY not in repr(row.details) for row in rows)


def test_audit_filters(api: Api) -> None:
    response = api.get(f"{ADMIN}/audit_events", params={"created_after": "yesterday"})
    assert response.status_code == 400
    assert response.json()["message"].startswith("400 Bad request - created_after 'yesterday'")
    future = api.get(f"{ADMIN}/audit_events", params={"created_after": "2999-01-01"})
    assert future.status_code == 200 and future.json() == []
    assert future.headers["x-total"] == "0"


def test_openapi_documents_the_admin_api(instance: LiveInstance) -> None:
    document = httpx.get(f"{instance.url}/openapi.json", timeout=10).json()
    paths = document["paths"]
    for path in (
        MODELS,
        f"{MODELS}/{{model_id}}",
        f"{MODELS}/{{model_id}}/test",
        FEATURES,
        f"{FEATURES}/{{feature}}",
        SETTINGS,
        f"{ADMIN}/audit_events",
        "/api/v4/users",
        "/api/v4/users/{user_id}/personal_access_tokens",
        "/api/v4/personal_access_tokens/{token_ref}",
    ):
        assert path in paths, path
    schema = document["components"]["schemas"]["ModelCreate"]["properties"]
    assert "custom_openai/<served-name>" in schema["identifier"]["description"]
    assert schema["api_token"]["writeOnly"] is True
