"""Every cloud provider end to end: instance → gateway → the provider's fake, real processes.

One stack (its own data dir, 1 s routes refresh) with the gateway configured for four loopback
fakes that speak each provider's wire format (:mod:`provider_fakes`, :mod:`wire_fixtures` of
the provider unit tests): Anthropic and Azure OpenAI through the model's endpoint, Amazon
Bedrock through ``ENCLAVE_GATEWAY__BEDROCK_ENDPOINT`` (SigV4 signed) and Vertex AI through its
endpoint, project, location and token URL settings (a service-account key exchanged at the
fake's ``/token``). For each provider an administrator registers a model through the admin API,
tests the connection, assigns it to Duo Chat and code completions, and then a completion, a
chat question and a tool call (OpenAI-compatible API, whole and streamed) go through it. A
fifth model, on Vertex AI with its own project and location (the fake as its API base), shows
the model's values winning over the gateway's VERTEX_PROJECT and VERTEX_LOCATION.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.e2e.conftest import FakeLoop, Stack, running_stack

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "gateway" / "providers"))

from provider_fakes import FakeProvider, Reply, Seen, json_reply
from provider_setup import ANTHROPIC_KEY, AWS_ACCESS_KEY, AZURE_KEY, BEDROCK_KEY, SA_KEY
from wire_fixtures import (
    ACCESS_TOKEN,
    ANSWER,
    ANTHROPIC_MESSAGE,
    ANTHROPIC_MODEL,
    ANTHROPIC_TOOL_MESSAGE,
    AZURE_COMPLETION,
    AZURE_DEPLOYMENT,
    BEDROCK_ANSWER,
    BEDROCK_MODEL,
    BEDROCK_TOOL_ANSWER,
    GEMINI_ANSWER,
    GEMINI_MODEL,
    GEMINI_TOOL_ANSWER,
    OPENAI_TOOL_ANSWER,
    OPENAI_TOOLS,
    TOKEN_ANSWER,
    TOOL_ARGUMENTS,
    TOOL_NAME,
    TOOL_QUESTION,
    VERTEX_LOCATION,
    VERTEX_PROJECT,
    anthropic_stream,
    anthropic_tool_stream,
    azure_stream,
    bedrock_stream,
    bedrock_tool_stream,
    gemini_stream,
    gemini_tool_stream,
    openai_tool_stream,
)

pytestmark = pytest.mark.e2e

ADMIN = "/api/v4/admin/ai"
COMPLETION = {
    "current_file": {
        "file_name": "calc.py",
        "content_above_cursor": "# add two numbers\n",
        "content_below_cursor": "\n",
    },
    "intent": "completion",
    "stream": False,
}
SSE = "text/event-stream"
EVENTSTREAM = "application/vnd.amazon.eventstream"


def _body(seen: Seen) -> dict[str, Any]:
    data = seen.json if seen.body else {}
    return data if isinstance(data, dict) else {}


def anthropic_answer(seen: Seen) -> Reply:
    if seen.method == "GET":  # the connection test lists the models
        return json_reply({"data": [{"type": "model", "id": ANTHROPIC_MODEL}], "has_more": False})
    body = _body(seen)
    if body.get("stream"):
        chunks = anthropic_tool_stream() if body.get("tools") else anthropic_stream()
        return Reply(content_type=SSE, chunks=chunks)
    return json_reply(ANTHROPIC_TOOL_MESSAGE if body.get("tools") else ANTHROPIC_MESSAGE)


def azure_answer(seen: Seen) -> Reply:
    if seen.method == "GET":
        return json_reply({"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]})
    body = _body(seen)
    if body.get("stream"):
        chunks = openai_tool_stream() if body.get("tools") else azure_stream()
        return Reply(content_type=SSE, chunks=chunks)
    return json_reply(OPENAI_TOOL_ANSWER if body.get("tools") else AZURE_COMPLETION)


def bedrock_answer(seen: Seen) -> Reply:
    tools = "toolConfig" in _body(seen)
    if seen.path.endswith("/converse-stream"):
        chunks = bedrock_tool_stream() if tools else bedrock_stream()
        return Reply(content_type=EVENTSTREAM, chunks=chunks)
    return json_reply(BEDROCK_TOOL_ANSWER if tools else BEDROCK_ANSWER)


def vertex_answer(seen: Seen) -> Reply:
    tools = "tools" in _body(seen)
    if seen.path.endswith(":streamGenerateContent"):
        chunks = gemini_tool_stream() if tools else gemini_stream()
        return Reply(content_type=SSE, chunks=chunks)
    return json_reply(GEMINI_TOOL_ANSWER if tools else GEMINI_ANSWER)


@dataclass
class Provider:
    kind: str
    registration: dict[str, Any]  # the admin API body, less the endpoint for the fake
    answer: Callable[[Seen], Reply]
    endpoint_on_model: bool  # the model carries the fake's URL (else the gateway settings)
    fake_kind: str = ""  # the fake it calls, when another provider's

    @property
    def fake_name(self) -> str:
        return self.fake_kind or self.kind


PROVIDERS = [
    Provider(
        "anthropic",
        {
            "provider": "anthropic",
            "model": "claude_3",
            "identifier": f"anthropic/{ANTHROPIC_MODEL}",
            "api_token": ANTHROPIC_KEY,
        },
        anthropic_answer,
        True,
    ),
    Provider(
        "azure",
        {
            "provider": "azure_openai",
            "model": "gpt",
            "identifier": f"azure/{AZURE_DEPLOYMENT}",
            "api_token": AZURE_KEY,
        },
        azure_answer,
        True,
    ),
    Provider(
        "bedrock",
        {
            "provider": "bedrock",
            "model": "claude_3",
            "identifier": f"bedrock/{BEDROCK_MODEL}",
            "api_token": BEDROCK_KEY,
        },
        bedrock_answer,
        False,
    ),
    Provider(
        "vertex",
        {
            "provider": "vertex_ai",
            "model": "general",
            "identifier": f"vertex_ai/{GEMINI_MODEL}",
            "api_token": SA_KEY,
        },
        vertex_answer,
        False,
    ),
    # The model's own project and location (with the fake as its API base) win over the
    # gateway's VERTEX_PROJECT and VERTEX_LOCATION.
    Provider(
        "vertex_own_project",
        {
            "provider": "vertex_ai",
            "model": "general",
            "identifier": f"vertex_ai/{GEMINI_MODEL}",
            "api_token": SA_KEY,
            "project": "model-project-1",
            "location": "europe-west4",
        },
        vertex_answer,
        True,
        fake_kind="vertex",
    ),
]
BY_KIND = {provider.kind: provider for provider in PROVIDERS}


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeProvider]]:
    loop = FakeLoop()
    servers: dict[str, FakeProvider] = {}
    try:
        for provider in PROVIDERS:
            if provider.fake_kind:
                continue
            server = FakeProvider()
            server.responder = provider.answer
            if provider.kind == "vertex":
                server.token_replies = [json_reply(TOKEN_ANSWER)]
            loop.run(server.start())
            servers[provider.kind] = server
        yield servers
    finally:
        for server in servers.values():
            loop.run(server.stop())
        loop.close()


@pytest.fixture(scope="module")
def cloud_stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, fakes: dict[str, FakeProvider]
) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("enclave-providers"),
        tiny_gguf,
        ENCLAVE_GATEWAY__ROUTES_REFRESH_S="1",
        ENCLAVE_GATEWAY__BEDROCK_REGION="us-east-1",
        ENCLAVE_GATEWAY__BEDROCK_ENDPOINT=fakes["bedrock"].base,
        ENCLAVE_GATEWAY__VERTEX_PROJECT=VERTEX_PROJECT,
        ENCLAVE_GATEWAY__VERTEX_LOCATION=VERTEX_LOCATION,
        ENCLAVE_GATEWAY__VERTEX_ENDPOINT=fakes["vertex"].base,
        ENCLAVE_GATEWAY__VERTEX_TOKEN_URL=f"{fakes['vertex'].base}/token",
    ) as stack:
        yield stack


def admin(stack: Stack, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
    response = httpx.request(
        method,
        f"{stack.instance_url}{path}",
        json=body,
        headers={"PRIVATE-TOKEN": stack.admin_token},
        timeout=60,
    )
    assert response.status_code == expect, response.text
    return response.json()


def seen_since(fake: FakeProvider, start: int) -> list[Seen]:
    return [seen for seen in fake.seen[start:] if seen.method == "POST"]


def check_wire(kind: str, fake: FakeProvider, calls: list[Seen], stream: bool) -> None:
    """The last model call used the provider's own path and authentication."""
    assert calls, f"{kind}: the fake saw no model call"
    placement = BY_KIND[kind].registration
    project = placement.get("project", VERTEX_PROJECT)
    location = placement.get("location", VERTEX_LOCATION)
    seen = calls[-1]
    headers = {name.lower(): value for name, value in seen.headers.items()}
    if kind == "anthropic":
        assert seen.path == "/v1/messages"
        assert headers["x-api-key"] == ANTHROPIC_KEY and headers["anthropic-version"]
        assert bool(_body(seen).get("stream")) is stream
    elif kind == "azure":
        assert seen.path == f"/openai/deployments/{AZURE_DEPLOYMENT}/chat/completions"
        assert "api-version=" in seen.query
        assert headers["api-key"] == AZURE_KEY
        assert bool(_body(seen).get("stream")) is stream
    elif kind == "bedrock":
        suffix = "converse-stream" if stream else "converse"
        assert seen.path == f"/model/{BEDROCK_MODEL}/{suffix}"
        assert headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={AWS_ACCESS_KEY}/")
        assert "/us-east-1/bedrock/aws4_request" in headers["authorization"]
        assert "SignedHeaders=" in headers["authorization"] and headers["x-amz-date"]
        assert "Signature=" in headers["authorization"]
    else:
        method = "streamGenerateContent" if stream else "generateContent"
        assert seen.path == (
            f"/v1/projects/{project}/locations/{location}/publishers/google/"
            f"models/{GEMINI_MODEL}:{method}"
        )
        assert headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
        assert fake.token_requests, "the service-account key was never exchanged at /token"
        assert b"jwt-bearer" in fake.token_requests[-1].body


