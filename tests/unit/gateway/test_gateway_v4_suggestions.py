"""POST /v4/code/suggestions: v3's prompt_components body, streamed as real SSE events."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import orjson
import pytest
from aiohttp import web
from gateway_fakes import MODEL_API_KEY, FakeModel, Harness, call_asgi, cut_stream

from enclave.common import wire

pytestmark = pytest.mark.anyio

PATH = "/v4/code/suggestions"


# -- a paced upstream and a raw ASGI caller (shared with test_gateway_chat_agent) ----------


class PacedModel(FakeModel):
    """The fake model server, with a pause before every streamed chunk."""

    delay_s: float = 0.02
    stream_usage: dict[str, int] | None = None  # usage in the last event, as vLLM sends it

    async def _stream(
        self, request: web.Request, chat: bool, include_usage: bool = False
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in self.chunks:
            await asyncio.sleep(self.delay_s)
            await response.write(self._event(chunk, chat))
        await asyncio.sleep(self.delay_s)
        if self.stream_cut is not None:
            return await cut_stream(request, response, self.stream_cut)
        if self.stream_error:
            error = {"error": {"message": self.stream_error, "code": 500}}
            await response.write(b"data: " + orjson.dumps(error) + b"\n\n")
            return response
        last: dict[str, Any] = {
            "id": "c",
            "choices": [{"index": 0, "finish_reason": self.finish_reason, "delta": {}}],
        }
        if self.stream_usage is not None:
            last["usage"] = self.stream_usage
        await response.write(b"data: " + orjson.dumps(last) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response


async def paced_model(chunks: list[str]) -> PacedModel:
    model = PacedModel(chunks=chunks)
    await model.start()
    return model


async def call_raw(
    gw: Harness, path: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[dict[str, str], list[bytes]]:
    """The response headers and every body message the app sends, in order (unbuffered)."""
    sent = await call_asgi(gw, body, path=path, request_headers=headers)
    start = sent[0]
    assert start["type"] == "http.response.start"
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    response_headers[":status"] = str(start["status"])
    return response_headers, [m["body"] for m in sent[1:] if m["type"] == "http.response.body"]


# -- helpers --------------------------------------------------------------------------------


def editor(
    gw: Harness, kind: str = "code_editor_completion", endpoint: str | None = None, **payload: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "file_name": "app/calc.py",
        "content_above_cursor": "def add(a, b):\n",
        "content_below_cursor": "\n\nprint(add(1, 2))\n",
        "language_identifier": "python",
        "model_provider": "litellm",
        "model_name": "codestral",
        "model_endpoint": endpoint or gw.model.endpoint,
        "model_api_key": MODEL_API_KEY,
        "model_identifier": "custom_openai/codestral-local",
        "stream": False,
        "prompt_version": 1,
    }
    data.update(payload)
    return {"type": kind, "payload": data, "metadata": {"source": "gitlab-ee", "version": "17.9"}}


def context_item(name: str, content: str) -> dict[str, Any]:
    return {
        "type": "code_editor_context",
        "payload": {"type": "file", "name": name, "content": content},
        "metadata": {"source": "gitlab-ee", "version": "17.9"},
    }


def body_of(*components: dict[str, Any]) -> dict[str, Any]:
    return {"prompt_components": list(components)}


def headers_for(gw: Harness, *scopes: str) -> dict[str, str]:
    return gw.headers(
        gw.token(scopes=list(scopes or (wire.UP_COMPLETE_CODE, wire.UP_GENERATE_CODE)))
    )


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def chunk_frame(text: str) -> bytes:
    return sse("content_chunk", {"choices": [{"delta": {"content": text}, "index": 0}]})


def parse_start(frame: bytes) -> dict[str, Any]:
    head, _, data = frame.partition(b"\ndata: ")
    assert head == b"event: stream_start"
    assert data.endswith(b"\n\n")
    parsed: dict[str, Any] = orjson.loads(data)
    return parsed


# -- non-streamed ---------------------------------------------------------------------------


async def test_completion_answers_v3_style(gw: Harness) -> None:
    response = await gw.client.post(PATH, json=body_of(editor(gw)), headers=headers_for(gw))
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["metadata"].pop("timestamp"), int)
    assert body == {
        "choices": [{"text": gw.model.text, "index": 0, "finish_reason": "stop"}],
        "metadata": {
            "model": {
                "engine": "litellm",
                "name": "custom_openai/codestral-local",
                "lang": "python",
            }
        },
    }
    [call] = gw.model.requests
    assert call.path == "/v1/completions"  # codestral: fill-in-the-middle, as in v2
    assert call.json["model"] == "codestral-local"
    assert call.headers["Authorization"] == f"Bearer {MODEL_API_KEY}"
    assert "def add(a, b):" in call.json["prompt"]


async def test_generation_uses_the_v2_generation_plan(gw: Harness) -> None:
    gw.model.text = "return a + b"
    component = editor(gw, "code_editor_generation", prompt_version=2, prompt="Write add()")
    response = await gw.client.post(
        PATH, json=body_of(context_item("a.py", "x = 1"), component), headers=headers_for(gw)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["metadata"]["model"]["name"] == "custom_openai/codestral"
    assert body["choices"][0]["text"] == "return a + b"
    [call] = gw.model.requests
    assert call.path == "/v1/chat/completions"
    assert call.json["messages"] == [{"role": "user", "content": "Write add()"}]
    assert call.json["stop"] == ["</new_code>"]


# -- streamed -------------------------------------------------------------------------------


async def test_stream_sends_exact_sse_frames_in_order(gw: Harness) -> None:
    chunks = ["    return", " a", " +", " b", "\n"]
    model = await paced_model(chunks)
    try:
        body = body_of(editor(gw, endpoint=model.endpoint, stream=True))
        headers, frames = await call_raw(gw, PATH, body, headers_for(gw))
    finally:
        await model.stop()
    assert headers[":status"] == "200"
    assert headers["x-streaming-format"] == "sse"
    assert headers["content-type"].startswith("text/event-stream")
    start = parse_start(frames[0])
    assert isinstance(start["metadata"].pop("timestamp"), int)
    assert start == {
        "metadata": {
            "model": {
                "engine": "litellm",
                "name": "custom_openai/codestral-local",
                "lang": "python",
            },
            "enabled_feature_flags": [],
        }
    }
    # One frame per model delta, each sent on its own: none dropped, merged or reordered.
    assert frames[1:] == [
        *(chunk_frame(text) for text in chunks),
        b"event: stream_end\ndata: null\n\n",
        b"",
    ]
    [call] = model.requests
    assert call.json["stream"] is True


async def test_stream_over_http_parses_as_sse(gw: Harness) -> None:
    gw.model.chunks = ["    return", " a + b"]
    async with gw.client.stream(
        "POST", PATH, json=body_of(editor(gw, stream=True)), headers=headers_for(gw)
    ) as response:
        assert response.status_code == 200
        text = "".join([part async for part in response.aiter_text()])
    events = [block.split("\n", 1) for block in text.split("\n\n") if block]
    assert [name for name, _ in events] == [
        "event: stream_start",
        "event: content_chunk",
        "event: content_chunk",
        "event: stream_end",
    ]
    contents = [
        orjson.loads(data.removeprefix("data: "))["choices"][0]["delta"]["content"]
        for name, data in events
        if name == "event: content_chunk"
    ]
    assert contents == ["    return", " a + b"]


async def test_model_failure_mid_stream_ends_with_an_error_event(gw: Harness) -> None:
    model = await paced_model(["    return", " a"])
    model.stream_error = "out of memory"
    try:
        body = body_of(editor(gw, endpoint=model.endpoint, stream=True))
        headers, frames = await call_raw(gw, PATH, body, headers_for(gw))
    finally:
        await model.stop()
    assert headers[":status"] == "200"
    parse_start(frames[0])
    assert frames[1:3] == [chunk_frame("    return"), chunk_frame(" a")]
    name, data = frames[3].decode().removesuffix("\n\n").split("\n")
    assert name == "event: error"  # instead of stream_end
    message = orjson.loads(data.removeprefix("data: "))["message"]
    assert message.startswith("Inference failed: ") and "out of memory" in message
    assert frames[4:] == [b""]  # then the response ends properly


@pytest.mark.parametrize("cut", ["abort", "eof"])
async def test_model_cut_mid_stream_ends_with_an_error_event(
    gw: Harness, cut: Literal["abort", "eof"]
) -> None:
    model = await paced_model(["    return", " a"])
    model.stream_cut = cut
    try:
        body = body_of(editor(gw, endpoint=model.endpoint, stream=True))
        headers, frames = await call_raw(gw, PATH, body, headers_for(gw))
    finally:
        await model.stop()
    assert headers[":status"] == "200"
    parse_start(frames[0])
    assert frames[1:3] == [chunk_frame("    return"), chunk_frame(" a")]
    assert frames[3].startswith(b"event: error\ndata: ") and frames[3].endswith(b"\n\n")
    message = orjson.loads(frames[3].split(b"data: ", 1)[1])["message"]
    assert message.startswith("Inference failed: the model endpoint ")
    assert ("truncated" in message) if cut == "abort" else ("before the answer" in message)
    assert frames[4:] == [b""]


@pytest.mark.parametrize("stream", [False, True])
async def test_model_errors_are_mapped(gw: Harness, stream: bool) -> None:
    gw.model.status = 500
    body = body_of(editor(gw, stream=stream))
    response = await gw.client.post(PATH, json=body, headers=headers_for(gw))
    assert response.status_code == 503
    assert response.json()["detail"].startswith("Inference failed: ")

    gw.model.status, gw.model.retry_after = 429, "7"
    response = await gw.client.post(PATH, json=body, headers=headers_for(gw))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"


# -- scopes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "scopes", "allowed"),
    [
        ("code_editor_completion", [wire.UP_COMPLETE_CODE], True),
        ("code_editor_completion", [wire.UP_CODE_SUGGESTIONS], True),
        ("code_editor_completion", [wire.UP_GENERATE_CODE], False),
        ("code_editor_generation", [wire.UP_GENERATE_CODE], True),
        ("code_editor_generation", [wire.UP_COMPLETE_CODE], False),
        ("code_editor_completion", [wire.UP_DUO_CHAT], False),
    ],
)
async def test_scopes(gw: Harness, kind: str, scopes: list[str], allowed: bool) -> None:
    response = await gw.client.post(
        PATH, json=body_of(editor(gw, kind)), headers=headers_for(gw, *scopes)
    )
    if allowed:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 403
        assert response.json()["detail"].startswith("Unauthorized to access code")
        assert gw.model.requests == []


async def test_no_code_scope_is_refused_before_the_body_is_read(gw: Harness) -> None:
    response = await gw.client.post(
        PATH, content=b"not json", headers=headers_for(gw, wire.UP_DUO_CHAT)
    )
    assert response.status_code == 403


async def test_unauthenticated_is_401(gw: Harness) -> None:
    response = await gw.client.post(PATH, json=body_of(editor(gw)))
    assert response.status_code == 401


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("components", "loc"),
    [
        ([], ["body", "prompt_components"]),
        ([{"type": "other", "payload": {}}], ["body", "prompt_components", 0]),
        (
            [{"type": "code_editor_completion", "payload": {"content_above_cursor": ""}}],
            ["body", "prompt_components", 0, "code_editor_completion", "payload", "file_name"],
        ),
        ([context_item("a.py", "x")], ["body", "prompt_components"]),
    ],
)
async def test_invalid_bodies_are_422(
    gw: Harness, components: list[dict[str, Any]], loc: list[Any]
) -> None:
    response = await gw.client.post(PATH, json=body_of(*components), headers=headers_for(gw))
    assert response.status_code == 422, response.text
    assert loc in [item["loc"] for item in response.json()["detail"]]
    assert gw.model.requests == []


async def test_two_editor_components_are_422(gw: Harness) -> None:
    response = await gw.client.post(
        PATH, json=body_of(editor(gw), editor(gw)), headers=headers_for(gw)
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "prompt_components"]


async def test_plan_errors_are_422(gw: Harness) -> None:
    for component in (
        editor(gw, model_endpoint=None),
        editor(gw, prompt_version=2, prompt=[{"role": "user", "content": "x"}]),
        editor(gw, model_provider="anthropic"),
    ):
        response = await gw.client.post(PATH, json=body_of(component), headers=headers_for(gw))
        assert response.status_code == 422, response.text
    assert gw.model.requests == []


# -- GitLab 18: the model in the top-level model_metadata, semver prompt_version -------------


def gitlab18_editor(kind: str = "code_editor_completion", **payload: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "file_name": "app/calc.py",
        "content_above_cursor": "def add(a, b):\n",
        "content_below_cursor": "",
        "language_identifier": "python",
        "stream": False,
        **payload,
    }
    return {"type": kind, "payload": data}


def model_metadata(gw: Harness, family: str) -> dict[str, Any]:
    return {
        "provider": "openai",
        "name": family,
        "endpoint": gw.model.endpoint,
        "api_key": MODEL_API_KEY,
        "identifier": f"custom_openai/{family}-local",
    }


async def test_model_comes_from_the_top_level_model_metadata(gw: Harness) -> None:
    body = {**body_of(gitlab18_editor()), "model_metadata": model_metadata(gw, "codestral")}
    response = await gw.client.post(PATH, json=body, headers=headers_for(gw))
    assert response.status_code == 200, response.text
    assert response.json()["metadata"]["model"]["name"] == "custom_openai/codestral-local"
    [call] = gw.model.requests
    assert call.path == "/v1/completions"  # the family (codestral) chose fill-in-the-middle
    assert call.json["model"] == "codestral-local"
    assert call.headers["Authorization"] == f"Bearer {MODEL_API_KEY}"


@pytest.mark.parametrize(
    ("version", "prompt", "sent"),
    [
        ("^2.0.0", None, None),  # no prompt: the registry's prompt, built here
        ("2.0.0", "Write add()", "Write add()"),  # the instance's prompt, verbatim
        ("^1.0.0", "Write add()", "Write add()"),
    ],
)
async def test_generation_takes_a_semver_prompt_version(
    gw: Harness, version: str, prompt: str | None, sent: str | None
) -> None:
    component = gitlab18_editor(
        "code_editor_generation",
        prompt_id="code_suggestions/generations",
        prompt_version=version,
        **({"prompt": prompt} if prompt else {}),
    )
    body = {**body_of(component), "model_metadata": model_metadata(gw, "mistral")}
    response = await gw.client.post(PATH, json=body, headers=headers_for(gw))
    assert response.status_code == 200, response.text
    [call] = gw.model.requests
    [message] = call.json["messages"]
    if sent is not None:
        assert message["content"] == sent
    else:
        assert "def add(a, b):" in message["content"]


@pytest.mark.parametrize("version", ["^9.0.0", "not-a-version"])
async def test_an_unknown_prompt_version_is_422(gw: Harness, version: str) -> None:
    component = gitlab18_editor("code_editor_generation", prompt_version=version)
    body = {
        **body_of(context_item("a.py", "x = 1"), component),
        "model_metadata": model_metadata(gw, "mistral"),
    }
    response = await gw.client.post(PATH, json=body, headers=headers_for(gw))
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "prompt_components", 1, "payload", "prompt_version"]
    assert gw.model.requests == []
