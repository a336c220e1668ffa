"""Attack suite: who chooses where the gateway connects, and what a failure tells the caller.

A user's direct-access token (signed by the gateway for one user) must never choose the model
endpoint, key, identifier or provider: the gateway takes the administrator's model for the
feature from the instance's routes. The instance's own tokens name the model in the body (the
administrator's configuration) but still under the instance's URL rules. A user never learns
why a model call failed (no map of the network), and no error ever echoes a secret.

Each refused case asserts the exact status and that neither the fake model server nor the
"internal" service beside it received anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog
from aiohttp import web
from gateway_fakes import (
    MODEL_API_KEY,
    ROUTE_IDENTIFIER,
    ROUTE_MODEL_KEY,
    Harness,
    HarnessFactory,
)

from enclave.common.net import free_port
from enclave.gateway.user_access import ADMIN_CHOOSES_MODEL, USER_ONLY_COMPLETIONS

pytestmark = pytest.mark.anyio

GENERIC_START = "The AI model is unavailable."
SECRET = "plain-secret-value-not-shaped-like-a-key"


class Internal:
    """Something inside the network the attacker would like the gateway to call."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.Response:
        self.hits.append(str(request.rel_url))
        return web.json_response({"choices": [{"text": "internal secret"}]})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def internal() -> AsyncIterator[Internal]:
    service = Internal()
    await service.start()
    yield service
    await service.stop()


def v4_body(gw: Harness, **payload: Any) -> dict[str, Any]:
    """A /v4/code/suggestions completion with the v2 body's file and ``payload`` fields."""
    current = gw.body()["current_file"]
    return {
        "prompt_components": [
            {
                "type": "code_editor_completion",
                "payload": {
                    "file_name": current["file_name"],
                    "content_above_cursor": current["content_above_cursor"],
                    "content_below_cursor": current["content_below_cursor"],
                    "language_identifier": "python",
                    **payload,
                },
            }
        ]
    }


PATHS = ["/v2/code/completions", "/v2/completions", "/v4/code/suggestions"]


async def post_user(
    gw: Harness, path: str, headers: dict[str, str], **fields: Any
) -> httpx.Response:
    """A user's direct-access request to ``path`` naming ``fields`` (model fields, stream)."""
    body = v4_body(gw, **fields) if path.startswith("/v4") else gw.user_body(**fields)
    return await gw.client.post(path, json=body, headers=headers)


def nothing_called(gw: Harness, internal: Internal | None = None) -> None:
    assert gw.model.requests == [], "the attack reached the model server"
    if internal is not None:
        assert internal.hits == [], "the attack reached the internal service"


# -- a user token never chooses the model ---------------------------------------------------

# name -> the model fields the attacker's body carries ({port}: the internal service's port)
NAMED_MODELS: dict[str, dict[str, str]] = {
    "question_mark_swallows_the_path": {
        "model_endpoint": "http://127.0.0.1:{port}/internal/secret?x=",
        "model_api_key": "attacker-bearer",
    },
    "fragment_swallows_the_path": {"model_endpoint": "http://127.0.0.1:{port}/internal#"},
    "user_info_in_the_endpoint": {"model_endpoint": "http://admin:hunter2@127.0.0.1:{port}/v1"},
    "loopback_other_port": {"model_endpoint": "http://127.0.0.1:{port}/v1"},
    "localhost_name": {"model_endpoint": "http://localhost:{port}/v1"},
    "loopback_decimal_form": {"model_endpoint": "http://2130706433:{port}/v1"},
    "ipv6_loopback": {"model_endpoint": "http://[::1]:{port}/v1"},
    "ipv4_mapped_ipv6_loopback": {"model_endpoint": "http://[::ffff:127.0.0.1]:{port}/v1"},
    "private_range": {"model_endpoint": "http://10.0.0.5:8000/v1"},
    "cloud_metadata": {"model_endpoint": "http://169.254.169.254/latest/meta-data"},
    "cloud_metadata_ipv6": {"model_endpoint": "http://[fd00:ec2::254]/latest"},
    "other_scheme": {"model_endpoint": "gopher://127.0.0.1:{port}/_INFO"},
    "same_server_other_path": {"model_endpoint": "{model}/../admin"},
    "different_key_only": {"model_api_key": "attacker-chosen-key"},
    "the_routes_endpoint_with_another_key": {
        "model_endpoint": "{model_endpoint}",
        "model_api_key": "attacker-chosen-key",
    },
    "different_identifier_only": {"model_identifier": "custom_openai/another-served-model"},
    "text_completion_identifier": {"model_identifier": "text-completion-openai/admin-served-model"},
    "other_identifier_provider": {"model_identifier": "bedrock/anthropic.claude"},
    "other_provider_only": {"model_provider": "anthropic"},
}


