"""Attacks through the model registry and the instance's error messages (issue 10, points 3, 4).

* An administrator (or a stolen admin session) registers or edits a model whose endpoint
  reaches the cloud metadata service, a link-local address, or a host outside the gateway's
  egress allow-list, directly or through a host name that resolves there: refused at save time
  with GitLab's 400, never saved.
* An edit moves a model with a stored API key to another host, so that the gateway would hand
  the key to it: refused unless the key is given again or ``keep_api_token`` confirms it, and
  audited with the old and the new endpoint (never the key).
* A non-admin user provokes model failures to read the model's endpoint, host, port or error
  text from the answer: they get one generic message with the request id; admins the cause.

Host names that resolve without a network: ``2852039166`` and ``0xa9fea9fe`` are numeric host
names the system resolver turns into 169.254.169.254 (the classic SSRF encodings), and
``134744072`` into 8.8.8.8.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from aiohttp import web
from sqlalchemy import func, select
from tests.unit.instance.admin_helpers import ADMIN, Api
from tests.unit.instance.conftest import Backend, FakeGateway, LiveInstance, make_settings
from typer.testing import CliRunner

from enclave import admin_cli
from enclave.cli import app
from enclave.common.netrules import EgressPolicy
from enclave.instance import registry
from enclave.instance.admin_errors import InvalidInputError
from enclave.instance.db import AuditEvent, SelfHostedModel

MODELS = f"{ADMIN}/self_hosted_models"
KEY = "enclkey-registry-attack-model-key-0123456789"
NEW_KEY = "enclkey-registry-attack-new-key-9876543210"

METADATA_ENDPOINTS = [
    "http://169.254.169.254/v1",
    "http://169.254.10.20:8000/v1",
    "http://[fe80::1]:8000/v1",
    "http://100.100.100.200/v1",
    "http://2852039166/v1",  # a host name resolving to 169.254.169.254
    "http://0xa9fea9fe:8000/v1",  # the same, in hexadecimal
]
OUTSIDE_ALLOW_LIST = [
    "http://8.8.8.8:8000/v1",
    "https://203.0.113.7/v1",
    "http://[2001:db8::5]:8000/v1",
    "http://134744072:8000/v1",  # a host name resolving to 8.8.8.8
]


@pytest.fixture()
def api(instance: LiveInstance) -> Api:
    return Api(instance)


def model_count(instance: LiveInstance) -> int:
    with instance.ctx.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(SelfHostedModel)) or 0)


def last_update_event(instance: LiveInstance, model_id: int) -> dict[str, Any]:
    with instance.ctx.sessions() as session:
        event = session.scalars(
            select(AuditEvent)
            .where(
                AuditEvent.action == "self_hosted_model_updated",
                AuditEvent.target == f"ai_self_hosted_model/{model_id}",
            )
            .order_by(AuditEvent.id.desc())
        ).first()
        assert event is not None
        return dict(event.details)


def refused(response: httpx.Response, *words: str) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    message = str(body["message"])
    assert message.startswith("400 Bad request - ")
    assert "endpoint" in body["errors"]
    for word in words:
        assert word in message, message
    return message


# -- registration: the gateway's address rules at save time -----------------------------------


@pytest.mark.parametrize("endpoint", METADATA_ENDPOINTS)
def test_metadata_and_link_local_endpoints_are_refused_at_create(
    api: Api, instance: LiveInstance, endpoint: str
) -> None:
    before = model_count(instance)
    response = api.post(
        MODELS,
        {"name": "ssrf", "model": "mistral", "endpoint": endpoint, "identifier": "custom_openai/m"},
    )
    refused(response, "link-local or cloud metadata", "model server's own address")
    assert model_count(instance) == before


@pytest.mark.parametrize("endpoint", METADATA_ENDPOINTS)
def test_metadata_and_link_local_endpoints_are_refused_at_update(
    api: Api, instance: LiveInstance, endpoint: str
) -> None:
    model = api.create_model()
    refused(
        api.put(f"{MODELS}/{model['id']}", {"endpoint": endpoint, "api_token": NEW_KEY}),
        "link-local or cloud metadata",
    )
    assert api.get(f"{MODELS}/{model['id']}").json()["endpoint"] == model["endpoint"]


@pytest.mark.parametrize("endpoint", OUTSIDE_ALLOW_LIST)
def test_endpoints_outside_the_egress_allow_list_are_refused(
    api: Api, instance: LiveInstance, endpoint: str
) -> None:
    before = model_count(instance)
    body = {"name": "outside", "model": "mistral", "endpoint": endpoint}
    body["identifier"] = "custom_openai/m"
    message = refused(api.post(MODELS, body), "outside the model egress allow-list")
    assert "ENCLAVE_INSTANCE__MODEL_EGRESS_ALLOW" in message
    assert "ENCLAVE_GATEWAY__MODEL_EGRESS_ALLOW" in message
    assert model_count(instance) == before
    model = api.create_model()
    refused(api.put(f"{MODELS}/{model['id']}", {"endpoint": endpoint, "keep_api_token": True}))
    # "Test connection" of an unsaved definition applies the same rules before calling anything.
    refused(api.post(f"{MODELS}/test", body), "outside the model egress allow-list")


def test_allowed_endpoints_still_save(api: Api) -> None:
    for endpoint in (
        "http://10.1.2.3:8000/v1",
        "http://127.0.0.1:11434/v1",
        "http://localhost:8000/v1",
        "http://[fd12::5]:8000/v1",
        "http://vllm.does-not-resolve.internal:8000/v1",  # checked again by the gateway
    ):
        assert api.create_model(endpoint=endpoint)["endpoint"] == endpoint


def test_the_instance_allow_list_setting_is_what_is_applied() -> None:
    rules = registry.EndpointRules(EgressPolicy.parse(["203.0.113.0/24", "models.example"]))
    rules.check("https://203.0.113.7/v1")
    rules.check("https://models.example/v1")  # allowed by name: not even resolved
    for endpoint in ("http://10.1.2.3:8000/v1", "http://2852039166/v1"):
        with pytest.raises(InvalidInputError):
            rules.check(endpoint)
    with pytest.raises(InvalidInputError, match="allow-list is empty"):
        registry.EndpointRules(EgressPolicy.parse([])).check("http://10.1.2.3/v1")


# -- moving a keyed model to another host ------------------------------------------------------


def test_endpoint_change_to_another_host_needs_the_key(api: Api, instance: LiveInstance) -> None:
    model = api.create_model(endpoint="http://10.0.0.5:8000/v1", api_token=KEY)
    path = f"{MODELS}/{model['id']}"
    for moved in ("http://10.6.6.6:8000/v1", "http://10.0.0.5:9000/v1", "https://10.0.0.5:8000/v1"):
        response = api.put(path, {"endpoint": moved})
        assert response.status_code == 400, response.text
        body = response.json()
        assert "api_token" in body["errors"]
        assert "keep_api_token" in body["message"] and "another host" in body["message"]
        assert KEY not in response.text
    assert api.get(path).json()["endpoint"] == "http://10.0.0.5:8000/v1"

    # Same host, another path: the key goes where it went before.
    assert api.put(path, {"endpoint": "http://10.0.0.5:8000/openai/v1"}).status_code == 200

    # The key again: accepted and audited with both endpoints.
    response = api.put(path, {"endpoint": "http://10.6.6.6:8000/v1", "api_token": NEW_KEY})
    assert response.status_code == 200, response.text
    event = last_update_event(instance, model["id"])
    assert event["previous_endpoint"] == "http://10.0.0.5:8000/openai/v1"
    assert event["endpoint"] == "http://10.6.6.6:8000/v1"
    assert event["key_on_move"] == "replaced"

    # Or an explicit confirmation.
    response = api.put(path, {"endpoint": "http://10.7.7.7:8000/v1", "keep_api_token": True})
    assert response.status_code == 200, response.text
    assert response.json()["has_api_token"] is True
    event = last_update_event(instance, model["id"])
    assert (event["previous_endpoint"], event["endpoint"], event["key_on_move"]) == (
        "http://10.6.6.6:8000/v1",
        "http://10.7.7.7:8000/v1",
        "kept",
    )
    audit = api.get(f"{ADMIN}/audit_events", params={"event_name": "self_hosted_model_updated"})
    assert KEY not in audit.text and NEW_KEY not in audit.text
    assert api.put(path, {"keep_api_token": "maybe"}).status_code == 400


def test_a_model_without_a_key_moves_freely(api: Api) -> None:
    model = api.create_model(endpoint="http://10.0.0.5:8000/v1")
    response = api.put(f"{MODELS}/{model['id']}", {"endpoint": "http://10.8.8.8:8000/v1"})
    assert response.status_code == 200, response.text


def test_cli_update_needs_the_key_or_keep_api_key(
    tmp_path: Path, db_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path / "data")
    monkeypatch.setattr(admin_cli, "_configure_logging", lambda: None)
    monkeypatch.setenv("ENCLAVE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("COLUMNS", "250")
    if settings.instance.database_url:
        monkeypatch.setenv("ENCLAVE_DATABASE_URL", settings.instance.database_url)
    runner = CliRunner()
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY + "\n")

    def cli(*args: str) -> Any:
        with structlog.testing.capture_logs() as logs:
            result = runner.invoke(app, list(args), catch_exceptions=False)
        assert KEY not in repr(logs) and KEY not in result.output
        return result

    added = cli(
        "models", "add", "--name", "m", "--family", "mistral", "--identifier", "custom_openai/m",
        "--endpoint", "http://10.0.0.5:8000/v1", "--api-key-file", str(key_file),
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    ssrf = cli("models", "add", "--name", "x", "--family", "mistral", "--identifier",
               "custom_openai/m", "--endpoint", "http://2852039166/v1")  # fmt: skip
    assert ssrf.exit_code == 1 and "cloud metadata" in ssrf.stderr
    moved = cli("models", "update", "m", "--endpoint", "http://10.6.6.6:8000/v1")
    assert moved.exit_code == 1
    assert "--keep-api-key" in moved.stderr and "--api-key-file" in moved.stderr
    kept = cli("models", "update", "m", "--endpoint", "http://10.6.6.6:8000/v1", "--keep-api-key",
               "--json")  # fmt: skip
    assert kept.exit_code == 0, kept.output
    assert json.loads(kept.stdout)["endpoint"] == "http://10.6.6.6:8000/v1"


# -- generic model errors for non-admins --------------------------------------------------------

MODEL_FAILURE = (
    "Cannot connect to the model server of 'code_completions' (http://10.9.9.9:8471/v1: "
    "connection refused); upstream said: vllm internal error at gpu-node-17"
)
LEAKS = ("10.9.9.9", "8471", "gpu-node-17", "connection refused", "upstream")


@pytest.fixture()
def failing_gateway(gateway: FakeGateway) -> Iterator[FakeGateway]:
    async def fail(request: web.Request, fake: FakeGateway) -> web.StreamResponse:
        return web.json_response({"detail": MODEL_FAILURE}, status=503)

    gateway.reset(fail)
    yield gateway
    gateway.reset()


CALLS = [
    (
        "/api/v4/code_suggestions/completions",
        {"current_file": {"file_name": "a.py", "content_above_cursor": "def f():\n    "}},
        503,
        None,
    ),
    ("/api/v4/chat/completions", {"content": "what is a closure?"}, 502, "A1003"),
    ("/api/v4/ai/write_tests", {"code": "def f(): pass"}, 502, None),
]


@pytest.mark.parametrize(("path", "body", "status", "code"), CALLS)
def test_model_errors_are_generic_for_non_admins(
    instance: LiveInstance,
    failing_gateway: FakeGateway,
    path: str,
    body: dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    user = Api(instance, instance.new_token(("ai_features",)))
    response = user.post(path, body)
    assert response.status_code == status, response.text
    message = response.json()["message"]
    request_id = response.headers["x-request-id"]
    assert "not available right now" in message and request_id in message
    for leak in LEAKS:
        assert leak not in response.text, leak
    if code is not None:
        assert response.json()["error_code"] == code and message.endswith(f"Error code: {code}")

    admin = Api(instance).post(path, body)  # code suggestions: the gateway's body, as it came
    assert admin.status_code == status
    assert "10.9.9.9:8471" in admin.text and "not available right now" not in admin.text


def test_the_precise_cause_goes_to_the_log(
    instance: LiveInstance, failing_gateway: FakeGateway
) -> None:
    user = Api(instance, instance.new_token(("ai_features",)))
    with structlog.testing.capture_logs() as logs:
        response = user.post(*CALLS[0][:2])
    assert response.status_code == 503
    causes = [entry for entry in logs if entry["event"] == "model_request_failed"]
    assert causes and "10.9.9.9:8471" in causes[0]["cause"]
