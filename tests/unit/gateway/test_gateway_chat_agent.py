"""POST /v2/chat/agent: Duo Chat's agent, answered as newline-delimited JSON events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from gateway_fakes import MODEL_API_KEY, Harness
from test_gateway_v4_suggestions import call_raw, paced_model

from enclave.common import wire
from enclave.gateway.models.base import ModelError, ModelRequest, ModelResult, Usage
from enclave.gateway.prompts.registry import get_registry

AGENT_INSTRUCTIONS = get_registry().resolve("chat/agent", "base").instructions()

pytestmark = pytest.mark.anyio

PATH = "/v2/chat/agent"


def metadata(endpoint: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "provider": "openai",
        "name": "mistral",
        "endpoint": endpoint,
        "api_key": MODEL_API_KEY,
        "identifier": "custom_openai/mistral-local",
    }
    data.update(overrides)
    return data


def agent_body(endpoint: str, content: str = "What is 1 + 1?", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": content}],
        "options": {"agent_scratchpad": {"agent_type": "react", "steps": []}},
        "unavailable_resources": ["Mergerequests", "Pipelines"],
        "model_metadata": metadata(endpoint),
    }
    body.update(overrides)
    return body


def chat_headers(gw: Harness, *scopes: str) -> dict[str, str]:
    return gw.headers(gw.token(scopes=list(scopes or (wire.UP_DUO_CHAT,))))


def line(kind: str, data: Any) -> bytes:
    return orjson.dumps({"type": kind, "data": data}) + b"\n"


def delta(text: str, finish_reason: str | None = None) -> bytes:
    # GitLab 18: every delta carries finish_reason, the model's on the last one.
    return line("final_answer_delta", {"text": text, "finish_reason": finish_reason})


async def test_stream_sends_exact_ndjson_lines_in_order(gw: Harness) -> None:
    chunks = ["The", " answer", " is", " 2", "."]
    model = await paced_model(chunks)
    try:
        headers, frames = await call_raw(gw, PATH, agent_body(model.endpoint), chat_headers(gw))
    finally:
        await model.stop()
    assert headers[":status"] == "200"
    assert headers["content-type"] == "application/x-ndjson"
    # One line per model delta, each sent on its own: none dropped, merged or reordered.
    assert frames == [*(delta(text) for text in chunks[:-1]), delta(".", "stop"), b""]
    [call] = model.requests
    assert call.path == "/v1/chat/completions"
    assert call.json["stream"] is True
    assert call.json["model"] == "mistral-local"
    assert call.headers["Authorization"] == f"Bearer {MODEL_API_KEY}"
    # Mistral: the instructions lead the first user message (no system role).
    [message] = call.json["messages"]
    assert message["role"] == "user"
    assert message["content"] == f"{AGENT_INSTRUCTIONS}\n\nWhat is 1 + 1?"


async def test_stream_over_http_is_one_json_object_per_line(gw: Harness) -> None:
    gw.model.chunks = ["Two", "."]
    async with gw.client.stream(
        "POST", PATH, json=agent_body(gw.model.endpoint), headers=chat_headers(gw)
    ) as response:
        assert response.status_code == 200
        lines = [orjson.loads(text) async for text in response.aiter_lines() if text]
    assert lines == [
        {"type": "final_answer_delta", "data": {"text": "Two", "finish_reason": None}},
        {"type": "final_answer_delta", "data": {"text": ".", "finish_reason": "stop"}},
        # The fake model reports usage because the gateway asks for it (include_usage), and
        # it comes last, per model, as GitLab 18 sends it.
        {
            "type": "usage",
            "data": {"usage": {"mistral-local": {"input_tokens": 27, "output_tokens": 9}}},
        },
    ]


async def test_context_is_written_into_the_conversation(gw: Harness) -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {
            "role": "user",
            "content": "Explain this",
            "context": {"type": "issue", "content": "Issue #1: crash"},
            "current_file": {"file_path": "a.py", "data": "x = 1", "selected_code": True},
            "additional_context": [
                {"category": "file", "id": "b.py", "content": "y = 2", "metadata": {}}
            ],
            "agent_scratchpad": {"agent_type": "react", "steps": []},
        },
    ]
    response = await gw.client.post(
        PATH, json=agent_body(gw.model.endpoint, messages=messages), headers=chat_headers(gw)
    )
    assert response.status_code == 200, response.text
    [call] = gw.model.requests
    sent = call.json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"].startswith(f"{AGENT_INSTRUCTIONS}\n\n")
    last = sent[-1]["content"]
    assert last.startswith("Explain this\n\n")
    for part in ("Issue #1: crash", "Selected code from a.py", "x = 1", "(file b.py)", "y = 2"):
        assert part in last


async def test_model_failure_mid_stream_ends_with_an_error_line(gw: Harness) -> None:
    model = await paced_model(["The", " answer"])
    model.stream_error = "out of memory"
    try:
        headers, frames = await call_raw(gw, PATH, agent_body(model.endpoint), chat_headers(gw))
    finally:
        await model.stop()
    assert headers[":status"] == "200"
    assert frames[:2] == [delta("The"), delta(" answer")]
    error = orjson.loads(frames[2])
    assert error["type"] == "error"
    assert error["data"]["message"].startswith("Inference failed: ")
    assert "out of memory" in error["data"]["message"]
    assert frames[3:] == [b""]


async def test_model_cut_mid_stream_ends_with_an_error_line(gw: Harness) -> None:
    model = await paced_model(["The", " answer"])
    model.stream_cut = "abort"  # the model server is killed mid-answer
    try:
        headers, frames = await call_raw(gw, PATH, agent_body(model.endpoint), chat_headers(gw))
    finally:
        await model.stop()
    assert headers[":status"] == "200"
    assert frames[:2] == [delta("The"), delta(" answer")]
    assert frames[2].endswith(b"\n") and frames[2].count(b"\n") == 1  # one whole line
    error = orjson.loads(frames[2])
    assert error["type"] == "error"
    assert error["data"]["message"].startswith("Inference failed: the model endpoint ")
    assert frames[3:] == [b""]


class _UsageStream:
    def __init__(self, chunks: list[str], usage: Usage | None) -> None:
        self._chunks = chunks
        self.usage = usage
        self.closed = False

    async def _iterate(self) -> AsyncIterator[str]:
        for chunk in self._chunks:
            yield chunk

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def aclose(self) -> None:
        self.closed = True


class _UsageClient:
    def __init__(self, stream: _UsageStream) -> None:
        self.stream_ = stream

    async def complete(self, request: ModelRequest) -> ModelResult:
        raise ModelError("not used")

    async def stream(self, request: ModelRequest) -> _UsageStream:
        return self.stream_


@pytest.mark.parametrize("usage", [Usage(12, 3), None])
async def test_usage_line_only_when_the_model_reports_usage(
    gw: Harness, usage: Usage | None
) -> None:
    stream = _UsageStream(["A", "B"], usage)
    gw.app.state.gateway.models = _UsageClient(stream)
    _, frames = await call_raw(gw, PATH, agent_body(gw.model.endpoint), chat_headers(gw))
    expected = [delta("A"), delta("B", "stop")]
    if usage is not None:
        counts = {"input_tokens": 12, "output_tokens": 3}
        expected.append(line("usage", {"usage": {"mistral-local": counts}}))
    assert frames == [*expected, b""]
    assert stream.closed


async def test_model_errors_before_the_first_byte_are_mapped(gw: Harness) -> None:
    gw.model.status = 500
    body = agent_body(gw.model.endpoint)
    response = await gw.client.post(PATH, json=body, headers=chat_headers(gw))
    assert response.status_code == 503
    assert response.json()["detail"].startswith("Inference failed: ")

    gw.model.status, gw.model.retry_after = 429, "5"
    response = await gw.client.post(PATH, json=body, headers=chat_headers(gw))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "5"


@pytest.mark.parametrize(
    "scopes", [[wire.UP_COMPLETE_CODE], [wire.UP_GENERATE_CODE, wire.UP_CODE_SUGGESTIONS]]
)
async def test_without_duo_chat_is_403(gw: Harness, scopes: list[str]) -> None:
    response = await gw.client.post(
        PATH, json=agent_body(gw.model.endpoint), headers=chat_headers(gw, *scopes)
    )
    assert response.status_code == 403
    assert response.json() == {"detail": "Unauthorized to access duo_chat"}
    assert gw.model.requests == []


async def test_unauthenticated_is_401(gw: Harness) -> None:
    response = await gw.client.post(PATH, json=agent_body(gw.model.endpoint))
    assert response.status_code == 401


async def test_model_metadata_is_required(gw: Harness) -> None:
    body = agent_body(gw.model.endpoint)
    del body["model_metadata"]
    response = await gw.client.post(PATH, json=body, headers=chat_headers(gw))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "model_metadata"]
    assert error["type"] == "missing"
    assert gw.model.requests == []


@pytest.mark.parametrize(
    ("overrides", "loc"),
    [
        ({"messages": []}, ["body", "messages"]),
        ({"messages": [{"role": "robot", "content": "x"}]}, ["body", "messages", 0, "role"]),
        ({"messages": [{"role": "user"}]}, ["body", "messages", 0, "content"]),
        ({"model_metadata": {"provider": "openai"}}, ["body", "model_metadata", "name"]),
    ],
)
async def test_invalid_bodies_are_422(
    gw: Harness, overrides: dict[str, Any], loc: list[Any]
) -> None:
    body = agent_body(gw.model.endpoint, **overrides)
    response = await gw.client.post(PATH, json=body, headers=chat_headers(gw))
    assert response.status_code == 422, response.text
    assert loc in [item["loc"] for item in response.json()["detail"]]
    assert gw.model.requests == []


async def test_unsupported_model_provider_is_422(gw: Harness) -> None:
    body = agent_body(gw.model.endpoint, model_metadata=metadata("", provider="bedrock"))
    response = await gw.client.post(PATH, json=body, headers=chat_headers(gw))
    assert response.status_code == 422
    assert gw.model.requests == []


# GitLab 18: chat/react needs duo_classic_chat; duo_chat alone is the Duo Core cutoff.
CUTOFF = {"detail": "Duo Core no longer authorized to access Duo Classic Chat"}


@pytest.mark.parametrize(
    "extra",
    [
        {"X-Gitlab-Version": "18.11.0-ee"},
        {"X-Gitlab-Version": "19.0.0"},
        {"X-Gitlab-Feature-Enablement-Type": "duo_core"},
    ],
)
async def test_duo_chat_only_from_a_gitlab_18_instance_is_the_duo_core_cutoff(
    gw: Harness, extra: dict[str, str]
) -> None:
    headers = {**chat_headers(gw), **extra}
    response = await gw.client.post(PATH, json=agent_body(gw.model.endpoint), headers=headers)
    assert (response.status_code, response.json()) == (403, CUTOFF)
    assert gw.model.requests == []


@pytest.mark.parametrize("version", ["17.9.0-ee", None])
async def test_duo_chat_only_from_a_gitlab_17_instance_is_served(
    gw: Harness, version: str | None
) -> None:
    headers = chat_headers(gw)
    if version is not None:
        headers["X-Gitlab-Version"] = version
    response = await gw.client.post(PATH, json=agent_body(gw.model.endpoint), headers=headers)
    assert response.status_code == 200, response.text


async def test_duo_classic_chat_is_served_from_gitlab_18(gw: Harness) -> None:
    headers = {**chat_headers(gw, "duo_classic_chat"), "X-Gitlab-Version": "18.11.0-ee"}
    response = await gw.client.post(PATH, json=agent_body(gw.model.endpoint), headers=headers)
    assert response.status_code == 200, response.text


async def test_gitlab_duo_mention_keeps_duo_chat_working_after_the_cutoff(gw: Harness) -> None:
    headers = {**chat_headers(gw), "X-Gitlab-Version": "18.11.0-ee"}
    body = agent_body(gw.model.endpoint, content="@GitLabDuo review this merge request")
    response = await gw.client.post(PATH, json=body, headers=headers)
    assert response.status_code == 200, response.text


async def test_neither_chat_primitive_is_unauthorized(gw: Harness) -> None:
    headers = chat_headers(gw, "explain_code")
    response = await gw.client.post(PATH, json=agent_body(gw.model.endpoint), headers=headers)
    assert (response.status_code, response.json()) == (
        403,
        {"detail": "Unauthorized to access duo_chat"},
    )