def fill(fields: dict[str, str], gw: Harness, internal: Internal) -> dict[str, str]:
    """The fields, completed as a working attack would be: with the administrator's own
    identifier, so that only the endpoint (or key) differs from the administrator's model."""
    filled = {
        name: value.format(
            port=internal.port, model=gw.model.base, model_endpoint=gw.model.endpoint
        )
        for name, value in fields.items()
    }
    if "model_endpoint" in filled:
        filled.setdefault("model_identifier", ROUTE_IDENTIFIER)
    return filled


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fields", list(NAMED_MODELS.values()), ids=list(NAMED_MODELS))
async def test_user_token_naming_a_model_is_403(
    gw: Harness, internal: Internal, path: str, fields: dict[str, str]
) -> None:
    token = await gw.user_token()
    response = await post_user(gw, path, gw.user_headers(token), **fill(fields, gw, internal))
    assert response.status_code == 403, response.text
    assert response.json() == {"detail": ADMIN_CHOOSES_MODEL}
    assert "hunter2" not in response.text
    nothing_called(gw, internal)


@pytest.mark.parametrize("path", PATHS)
async def test_user_token_naming_a_model_while_streaming_is_403(
    gw: Harness, internal: Internal, path: str
) -> None:
    token = await gw.user_token()
    response = await post_user(
        gw,
        path,
        gw.user_headers(token),
        stream=True,
        model_endpoint=f"http://127.0.0.1:{internal.port}/internal/secret?x=",
        model_identifier=ROUTE_IDENTIFIER,
    )
    assert response.status_code == 403, response.text
    assert response.json() == {"detail": ADMIN_CHOOSES_MODEL}
    nothing_called(gw, internal)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("stream", [False, True])
async def test_user_token_is_served_by_the_routes_model_and_key(
    gw: Harness, path: str, stream: bool
) -> None:
    token = await gw.user_token()
    response = await post_user(gw, path, gw.user_headers(token), stream=stream)
    assert response.status_code == 200, response.text
    [call] = gw.model.requests
    assert call.headers["Authorization"] == f"Bearer {ROUTE_MODEL_KEY}"  # the route's key
    assert MODEL_API_KEY not in str(call.headers)
    assert call.json["model"] == ROUTE_IDENTIFIER.removeprefix("custom_openai/")


async def test_user_token_is_refused_while_routes_are_down_model_named_or_not(
    gw: Harness, internal: Internal
) -> None:
    # Past the stale window the gateway knows neither the admin's model nor the revocations:
    # every user token fails closed (503) before its body is even looked at.
    gw.issuer.routes_status = 500
    gw.clock.advance(10_000)  # the last routes are past their stale window
    token = await gw.user_token()
    endpoint = f"http://127.0.0.1:{internal.port}/v1"
    for fields in ({"model_endpoint": endpoint}, {}):
        response = await post_user(gw, PATHS[0], gw.user_headers(token), **fields)
        assert response.status_code == 503
        assert "cannot check whether this token was revoked" in response.json()["error"]
    nothing_called(gw, internal)


@pytest.mark.parametrize("named", [False, True])
async def test_user_token_on_a_shared_gateway_never_uses_the_body(
    make_harness: HarnessFactory, internal: Internal, named: bool
) -> None:
    # A gateway trusting several instances has no one routes table: nothing to serve from.
    gw: Harness = await make_harness(trusted_issuers=[{"url": "https://other.example"}])
    token = await gw.user_token()
    fields = {"model_endpoint": gw.model.endpoint, "model_api_key": MODEL_API_KEY} if named else {}
    response = await post_user(gw, PATHS[0], gw.user_headers(token), **fields)
    assert response.status_code == (403 if named else 503), response.text
    if named:
        assert response.json() == {"detail": ADMIN_CHOOSES_MODEL}
    else:
        assert response.json()["detail"].startswith("Direct access is not available")
    nothing_called(gw, internal)


# -- surfaces that take the model from the body refuse user tokens --------------------------


def _prompt_check(gw: Harness, internal: Internal) -> tuple[str, dict[str, Any]]:
    # "Test connection" needs complete_code, the one scope a user token has.
    return "/v1/prompts/model_configuration%2Fcheck", {
        "inputs": {},
        "model_metadata": {
            "provider": "openai",
            "name": "codestral",
            "endpoint": f"http://127.0.0.1:{internal.port}/v1",
            "api_key": "attacker-bearer",
            "identifier": "custom_openai/x",
        },
    }


