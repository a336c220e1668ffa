"""Issue 11: a feature's optional fallback model, set through the admin API and tried once when
the primary model fails before anything reached the client (code suggestions, chat and the
``/api/v4/ai/<feature>`` endpoints share the forwarding path)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from aiohttp import web
from sqlalchemy import select

from enclave.instance.bootstrap import EMBEDDED_MODEL_NAME
from enclave.instance.db import AuditEvent, FeatureSetting, SelfHostedModel
from tests.unit.instance.admin_helpers import ADMIN, Api
from tests.unit.instance.conftest import (
    COMPLETION_RESPONSE,
    EMBEDDED_ENDPOINT,
    MODEL_API_KEY,
    FakeGateway,
    Handler,
    LiveInstance,
)

FEATURES = f"{ADMIN}/feature_settings"
MODELS = f"{ADMIN}/self_hosted_models"
FALLBACK_ENDPOINT = "http://10.0.0.9:8000/v1"
COMPLETIONS = "/api/v4/code_suggestions/completions"
CHAT = "/api/v4/chat/completions"
COMMIT_MESSAGE = "/api/v4/ai/generate_commit_message"
COMPLETION_BODY: dict[str, Any] = {
    "current_file": {
        "file_name": "app/calc.py",
        "content_above_cursor": "def add(a, b):\n    ",
        "content_below_cursor": "\n",
    },
    "intent": "completion",
}
USED = ("code_completions", "duo_chat", "generate_commit_message")


@pytest.fixture()
def api(instance: LiveInstance) -> Api:
    return Api(instance)


def _embedded_id(instance: LiveInstance) -> int:
    with instance.ctx.sessions() as session:
        return session.scalars(
            select(SelfHostedModel.id).where(SelfHostedModel.name == EMBEDDED_MODEL_NAME)
        ).one()


@pytest.fixture()
def fallback(api: Api, instance: LiveInstance) -> Iterator[dict[str, Any]]:
    """A "general" model set as the fallback of the features the tests call; removed after."""
    model = api.create_model(model="general", endpoint=FALLBACK_ENDPOINT)
    primary = _embedded_id(instance)
    for feature in USED:
        response = api.put(
            f"{FEATURES}/{feature}",
            {
                "provider": "self_hosted",
                "self_hosted_model_id": primary,
                "fallback_model_id": model["id"],
            },
        )
        assert response.status_code == 200, response.text
    yield model
    for feature in USED:
        api.put(
            f"{FEATURES}/{feature}",
            {"provider": "self_hosted", "self_hosted_model_id": primary, "fallback_model_id": None},
        )
    assert api.delete(f"{MODELS}/{model['id']}").status_code == 204


def _sent_to(recorded_body: dict[str, Any]) -> str:
    text = json.dumps(recorded_body)
    if FALLBACK_ENDPOINT in text:
        return "fallback"
    assert EMBEDDED_ENDPOINT in text, text
    return "primary"


def primary_fails(status: int, body: dict[str, Any], ok: Handler | None = None) -> Handler:
    """The primary model's requests get ``status``/``body``; the fallback's ``ok``."""

    async def handler(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
        if _sent_to(gateway.requests[-1].body) == "primary":
            return web.json_response(body, status=status)
        if ok is not None:
            return await ok(request, gateway)
        return web.json_response(COMPLETION_RESPONSE)

    return handler


INFERENCE_FAILED = {"detail": f"Inference failed: connection refused (key {MODEL_API_KEY})"}


def test_primary_model_failure_is_answered_by_the_fallback(
    api: Api, fallback: dict[str, Any], fresh_gateway: FakeGateway
) -> None:
    fresh_gateway.handler = primary_fails(503, INFERENCE_FAILED)
    with structlog.testing.capture_logs() as logs:
        response = api.post(COMPLETIONS, COMPLETION_BODY)
    assert response.status_code == 200, response.text
    assert response.json() == COMPLETION_RESPONSE
    assert [_sent_to(r.body) for r in fresh_gateway.requests] == ["primary", "fallback"]
    first, second = fresh_gateway.requests
    assert first.path == second.path
    assert first.headers["X-Gitlab-Instance-Id"] == second.headers["X-Gitlab-Instance-Id"]
    [used] = [e for e in logs if e["event"] == "model_fallback_used"]
    assert used["feature"] == "code_completions"
    assert (used["model"], used["fallback_model"]) == (EMBEDDED_MODEL_NAME, fallback["name"])
    assert MODEL_API_KEY not in json.dumps(logs, default=str)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (502, INFERENCE_FAILED),
        (429, {"detail": "Inference failed: rate limited"}),
        (421, {"detail": "404 model not found"}),
    ],
)
def test_every_model_failure_signal_falls_back(
    api: Api,
    fallback: dict[str, Any],
    fresh_gateway: FakeGateway,
    status: int,
    body: dict[str, Any],
) -> None:
    fresh_gateway.handler = primary_fails(status, body)
    response = api.post(COMPLETIONS, COMPLETION_BODY)
    assert response.status_code == 200, response.text
    assert len(fresh_gateway.requests) == 2


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, {"detail": "Forbidden by auth provider"}),
        (403, {"detail": "Unauthorized to access code suggestions"}),
        (422, {"detail": [{"loc": ["body"], "msg": "bad"}]}),
        (429, {"detail": "Rate limit exceeded"}),  # the gateway's own limit, not the model's
        (503, {"detail": "The token verification keys are unavailable"}),
    ],
)
def test_non_model_failures_are_not_retried(
    api: Api,
    fallback: dict[str, Any],
    fresh_gateway: FakeGateway,
    status: int,
    body: dict[str, Any],
) -> None:
    fresh_gateway.handler = primary_fails(status, body)
    response = api.post(COMPLETIONS, COMPLETION_BODY)
    assert response.status_code == status
    assert len(fresh_gateway.requests) == 1


def test_without_a_fallback_the_primary_failure_is_relayed(
    api: Api, fresh_gateway: FakeGateway
) -> None:
    fresh_gateway.handler = primary_fails(503, INFERENCE_FAILED)
    response = api.post(COMPLETIONS, COMPLETION_BODY)
    assert response.status_code == 503
    assert "Inference failed" in response.text  # (administrators see the gateway's body)
    assert len(fresh_gateway.requests) == 1


def test_a_failing_fallback_is_relayed_and_not_retried_again(
    api: Api, fallback: dict[str, Any], fresh_gateway: FakeGateway
) -> None:
    async def also_fails(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
        return web.json_response({"detail": "Inference failed: fallback down"}, status=503)

    fresh_gateway.handler = primary_fails(503, INFERENCE_FAILED, also_fails)
    response = api.post(COMPLETIONS, COMPLETION_BODY)
    assert response.status_code == 503
    assert "fallback down" in response.text
    assert len(fresh_gateway.requests) == 2


async def _stream(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    for part in (b"return ", b"a + b"):
        await response.write(part)
    await response.write_eof()
    return response


def test_a_stream_failing_before_its_first_byte_falls_back(
    api: Api, fallback: dict[str, Any], fresh_gateway: FakeGateway
) -> None:
    fresh_gateway.handler = primary_fails(503, INFERENCE_FAILED, _stream)
    response = api.post(COMPLETIONS, {**COMPLETION_BODY, "stream": True})
    assert response.status_code == 200, response.text
    assert response.content == b"return a + b"
    assert [_sent_to(r.body) for r in fresh_gateway.requests] == ["primary", "fallback"]
    assert all(r.body["stream"] is True for r in fresh_gateway.requests)


def test_chat_falls_back(api: Api, fallback: dict[str, Any], fresh_gateway: FakeGateway) -> None:
    async def answer(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
        return web.json_response({"response": "Use a list comprehension."})

    fresh_gateway.handler = primary_fails(503, INFERENCE_FAILED, answer)
    response = api.post(CHAT, {"content": "How do I flatten a list?"})
    assert response.status_code == 200, response.text
    assert response.json() == "Use a list comprehension."
    assert [_sent_to(r.body) for r in fresh_gateway.requests] == ["primary", "fallback"]


def test_ai_feature_endpoint_falls_back(
    api: Api, fallback: dict[str, Any], fresh_gateway: FakeGateway
) -> None:
    async def answer(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
        return web.json_response("Add x")

    fresh_gateway.handler = primary_fails(421, {"detail": "model failed"}, answer)
    response = api.post(COMMIT_MESSAGE, {"diff": "+x = 1\n"})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == fallback["name"]
    assert [_sent_to(r.body) for r in fresh_gateway.requests] == ["primary", "fallback"]


def test_fallback_is_shown_audited_and_guards_deletion(
    api: Api, instance: LiveInstance, fallback: dict[str, Any]
) -> None:
    view = api.get(f"{FEATURES}/duo_chat").json()
    assert view["fallback_model"] == {
        "id": fallback["id"],
        "name": fallback["name"],
        "model": "general",
    }
    inherited = api.get(f"{FEATURES}/duo_chat_fix_code").json()
    assert inherited["effective_fallback_model"]["name"] == fallback["name"]
    with instance.ctx.sessions() as session:
        event = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.target == "ai_feature_setting/duo_chat")
            .order_by(AuditEvent.id.desc())
        ).first()
        assert event is not None and event.details["fallback_model"] == fallback["name"]
    family = api.put(f"{MODELS}/{fallback['id']}", {"model": "codegemma"})
    assert family.status_code == 400
    assert "CodeGemma is incompatible with the" in family.json()["message"]
    refused = api.delete(f"{MODELS}/{fallback['id']}")
    assert refused.status_code == 409
    assert "code_completions (as its fallback model)" in refused.json()["message"]
    # Leaving fallback_model_id out keeps it; a different provider drops it.
    kept = api.put(
        f"{FEATURES}/duo_chat",
        {"provider": "self_hosted", "self_hosted_model_id": _embedded_id(instance)},
    )
    assert kept.json()["fallback_model"]["id"] == fallback["id"]


def test_fallback_validation(api: Api, instance: LiveInstance) -> None:
    primary = _embedded_id(instance)
    gemma = api.create_model(model="codegemma")

    def put(body: dict[str, Any]) -> httpx.Response:
        return api.put(f"{FEATURES}/duo_chat", {"provider": "self_hosted", **body})

    same = put({"self_hosted_model_id": primary, "fallback_model_id": primary})
    assert same.status_code == 400
    assert "names the primary model" in same.json()["message"]
    incompatible = put({"self_hosted_model_id": primary, "fallback_model_id": gemma["id"]})
    assert incompatible.status_code == 400
    assert "fallback model: CodeGemma is incompatible with the" in incompatible.json()["message"]
    missing = put({"self_hosted_model_id": primary, "fallback_model_id": 99999})
    assert missing.status_code == 400
    assert "no self-hosted model is named or numbered 99999" in missing.json()["message"]
    huge = put({"self_hosted_model_id": primary, "fallback_model_id": 2**70})
    assert huge.status_code == 400 and "fallback_model_id" in huge.json()["errors"]
    disabled = api.put(
        f"{FEATURES}/duo_chat", {"provider": "disabled", "fallback_model_id": gemma["id"]}
    )
    assert disabled.status_code == 400
    assert "fallback_model_id is only allowed with provider self_hosted" in disabled.text
    with instance.ctx.sessions() as session:
        row = session.scalars(
            select(FeatureSetting).where(FeatureSetting.feature == "duo_chat")
        ).one()
        assert (row.provider, row.fallback_model_id) == ("self_hosted", None)
    assert api.delete(f"{MODELS}/{gemma['id']}").status_code == 204


def test_a_stream_failing_after_its_first_byte_is_not_retried(
    api: Api, fallback: dict[str, Any], fresh_gateway: FakeGateway
) -> None:
    error = b'event: error\ndata: {"message": "Inference failed: x"}\n\n'

    async def breaks(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Streaming-Format": "sse"}
        )
        await response.prepare(request)
        await response.write(b"event: stream_start\ndata: {}\n\n")
        await response.write(error)
        await response.write_eof()
        return response

    fresh_gateway.handler = breaks
    response = api.post(COMPLETIONS, {**COMPLETION_BODY, "stream": True})
    assert response.status_code == 200
    assert response.content.endswith(error)
    assert len(fresh_gateway.requests) == 1
