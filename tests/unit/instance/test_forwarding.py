"""Code Suggestions end to end inside the instance: PAT → feature → token → fake gateway → relay."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import orjson
import pytest
import structlog
from aiohttp import web
from sqlalchemy import select

from enclave.common.net import free_port
from enclave.instance.api.relay import NDJSON, error_frame
from enclave.instance.db import SelfHostedModel
from enclave.instance.secrets import SecretBox
from tests.unit.instance.conftest import (
    COMPLETION_RESPONSE,
    EMBEDDED_ENDPOINT,
    MODEL_API_KEY,
    FakeGateway,
    Handler,
    LiveInstance,
    check_disconnect_cancels_upstream,
    check_relayed_chunk_by_chunk,
    request_lines,
)

PATH = "/api/v4/code_suggestions/completions"
COMPLETION_BODY: dict[str, Any] = {
    "current_file": {
        "file_name": "app/calc.py",
        "language_identifier": "python",
        "content_above_cursor": "def add(a, b):\n    ",
        "content_below_cursor": "\n",
    },
    "intent": "completion",
    "stream": False,
    "project_path": "group/project",
    "project_id": 42,
}
GENERATION_BODY: dict[str, Any] = {
    "current_file": {
        "file_name": "app/calc.py",
        "content_above_cursor": "# multiply two numbers\n",
        "content_below_cursor": "",
    },
}


def post(
    instance: LiveInstance, body: Any = None, *, token: str | None = None, **kwargs: Any
) -> httpx.Response:
    headers = {"PRIVATE-TOKEN": token or instance.admin_token, **kwargs.pop("headers", {})}
    return httpx.post(
        instance.url + PATH, json=body, headers=headers, timeout=kwargs.pop("timeout", 20), **kwargs
    )


@pytest.fixture()
def restore_features(instance: LiveInstance) -> Iterator[None]:
    yield
    with instance.ctx.sessions() as session:
        model_id = session.scalars(select(SelfHostedModel.id)).one()
    for feature in ("code_completions", "code_generations"):
        instance.set_feature(feature, "self_hosted", model_id)


def test_completion_is_forwarded_with_gitlabs_body(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    response = post(instance, COMPLETION_BODY)
    assert response.status_code == 200, response.text
    assert response.json() == COMPLETION_RESPONSE
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert "x-gitlab-error-origin" not in response.headers
    [forwarded] = fresh_gateway.requests
    assert forwarded.path == "/v2/code/completions"
    assert forwarded.body == {
        "project_path": "group/project",
        "project_id": 42,
        "current_file": COMPLETION_BODY["current_file"],
        "stream": False,
        "choices_count": 0,
        "context": [],
        "telemetry": [],
        "prompt_version": 2,
        "prompt": "",
        "model_provider": "litellm",
        "model_name": "general",
        "model_endpoint": EMBEDDED_ENDPOINT,
        "model_api_key": MODEL_API_KEY,
        "model_identifier": "custom_openai/smollm2",
    }


def test_forwarded_headers_are_gitlabs(instance: LiveInstance, fresh_gateway: FakeGateway) -> None:
    response = post(instance, COMPLETION_BODY, headers={"X-Request-ID": "ide-req-7"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "ide-req-7"
    headers = {k.lower(): v for k, v in fresh_gateway.requests[0].headers.items()}
    instance_id = str(instance.ctx.instance_id)
    expected_user = hmac.new(instance.ctx.user_id_salt, b"1", hashlib.sha256).hexdigest()
    assert headers["authorization"].startswith("Bearer ")
    assert {
        k: headers[k]
        for k in (
            "x-gitlab-authentication-type",
            "x-gitlab-instance-id",
            "x-gitlab-realm",
            "x-gitlab-global-user-id",
            "x-gitlab-host-name",
            "x-gitlab-version",
            "x-request-id",
            "content-type",
        )
    } == {
        "x-gitlab-authentication-type": "oidc",
        "x-gitlab-instance-id": instance_id,
        "x-gitlab-realm": "self-managed",
        "x-gitlab-global-user-id": expected_user,
        "x-gitlab-host-name": "127.0.0.1",
        "x-gitlab-version": "18.11.0-enclave",  # GitLab 18's gateway API (the default)
        "x-request-id": "ide-req-7",
        "content-type": "application/json",
    }
    assert expected_user != "1"
    assert headers["x-gitlab-unit-primitive"] == "complete_code"
    # Nothing of the client's credentials travels on.
    assert "private-token" not in headers
    assert instance.admin_token not in repr(headers)
    # The token is what DESIGN.md §3 says, and the gateway can verify it with the JWKS.
    token = headers["authorization"].removeprefix("Bearer ")
    key = jwt.PyJWKClient(f"{instance.url}/oauth/discovery/keys").get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token, key.key, algorithms=["RS256"], audience="gitlab-ai-gateway", issuer=instance.url
    )
    assert claims["scopes"] == ["complete_code"]
    assert claims["sub"] == claims["gitlab_instance_id"] == instance_id
    assert claims["gitlab_realm"] == "self-managed"


def test_generation_goes_to_generations_with_its_scope(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    response = post(instance, GENERATION_BODY)  # no intent: the comment makes it a generation
    assert response.status_code == 200
    [forwarded] = fresh_gateway.requests
    assert forwarded.path == "/v2/code/generations"
    assert forwarded.body["prompt_id"] == "code_suggestions/generations"
    assert "multiply two numbers" in forwarded.body["prompt"]
    assert forwarded.body["model_provider"] == "litellm"
    assert forwarded.body["prompt_version"] == 2
    token = forwarded.headers["Authorization"].removeprefix("Bearer ")
    assert jwt.decode(token, options={"verify_signature": False})["scopes"] == ["generate_code"]


def test_token_is_reused_across_requests(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    for _ in range(3):
        assert post(instance, COMPLETION_BODY).status_code == 200
    assert post(instance, GENERATION_BODY).status_code == 200
    tokens = [r.headers["Authorization"] for r in fresh_gateway.requests]
    assert tokens[0] == tokens[1] == tokens[2]
    assert tokens[3] != tokens[0]  # another scope set, another token


def test_streaming_is_relayed_chunk_by_chunk(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    check_relayed_chunk_by_chunk(instance, fresh_gateway, PATH, COMPLETION_BODY)


async def stream_back_to_back(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    for piece in (b"return", b" a", b" +", b" b\n"):  # a fast model: no pause between pieces
        await response.write(piece)
    await response.write_eof()
    return response


def test_pieces_that_arrive_together_stay_apart(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    """Each HTTP chunk of the gateway is its own chunk for the editor, even when a fast model's
    pieces reach the instance in one read (reading "whatever is buffered" merged them)."""
    fresh_gateway.handler = stream_back_to_back
    with httpx.stream(
        "POST",
        instance.url + PATH,
        json={**COMPLETION_BODY, "stream": True},
        headers={"PRIVATE-TOKEN": instance.admin_token},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        assert list(response.iter_raw()) == [b"return", b" a", b" +", b" b\n"]


def test_client_disconnect_cancels_the_upstream_request(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    check_disconnect_cancels_upstream(instance, fresh_gateway, PATH, COMPLETION_BODY)


async def break_mid_stream(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    await response.write(b"partial ")
    assert request.transport is not None
    request.transport.close()  # the gateway dies mid-answer
    return response


def test_a_broken_upstream_stream_is_not_passed_off_as_complete(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    fresh_gateway.handler = break_mid_stream
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST",
            instance.url + PATH,
            json={**COMPLETION_BODY, "stream": True},
            headers={"PRIVATE-TOKEN": instance.admin_token},
            timeout=20,
        ) as response,
    ):
        response.read()


def break_after(content_type: str, sent: bytes, **headers: str) -> Handler:
    """A gateway that sends ``sent`` with ``content_type`` and dies mid-answer."""

    async def handler(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type, **headers})
        await response.prepare(request)
        await response.write(sent)
        assert request.transport is not None
        request.transport.close()
        return response

    return handler


DELTA = b'{"type":"final_answer_delta","data":{"text":"The"}}\n'


@pytest.mark.parametrize(
    ("content_type", "headers", "sent", "expected_head", "error_of"),
    [
        # ndjson: the error is one more line, even after half a line.
        (NDJSON, {}, DELTA, DELTA, lambda tail: orjson.loads(tail)["data"]["message"]),
        (
            NDJSON,
            {},
            DELTA + b'{"ty',
            DELTA + b'{"ty\n',
            lambda t: orjson.loads(t)["data"]["message"],
        ),
        # GitLab's v4 SSE: an `event: error` after the last whole event.
        (
            "text/event-stream",
            {"X-Streaming-Format": "sse"},
            b"event: stream_start\ndata: {}\n\n",
            b"event: stream_start\ndata: {}\n\n",
            lambda tail: orjson.loads(tail.removeprefix(b"event: error\ndata: "))["message"],
        ),
    ],
)
def test_a_broken_upstream_stream_ends_with_the_dialects_error_event(
    instance: LiveInstance,
    fresh_gateway: FakeGateway,
    content_type: str,
    headers: dict[str, str],
    sent: bytes,
    expected_head: bytes,
    error_of: Callable[[bytes], str],
) -> None:
    fresh_gateway.handler = break_after(content_type, sent, **headers)
    with httpx.stream(
        "POST",
        instance.url + PATH,
        json={**COMPLETION_BODY, "stream": True},
        headers={"PRIVATE-TOKEN": instance.admin_token},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        body = response.read()  # complete: no RemoteProtocolError
    assert response.headers["content-type"].startswith(content_type)
    for name, value in headers.items():
        assert response.headers[name] == value
    assert body.startswith(expected_head)
    message = error_of(body[len(expected_head) :])
    assert message.startswith("the AI gateway's stream broke off in the middle of the answer")
    assert body.endswith(b"\n")


def test_error_frames_per_dialect() -> None:
    cause = "ClientPayloadError"
    assert error_frame({"Content-Type": "text/event-stream"}, cause, b"x") is None  # raw text
    line = error_frame({"Content-Type": NDJSON}, cause, b"}\n")
    assert line is not None and line.startswith(b'{"type":"error"') and line.count(b"\n") == 1
    sse = error_frame({"X-Streaming-Format": "sse"}, cause, b"\n")
    assert sse is not None and sse.startswith(b"\n\nevent: error\ndata: {")


async def refuse(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response({"error": "Forbidden by auth provider"}, status=401)


@pytest.mark.parametrize("stream", [False, True])
def test_gateway_errors_are_relayed_as_they_are(
    instance: LiveInstance, fresh_gateway: FakeGateway, stream: bool
) -> None:
    fresh_gateway.handler = refuse
    response = post(instance, {**COMPLETION_BODY, "stream": stream})
    assert response.status_code == 401
    assert response.json() == {"error": "Forbidden by auth provider"}
    assert "x-gitlab-error-origin" not in response.headers  # the gateway's error, not ours


def test_502_when_the_gateway_is_down(live_instance_factory: Callable[..., LiveInstance]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    live = live_instance_factory(gateway_url=dead, embedded_model_endpoint=EMBEDDED_ENDPOINT)
    response = post(live, COMPLETION_BODY)
    assert response.status_code == 502
    assert response.headers["x-gitlab-error-origin"] == "monolith"
    message = response.json()["message"]
    assert message.startswith("502 Bad Gateway - could not connect to the AI gateway at " + dead)
    assert "ENCLAVE_GATEWAY_URL" in message


async def too_slow(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    await asyncio.sleep(3)
    return web.json_response(COMPLETION_RESPONSE)


def test_504_when_the_gateway_is_too_slow(
    live_instance_factory: Callable[..., LiveInstance], fresh_gateway: FakeGateway
) -> None:
    fresh_gateway.handler = too_slow
    live = live_instance_factory(
        gateway_url=fresh_gateway.url,
        gateway_timeout_s=1,
        embedded_model_endpoint=EMBEDDED_ENDPOINT,
    )
    response = post(live, COMPLETION_BODY)
    assert response.status_code == 504
    assert response.headers["x-gitlab-error-origin"] == "monolith"
    assert "did not answer within 1 s" in response.json()["message"]


@pytest.mark.parametrize(
    ("provider", "words"),
    [
        ("disabled", "is disabled on this instance"),
        ("unassigned", "has no model assigned"),
        ("vendored", "vendored model"),
    ],
)
def test_403_when_the_feature_has_no_usable_model(
    instance: LiveInstance,
    fresh_gateway: FakeGateway,
    restore_features: None,
    provider: str,
    words: str,
) -> None:
    instance.set_feature("code_completions", provider)
    response = post(instance, COMPLETION_BODY)
    assert response.status_code == 403
    assert response.headers["x-gitlab-error-origin"] == "monolith"
    message = response.json()["message"]
    assert message.startswith("403 Forbidden - Code completions")
    assert words in message
    assert "code_completions" in message  # says which feature to configure
    assert fresh_gateway.requests == []
    # Generations are configured separately and still work.
    assert post(instance, GENERATION_BODY).status_code == 200


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "400 Bad request - the body is not valid JSON"),
        (b"[1, 2]", "400 Bad request - the body must be a JSON object"),
        (b"", "400 Bad request - the body is empty; send a JSON object with current_file"),
        (
            b'{"current_file": {"file_name": "a.py"}}',
            "400 Bad request - current_file.content_above_cursor is missing",
        ),
    ],
)
def test_400_for_bad_bodies(
    instance: LiveInstance, fresh_gateway: FakeGateway, content: bytes, message: str
) -> None:
    response = httpx.post(
        instance.url + PATH,
        content=content,
        headers={"PRIVATE-TOKEN": instance.admin_token, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json() == {"message": message}
    assert response.headers["x-gitlab-error-origin"] == "monolith"
    assert fresh_gateway.requests == []


def test_400_for_oversized_fields(instance: LiveInstance) -> None:
    body = {"current_file": {"file_name": "a.py", "content_above_cursor": "x" * 100_001}}
    response = post(instance, body)
    assert response.status_code == 400
    assert response.json()["message"].startswith(
        "400 Bad request - current_file.content_above_cursor is invalid"
    )


@pytest.mark.parametrize("chunked", [False, True])
def test_413_for_bodies_over_600_kb(
    instance: LiveInstance, fresh_gateway: FakeGateway, chunked: bool
) -> None:
    payload = (
        b'{"current_file": {"file_name": "a.py", "content_above_cursor": "'
        + (b"x" * 700_000)
        + b'"}}'
    )
    content: Any = (
        iter([payload[i : i + 65536] for i in range(0, len(payload), 65536)])
        if (chunked)
        else payload
    )
    response = httpx.post(
        instance.url + PATH,
        content=content,
        headers={"PRIVATE-TOKEN": instance.admin_token, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 413
    assert response.json() == {
        "message": "413 Request Entity Too Large - the request body is over 600 KiB, the limit "
        "of this endpoint; send a smaller body"
    }
    assert response.headers["x-gitlab-error-origin"] == "monolith"
    assert fresh_gateway.requests == []


def test_no_secret_reaches_the_logs(instance: LiveInstance, fresh_gateway: FakeGateway) -> None:
    with structlog.testing.capture_logs() as logs:
        ok = post(instance, COMPLETION_BODY, headers={"X-Request-ID": "req-secret-1"})
        bad = post(instance, {"bad": 1}, headers={"X-Request-ID": "req-secret-2"})
        assert (ok.status_code, bad.status_code) == (200, 400)
        [line] = request_lines(logs, "req-secret-1")
        assert request_lines(logs, "req-secret-2")
    text = repr(logs)
    jwt_sent = fresh_gateway.requests[0].headers["Authorization"].removeprefix("Bearer ")
    for secret in (instance.admin_token, MODEL_API_KEY, jwt_sent):
        assert secret not in text
    assert (line["feature"], line["model"], line["status"], line["route"]) == (
        "code_completions",
        "embedded-smollm2",
        200,
        PATH,
    )


def test_unreadable_model_key_is_a_500_that_says_why(
    instance: LiveInstance, fresh_gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(instance.ctx, "secret_box", SecretBox(os.urandom(32)))
    # A process gets a new secret key only by restarting, with empty caches: so here too.
    instance.ctx.caches.invalidate("models")
    response = post(instance, COMPLETION_BODY)
    assert response.status_code == 500
    assert response.headers["x-gitlab-error-origin"] == "monolith"
    message = response.json()["message"]
    assert "embedded-smollm2" in message and "different secret key" in message
    assert fresh_gateway.requests == []


def test_unexpected_errors_are_a_gitlab_style_500(
    instance: LiveInstance, fresh_gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(scopes: object) -> None:
        raise RuntimeError("boom with enclpat-secret-looking-value-123")

    monkeypatch.setattr(instance.ctx.minter, "token", explode)
    response = post(instance, COMPLETION_BODY, headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.headers["x-gitlab-error-origin"] == "monolith"
    assert response.json() == {
        "message": "500 Internal Server Error - unexpected error; the instance log has the "
        "details under request_id req-500"
    }


def test_only_the_expected_headers_travel(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    post(instance, COMPLETION_BODY, headers={"User-Agent": "vscode/1.0", "Cookie": "s=1"})
    names = {name.lower() for name in fresh_gateway.requests[0].headers}
    assert names == {
        "host",
        "accept",
        "content-length",
        "authorization",
        "x-gitlab-authentication-type",
        "x-gitlab-instance-id",
        "x-gitlab-realm",
        "x-gitlab-global-user-id",
        "x-gitlab-host-name",
        "x-gitlab-version",
        "x-gitlab-unit-primitive",
        "x-request-id",
        "content-type",
        "x-gitlab-enabled-instance-verbose-ai-logs",
        "x-enclave-model-timeout",  # the model's share of the AI timeout (common/timeouts.py)
    }


def test_gitlab17_api_adds_the_legacy_code_suggestions_scope(
    instance17: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    """GitLab 17's gateways required ``code_suggestions`` next to ``complete_code``."""
    response = post(instance17, COMPLETION_BODY)
    assert response.status_code == 200
    [forwarded] = fresh_gateway.requests
    assert forwarded.headers["X-Gitlab-Version"] == "17.9.0-enclave"
    assert "X-Gitlab-Unit-Primitive" not in forwarded.headers
    token = forwarded.headers["Authorization"].removeprefix("Bearer ")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert sorted(claims["scopes"]) == ["code_suggestions", "complete_code"]