def _chat(gw: Harness, internal: Internal) -> tuple[str, dict[str, Any]]:
    return "/v1/chat/agent", {
        "prompt_components": [
            {
                "type": "prompt",
                "metadata": {"source": "x", "version": "1"},
                "payload": {
                    "content": "hi",
                    "provider": "litellm",
                    "model": "codestral",
                    "model_endpoint": f"http://127.0.0.1:{internal.port}/v1",
                },
            }
        ]
    }


def _agent(gw: Harness, internal: Internal) -> tuple[str, dict[str, Any]]:
    return "/v2/chat/agent", {
        "messages": [{"role": "user", "content": "hi"}],
        "model_metadata": {
            "provider": "openai",
            "name": "codestral",
            "endpoint": f"http://127.0.0.1:{internal.port}/v1",
        },
    }


@pytest.mark.parametrize("build", [_prompt_check, _chat, _agent], ids=["prompts", "chat", "agent"])
async def test_user_token_on_an_instance_only_surface_is_403(
    gw: Harness, internal: Internal, build: Any
) -> None:
    token = await gw.user_token()
    path, body = build(gw, internal)
    response = await gw.client.post(path, json=body, headers=gw.user_headers(token))
    assert response.status_code == 403, response.text
    assert response.json() == {"detail": USER_ONLY_COMPLETIONS}
    nothing_called(gw, internal)


async def test_user_token_on_generations_is_403(gw: Harness, internal: Internal) -> None:
    token = await gw.user_token()
    body = gw.user_body(model_endpoint=f"http://127.0.0.1:{internal.port}/v1")
    response = await gw.client.post(
        "/v2/code/generations", json=body, headers=gw.user_headers(token)
    )
    assert response.status_code == 403
    assert response.json() == {"detail": "Unauthorized to access code generations"}
    nothing_called(gw, internal)


# -- endpoint URLs: the instance's rules, 422, never echoed ---------------------------------

CREDENTIAL_URLS = {
    "password": "http://admin:hunter2@127.0.0.1:{port}/v1",
    "user_only": "http://hunter2@127.0.0.1:{port}/v1",
    "query_key": "http://127.0.0.1:{port}/v1?api_key=hunter2",
    "fragment": "http://127.0.0.1:{port}/v1#hunter2",
    "encoded_at": "http://admin%40x:hunter2@127.0.0.1:{port}/v1",
}


@pytest.mark.parametrize("url", list(CREDENTIAL_URLS.values()), ids=list(CREDENTIAL_URLS))
async def test_instance_token_credentials_in_the_url_are_422(
    gw: Harness, internal: Internal, url: str
) -> None:
    response = await gw.complete(gw.body(model_endpoint=url.format(port=internal.port)))
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "model_endpoint"]
    assert "hunter2" not in response.text
    nothing_called(gw, internal)


async def test_instance_token_credentials_in_a_v4_url_are_422(
    gw: Harness, internal: Internal
) -> None:
    body = v4_body(
        gw,
        model_provider="litellm",
        model_name="codestral",
        model_endpoint=f"http://admin:hunter2@127.0.0.1:{internal.port}/v1",
        model_identifier="custom_openai/x",
    )
    response = await gw.client.post("/v4/code/suggestions", json=body, headers=gw.headers())
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "model_endpoint"]
    assert "hunter2" not in response.text
    nothing_called(gw, internal)


async def test_instance_token_credentials_in_a_prompt_url_are_422(
    gw: Harness, internal: Internal
) -> None:
    path, body = _prompt_check(gw, internal)
    body["model_metadata"]["endpoint"] = f"http://admin:hunter2@127.0.0.1:{internal.port}/v1"
    response = await gw.client.post(path, json=body, headers=gw.headers())
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "model_metadata", "endpoint"]
    assert "hunter2" not in response.text
    nothing_called(gw, internal)


# -- no oracle: a user's failures all look the same -----------------------------------------


def without_request_id(response: httpx.Response) -> str:
    request_id = response.headers["x-request-id"]
    message = str(response.json()["detail"])
    assert request_id in message
    return message.replace(request_id, "<id>")


async def _repoint(gw: Harness, endpoint: str) -> None:
    for route in gw.issuer.routes["routes"]:
        route["model"]["endpoint"] = endpoint
    gw.clock.advance(31)
    assert await gw.app.state.gateway.routes_table.refresh()


async def _refused_key(gw: Harness) -> None:
    gw.model.status = 401


async def _bad_status(gw: Harness) -> None:
    gw.model.status = 500
    gw.model.error_body = {"error": {"message": "upstream internals: /srv/models"}}


async def _unreachable(gw: Harness) -> None:
    await _repoint(gw, f"http://127.0.0.1:{free_port()}/v1")


async def _not_an_api(gw: Harness) -> None:
    await _repoint(gw, f"{gw.issuer.base}/v1")  # answers 404: not a model server