def streamed_call(seen: Seen) -> bool:
    """Whether the gateway asked for a streamed answer (in the body, or by the path)."""
    return bool(_body(seen).get("stream")) or seen.path.endswith(
        ("/converse-stream", ":streamGenerateContent")
    )


def tool_call(calls: list[Any]) -> tuple[str, dict[str, Any]]:
    [call] = calls
    return call.function.name, orjson.loads(call.function.arguments)


@pytest.mark.parametrize("kind", [provider.kind for provider in PROVIDERS])
def test_provider_end_to_end(kind: str, cloud_stack: Stack, fakes: dict[str, FakeProvider]) -> None:
    stack, provider = cloud_stack, BY_KIND[kind]
    fake = fakes[provider.fake_name]
    started = time.monotonic()
    body = {"name": f"{kind}-model", **provider.registration}
    if provider.endpoint_on_model:
        body["endpoint"] = fake.base

    # The unsaved model's test, then the saved one's: both reach the fake through the gateway.
    mark = len(fake.seen)
    unsaved = admin(stack, "POST", f"{ADMIN}/self_hosted_models/test", body)
    assert unsaved["success"] is True, unsaved
    assert len(fake.seen) > mark
    model = admin(stack, "POST", f"{ADMIN}/self_hosted_models", body, expect=201)
    assert model["provider"] == provider.registration["provider"]
    assert model["has_api_token"] is True and "api_token" not in model
    tested = admin(stack, "POST", f"{ADMIN}/self_hosted_models/{model['id']}/test")
    assert tested["success"] is True and tested["result"] == "ok", tested

    for feature in ("code_completions", "duo_chat"):
        setting = admin(
            stack,
            "PUT",
            f"{ADMIN}/feature_settings/{feature}",
            {"provider": "self_hosted", "self_hosted_model_id": model["id"]},
        )
        assert setting["self_hosted_model"]["id"] == model["id"]

    # A code completion through the instance, whole.
    mark = len(fake.seen)
    response = httpx.post(
        f"{stack.instance_url}/api/v4/code_suggestions/completions",
        json=COMPLETION,
        headers={"PRIVATE-TOKEN": stack.admin_token},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"]["name"] == provider.registration["identifier"]
    assert "return a + b" in answer["choices"][0]["text"]
    check_wire(kind, fake, seen_since(fake, mark), stream=False)

    # The same, streamed through the instance.
    mark = len(fake.seen)
    with httpx.stream(
        "POST",
        f"{stack.instance_url}/api/v4/code_suggestions/completions",
        json={**COMPLETION, "stream": True},
        headers={"PRIVATE-TOKEN": stack.admin_token},
        timeout=60,
    ) as streamed:
        assert streamed.status_code == 200
        assert streamed.headers["content-type"].startswith(SSE)
        text = "".join(streamed.iter_text())
    assert "return a + b" in text
    check_wire(kind, fake, seen_since(fake, mark), stream=True)

    # A Duo Chat question through the instance (the gateway's /v1/chat/agent).
    mark = len(fake.seen)
    response = httpx.post(
        f"{stack.instance_url}/api/v4/chat/completions",
        json={"content": "How do I add two numbers?"},
        headers={"PRIVATE-TOKEN": stack.admin_token},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json().strip() == ANSWER.strip()
    calls = seen_since(fake, mark)
    check_wire(kind, fake, calls, stream=streamed_call(calls[-1]) if calls else False)

    # A tool call through the gateway's OpenAI-compatible API (direct access), whole and
    # streamed; the gateway reads the new duo_chat mapping within its 1 s refresh.
    granted = httpx.post(
        f"{stack.instance_url}/api/v4/ai/openai/direct_access",
        headers={"PRIVATE-TOKEN": stack.admin_token},
        timeout=30,
    )
    assert granted.status_code == 200, granted.text
    access = granted.json()
    client = openai.OpenAI(
        base_url=access["base_url"], api_key=access["token"], timeout=60, max_retries=0
    )
    messages: Any = [{"role": "user", "content": TOOL_QUESTION}]
    tools: Any = OPENAI_TOOLS
    deadline = time.monotonic() + 15
    while True:
        mark = len(fake.seen)
        whole = client.chat.completions.create(model="duo_chat", messages=messages, tools=tools)
        try:
            check_wire(kind, fake, seen_since(fake, mark), stream=False)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)  # still the previous mapping: the routes are re-read every second
    assert whole.choices[0].finish_reason == "tool_calls"
    assert tool_call(whole.choices[0].message.tool_calls or []) == (
        TOOL_NAME,
        TOOL_ARGUMENTS,
    )

    mark = len(fake.seen)
    names: list[str] = []
    arguments: list[str] = []
    finish = None
    for chunk in client.chat.completions.create(
        model="duo_chat", messages=messages, tools=tools, stream=True
    ):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.function and delta.function.name:
                    names.append(delta.function.name)
                if delta.function and delta.function.arguments:
                    arguments.append(delta.function.arguments)
            finish = choice.finish_reason or finish
    check_wire(kind, fake, seen_since(fake, mark), stream=True)
    assert names == [TOOL_NAME]
    assert orjson.loads("".join(arguments)) == TOOL_ARGUMENTS
    assert finish == "tool_calls"
    assert time.monotonic() - started < 60
