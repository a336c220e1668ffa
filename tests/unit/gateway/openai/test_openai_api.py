"""The gateway's OpenAI-compatible API: auth, scopes, models, validation, forwarding, errors."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import orjson
import pytest
import structlog
from gateway_fakes import INSTANCE_ID
from openai_harness import (
    MODEL_API_KEY,
    ROUTES_SECRET,
    USER_ID,
    OpenAIFactory,
    OpenAIHarness,
    call_asgi,
    make_openai,
    oai,
)

from enclave.common import wire
from enclave.common.net import free_port
from enclave.gateway.api.openai.common import MAX_TOKENS_CAP

__all__ = ["make_openai", "oai"]  # fixtures

pytestmark = pytest.mark.anyio


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


# -- /v1/models -----------------------------------------------------------------------------


async def test_models_lists_the_features_the_token_may_use(oai: OpenAIHarness) -> None:
    response = await oai.client.get("/v1/models", headers=oai.auth())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    # summarize_review is granted but disabled; code_generations is served but not granted.
    assert [m["id"] for m in body["data"]] == ["code_completions", "duo_chat"]
    first = body["data"][0]
    assert (first["object"], first["owned_by"], first["family"]) == (
        "model",
        "enclave",
        "codestral",
    )
    assert first["model_name"] == "code_completions-model"
    assert MODEL_API_KEY not in response.text and "127.0.0.1" not in response.text


async def test_retrieve_one_model(oai: OpenAIHarness) -> None:
    ok = await oai.client.get("/v1/models/duo_chat", headers=oai.auth())
    assert ok.status_code == 200 and ok.json()["id"] == "duo_chat"
    missing = await oai.client.get("/v1/models/code_generations", headers=oai.auth())
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "model_not_found"
    # GitLab's definitions endpoint is still its own route.
    definitions = await oai.client.get("/v1/models/definitions")
    assert definitions.status_code == 200


# -- authentication -------------------------------------------------------------------------


async def test_no_token_is_401(oai: OpenAIHarness) -> None:
    response = await oai.client.get("/v1/models")
    assert response.status_code == 401
    error = error_of(response)
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert "direct_access" in error["message"]


async def test_garbage_forged_and_expired_tokens_are_401(oai: OpenAIHarness) -> None:
    for token in ("not-a-jwt", oai.token(key=oai.h.keys.rsa_other), oai.token(exp=1)):
        response = await oai.client.get("/v1/models", headers=oai.auth(token))
        assert response.status_code == 401
        assert error_of(response)["code"] == "invalid_api_key"


async def test_a_token_for_something_else_is_401(oai: OpenAIHarness) -> None:
    # The instance's own token (what it forwards IDE requests with) has no surface claim.
    instance_token = oai.h.token(scopes=[wire.UP_DUO_CHAT])
    response = await oai.client.get("/v1/models", headers=oai.auth(instance_token))
    assert response.status_code == 401
    assert "not for the OpenAI-compatible API" in error_of(response)["message"]


async def test_gitlab_headers_are_optional_but_must_match(oai: OpenAIHarness) -> None:
    matching = oai.auth(
        **{
            "X-Gitlab-Instance-Id": INSTANCE_ID,
            "X-Gitlab-Realm": wire.REALM_SELF_MANAGED,
            "X-Gitlab-Global-User-Id": USER_ID,
            "X-Gitlab-Authentication-Type": "oidc",
        }
    )
    assert (await oai.client.get("/v1/models", headers=matching)).status_code == 200
    for name, value in (
        ("X-Gitlab-Instance-Id", "someone-else"),
        ("X-Gitlab-Realm", "saas"),
        ("X-Gitlab-Authentication-Type", "pat"),
    ):
        response = await oai.client.get("/v1/models", headers={**matching, name: value})
        assert response.status_code == 401, name


# -- scopes and models ----------------------------------------------------------------------


async def test_a_feature_the_token_lacks_is_403(oai: OpenAIHarness) -> None:
    response = await oai.chat(model="code_generations")
    assert response.status_code == 403
    error = error_of(response)
    assert (error["type"], error["code"], error["param"]) == (
        "permission_error",
        "insufficient_scope",
        "model",
    )
    assert "generate_code" in error["message"]
    assert oai.model.requests == []


async def test_a_disabled_feature_is_403_with_the_instances_reason(oai: OpenAIHarness) -> None:
    response = await oai.chat(model="summarize_review")
    assert response.status_code == 403
    error = error_of(response)
    assert error["code"] == "model_unavailable"
    assert "disabled on this instance" in error["message"]


async def test_an_unknown_model_is_404(oai: OpenAIHarness) -> None:
    response = await oai.chat(model="gpt-4o")
    assert response.status_code == 404
    assert error_of(response)["code"] == "model_not_found"


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "duo_chat"}, 422, "messages"),
        ({"messages": []}, 422, "messages"),
        ({"messages": [{"content": "no role"}]}, 422, "messages[0]"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 5}, 422, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}, 422, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 422, "stream"),
        ({"messages": [{"role": "user", "content": "x"}], "model": 3}, 422, "model"),
        ({"messages": [{"role": "user", "content": "x"}], "api_key": "sk-x"}, 400, "api_key"),
        ({"messages": [{"role": "user", "content": "x"}], "base_url": "http://x"}, 400, "base_url"),
    ],
)
async def test_bad_bodies(
    oai: OpenAIHarness, body: dict[str, Any], status: int, param: str
) -> None:
    response = await oai.post("/v1/chat/completions", body)
    assert response.status_code == status, response.text
    assert error_of(response)["param"] == param
    assert oai.model.requests == []


async def test_invalid_json_is_400_and_huge_bodies_413(oai: OpenAIHarness) -> None:
    response = await oai.client.post(
        "/v1/chat/completions", content=b"{not json", headers=oai.auth()
    )
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"
    huge = {"messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    response = await oai.post("/v1/chat/completions", huge)
    assert response.status_code == 413


async def test_completions_need_a_prompt(oai: OpenAIHarness) -> None:
    response = await oai.post("/v1/completions", {"prompt": [1, 2, 3]})
    assert response.status_code == 422
    assert error_of(response)["param"] == "prompt"


# -- forwarding -----------------------------------------------------------------------------


async def test_chat_is_forwarded_with_the_models_name_key_and_capped_tokens(
    oai: OpenAIHarness,
) -> None:
    response = await oai.chat(model="duo_chat", max_tokens=100_000, temperature=0.2)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "duo_chat"  # never the upstream name
    assert body["choices"][0]["message"]["content"] == oai.model.text
    [sent] = oai.model.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.json["model"] == "codestral-local"
    assert sent.json["max_tokens"] == MAX_TOKENS_CAP
    assert sent.json["temperature"] == 0.2
    assert sent.headers["Authorization"] == f"Bearer {MODEL_API_KEY}"
    assert "stream_options" not in sent.json


async def test_chat_without_a_model_is_general_chat(oai: OpenAIHarness) -> None:
    response = await oai.chat()
    assert response.status_code == 200
    assert response.json()["model"] == "duo_chat"
    assert oai.model.requests[0].json["max_tokens"] > 0  # a default bound is set


async def test_completions_default_to_code_completions(oai: OpenAIHarness) -> None:
    response = await oai.post("/v1/completions", {"prompt": "def add(a, b):\n"})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "code_completions"
    assert response.json()["choices"][0]["text"] == oai.model.text
    [sent] = oai.model.requests
    assert (sent.path, sent.json["prompt"]) == ("/v1/completions", "def add(a, b):\n")


# -- streaming ------------------------------------------------------------------------------


async def test_stream_is_relayed_frame_by_frame(oai: OpenAIHarness) -> None:
    body = {"model": "duo_chat", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    sent = await call_asgi(oai, "/v1/chat/completions", body)
    start = sent[0]
    assert start["status"] == 200
    assert dict(start["headers"])[b"content-type"].startswith(b"text/event-stream")
    frames = [m["body"] for m in sent[1:] if m["body"]]
    # One ASGI message per SSE event: role, 4 deltas, finish, usage, [DONE].
    assert all(frame.endswith(b"\n\n") and frame.count(b"\n\n") == 1 for frame in frames)
    data = [f[6:].strip() for f in frames if f.startswith(b"data: ")]
    assert len(data) == 1 + len(oai.model.chunks) + 3
    assert data[-1] == b"[DONE]"
    events = [orjson.loads(d) for d in data[:-1]]
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    assert len({e["id"] for e in events}) == 1 and events[0]["id"].startswith("chatcmpl-")
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]]
    assert "".join(deltas) == oai.model.text
    assert events[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    usage = events[-1]["usage"]  # include_usage: the client did not decline it
    assert events[-1]["choices"] == []
    assert usage == {**oai.model.usage, "total_tokens": sum(oai.model.usage.values())}
    assert oai.model.requests[0].json["stream_options"] == {"include_usage": True}
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_stream_options_of_the_client_are_kept(oai: OpenAIHarness) -> None:
    response = await oai.chat(stream=True, stream_options={"include_usage": False})
    assert response.status_code == 200
    # The gateway still asks the model for its counts (metrics), but the client declined them.
    assert b'"usage"' not in response.content
    assert response.content.endswith(b"data: [DONE]\n\n")


async def test_stream_model_field_is_the_feature(oai: OpenAIHarness) -> None:
    oai.model.chunks = ["a"]
    response = await oai.post("/v1/completions", {"prompt": "x", "stream": True})
    assert response.status_code == 200
    text = response.text
    assert "codestral-local" not in text
    assert MODEL_API_KEY not in text


async def test_client_disconnect_cancels_the_upstream(oai: OpenAIHarness) -> None:
    oai.model.endless_stream = True
    disconnect = asyncio.Event()
    bodies = 0

    def on_body(message: Any) -> None:
        nonlocal bodies
        bodies += 1
        if bodies >= 6:
            disconnect.set()

    body = {"stream": True, "messages": [{"role": "user", "content": "x"}]}
    await asyncio.wait_for(
        call_asgi(oai, "/v1/chat/completions", body, disconnect, on_body), timeout=10
    )
    await asyncio.wait_for(oai.model.stream_closed.wait(), timeout=5)


async def test_a_failure_mid_stream_ends_with_a_generic_error_event(oai: OpenAIHarness) -> None:
    oai.model.stream_error = f"out of memory (key {MODEL_API_KEY})"
    with structlog.testing.capture_logs() as logs:
        response = await oai.chat(stream=True)
    assert response.status_code == 200
    assert '"error"' in response.text and "The AI model is unavailable" in response.text
    assert response.headers["x-request-id"] in response.text
    assert "out of memory" not in response.text and MODEL_API_KEY not in response.text
    # The cause is in the log, for the administrator.
    assert any("out of memory" in str(entry.get("reason")) for entry in logs)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"model": "duo_chat", "messages": [{"role": "user", "content": "x"}]},
        ),
        ("/v1/completions", {"model": "code_completions", "prompt": "def add(a, b):"}),
    ],
)
@pytest.mark.parametrize("cut", ["abort", "eof"])
async def test_a_model_cut_mid_stream_ends_with_an_error_event(
    oai: OpenAIHarness, path: str, body: dict[str, Any], cut: Literal["abort", "eof"]
) -> None:
    # The model server dies mid-answer: as OpenAI and vLLM do, a last `data: {"error": ...}`
    # event (no [DONE]), then the response ends properly.
    oai.model.stream_cut = cut
    sent = await call_asgi(oai, path, {**body, "stream": True})
    assert sent[0]["status"] == 200
    frames = [m["body"] for m in sent[1:] if m["body"]]
    assert all(frame.endswith(b"\n\n") and frame.count(b"\n\n") == 1 for frame in frames)
    *relayed, last = frames
    events = [orjson.loads(frame.removeprefix(b"data: ")) for frame in relayed]
    texts = [
        choice["delta"].get("content", "") if "delta" in choice else choice["text"]
        for choice in (event["choices"][0] for event in events)
    ]
    assert "".join(texts) == "".join(oai.model.chunks)  # every delta before the cut
    assert all(event["choices"][0]["finish_reason"] is None for event in events)
    assert b"[DONE]" not in b"".join(frames)
    error = orjson.loads(last.removeprefix(b"data: "))["error"]
    assert error["type"] == "api_error"
    # OpenAI-API callers are users: the one generic answer; the cause is in the log.
    assert error["code"] == "model_unavailable"
    assert "The AI model is unavailable" in error["message"]
    assert "127.0.0.1" not in error["message"]  # the endpoint is for the log, not for users
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


@pytest.mark.parametrize("done", [b"data:[DONE]\n\n", b""])
async def test_a_stream_that_ended_is_not_taken_for_a_break(
    oai: OpenAIHarness, done: bytes
) -> None:
    # [DONE] written without a space, or no [DONE] after the finish_reason: both complete.
    oai.model.done_frame = done
    body = {"model": "duo_chat", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    sent = await call_asgi(oai, "/v1/chat/completions", body)
    text = b"".join(m["body"] for m in sent[1:])
    assert b'"error"' not in text
    assert text.endswith(b"data: [DONE]\n\n")


# -- upstream failures: one generic answer (the user is not an administrator) --------------


def generic(response: Any) -> str:
    """The error message with the request id taken out (it differs per request)."""
    error = error_of(response)
    assert error["code"] == "model_unavailable"
    request_id = response.headers["x-request-id"]
    assert request_id in error["message"]
    return str(error["message"]).replace(request_id, "<id>")


@pytest.mark.parametrize("upstream", [500, 401, 404, 400])
async def test_upstream_errors_are_one_generic_503(oai: OpenAIHarness, upstream: int) -> None:
    oai.model.status = upstream
    oai.model.error_body = {"error": {"message": f"nope {MODEL_API_KEY}"}}
    for stream in (False, True):
        response = await oai.chat(stream=stream)
        assert response.status_code == 503, response.text
        assert generic(response).startswith("The AI model is unavailable")
        assert "nope" not in response.text and "127.0.0.1" not in response.text


async def test_upstream_rate_limit_keeps_429_and_retry_after(oai: OpenAIHarness) -> None:
    oai.model.status = 429
    oai.model.retry_after = "7"
    response = await oai.chat()
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert generic(response).startswith("The AI model is unavailable")


async def test_unreachable_model_is_the_same_generic_503(make_openai: OpenAIFactory) -> None:
    oai = await make_openai(load=False)
    doc = oai.issuer.routes
    for route in doc["routes"]:
        if route.get("model"):
            route["model"]["endpoint"] = f"http://127.0.0.1:{free_port()}/v1"
    assert await oai.table.refresh()
    response = await oai.chat()
    assert response.status_code == 503
    assert "connection refused" not in response.text
    for route in doc["routes"]:  # back to the model, which now fails: the same answer
        if route.get("model"):
            route["model"]["endpoint"] = oai.model.endpoint
    oai.model.status = 500
    oai.clock.advance(31)  # the routes are due: the next refresh takes the new document
    assert await oai.table.refresh()
    failed = await oai.chat()
    assert len(oai.model.requests) == 1
    assert generic(response) == generic(failed)


async def test_refused_endpoint_is_403(make_openai: OpenAIFactory) -> None:
    # The instance would not accept this endpoint: the route is misconfigured, not called.
    oai = await make_openai(load=False)
    for route in oai.issuer.routes["routes"]:
        if route.get("model"):
            route["model"]["endpoint"] = "http://169.254.169.254/v1"
    assert await oai.table.refresh()
    response = await oai.chat()
    assert response.status_code == 403
    assert error_of(response)["code"] == "model_unavailable"
    assert "169.254" not in response.text
    assert oai.model.requests == []


# -- secrets --------------------------------------------------------------------------------


async def test_secrets_never_reach_logs_or_answers(make_openai: OpenAIFactory) -> None:
    with structlog.testing.capture_logs() as logs:
        oai = await make_openai()
        token = oai.token()
        answers = [
            await oai.client.get("/v1/models", headers=oai.auth(token)),
            await oai.chat(),
            await oai.chat(stream=True),
            await oai.chat(model="nope"),
        ]
        oai.issuer.routes_status = 500
        oai.clock.advance(1000)
        await oai.table.refresh()
        answers.append(await oai.chat())
    assert [a.status_code for a in answers] == [200, 200, 200, 404, 503]
    text = repr(logs) + "".join(a.text for a in answers)
    for secret in (ROUTES_SECRET, MODEL_API_KEY, token):
        assert secret not in text
    assert any(entry["event"] == "gateway_routes_loaded" for entry in logs)