FAILURES = {
    "refused_key": _refused_key,
    "bad_status": _bad_status,
    "unreachable": _unreachable,
    "not_a_model_server": _not_an_api,
}


async def test_user_failures_are_indistinguishable(make_harness: HarnessFactory) -> None:
    answers: dict[str, httpx.Response] = {}
    with structlog.testing.capture_logs() as logs:
        for name, cause in FAILURES.items():
            gw: Harness = await make_harness()
            await cause(gw)
            token = await gw.user_token()
            answers[name] = await post_user(gw, PATHS[0], gw.user_headers(token))
        timeout: Harness = await make_harness(model_timeout_s=0.2)
        timeout.model.delay_s = 1.0
        token = await timeout.user_token()
        answers["timeout"] = await post_user(timeout, PATHS[0], timeout.user_headers(token))
        # The egress allow-list refuses the route's model (on loopback).
        egress: Harness = await make_harness(model_egress_allow=["10.0.0.0/8"])
        token = await egress.user_token()
        answers["egress_refused"] = await post_user(egress, PATHS[0], egress.user_headers(token))
    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 503)
    messages = {without_request_id(r) for r in answers.values()}
    assert len(messages) == 1, messages
    [message] = messages
    assert message.startswith(GENERIC_START)
    # The administrator finds each precise cause in the log, under the request id.
    logged = [e for e in logs if e.get("event") == "model_call_failed" and e.get("caller")]
    assert len(logged) == len(answers)
    reasons = " ".join(str(e["reason"]) for e in logged)
    assert "refused the API key" in reasons and "connection refused" in reasons
    assert "not in the allow-list" in reasons and "did not answer within" in reasons


async def test_user_failures_on_v4_and_streams_are_the_same(gw: Harness) -> None:
    gw.model.status = 500
    token = await gw.user_token()
    messages = set()
    for path in PATHS:
        for stream in (False, True):
            response = await post_user(gw, path, gw.user_headers(token), stream=stream)
            assert response.status_code == 503, (path, stream, response.text)
            messages.add(without_request_id(response))
    assert len(messages) == 1


async def test_user_sees_retry_later_with_the_models_rate_limit(gw: Harness) -> None:
    gw.model.status = 429
    gw.model.retry_after = "9"
    token = await gw.user_token()
    response = await post_user(gw, PATHS[0], gw.user_headers(token))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "9"
    assert without_request_id(response).startswith(GENERIC_START)


async def test_instance_token_keeps_precise_errors(gw: Harness) -> None:
    gw.model.status = 401
    response = await gw.complete()
    assert response.status_code == 503
    assert "refused the API key" in response.json()["detail"]


# -- secrets never echoed in validation errors ----------------------------------------------

BAD_KEYS: dict[str, Any] = {
    "too_long": SECRET * 120,
    "a_number": 98765432123456789,
    "a_list": [SECRET],
    "an_object": {"value": SECRET},
}


@pytest.mark.parametrize("key", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
@pytest.mark.parametrize("user", [False, True], ids=["instance", "user"])
async def test_422_never_echoes_the_api_key(gw: Harness, key: Any, user: bool) -> None:
    headers = gw.user_headers(await gw.user_token()) if user else gw.headers()
    response = await gw.complete(gw.body(model_api_key=key), headers=headers)
    assert response.status_code == 422, response.text
    assert any(e["loc"] == ["body", "model_api_key"] for e in response.json()["detail"])
    assert SECRET not in response.text and "98765432123456789" not in response.text
    nothing_called(gw)


@pytest.mark.parametrize("key", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
async def test_422_never_echoes_the_api_key_on_other_surfaces(gw: Harness, key: Any) -> None:
    internal_url = "http://127.0.0.1:9/v1"
    cases = [
        (
            "/v4/code/suggestions",
            v4_body(gw, model_api_key=key, model_endpoint=internal_url),
        ),
        (
            "/v1/prompts/model_configuration%2Fcheck",
            {
                "inputs": {},
                "model_metadata": {"provider": "openai", "name": "codestral", "api_key": key},
            },
        ),
        (
            "/v1/chat/agent",
            {
                "prompt_components": [
                    {
                        "type": "prompt",
                        "metadata": {"source": "x", "version": "1"},
                        "payload": {
                            "content": "hi",
                            "provider": "litellm",
                            "model": "codestral",
                            "model_api_key": key,
                        },
                    }
                ]
            },
        ),
    ]
    scopes = ["complete_code", "duo_chat", "code_suggestions"]
    headers = gw.headers(gw.token(scopes=scopes))
    for path, body in cases:
        response = await gw.client.post(path, json=body, headers=headers)
        assert response.status_code == 422, (path, response.text)
        assert SECRET not in response.text and "98765432123456789" not in response.text
    nothing_called(gw)
