"""Duo Chat as a GitLab 18 instance sends it (``instance.ai_gateway_api = gitlab18``, the
default): chat on ``/v2/chat/agent`` (ndjson read back, finish_reason and usage included),
slash commands on ``/v1/prompts/chat%2F<task>`` with the current inputs, and the scopes and
version header GitLab 18's gateway checks. GitLab 17's API is covered by
test_chat_and_health.py."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import orjson
import pytest
import structlog
from aiohttp import web

from tests.unit.instance.admin_helpers import Api
from tests.unit.instance.conftest import (
    EMBEDDED_ENDPOINT,
    MODEL_API_KEY,
    FakeGateway,
    LiveInstance,
    request_lines,
)

CHAT = "/api/v4/chat/completions"


def ndjson(*events: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(event) + b"\n" for event in events)


def delta(text: str, finish_reason: str | None = None) -> dict[str, Any]:
    return {"type": "final_answer_delta", "data": {"text": text, "finish_reason": finish_reason}}


USAGE = {"type": "usage", "data": {"usage": {"smollm2": {"input_tokens": 5, "output_tokens": 2}}}}
AGENT_ANSWER = ndjson(delta("Use "), delta("git revert.", "stop"), USAGE)


async def agent_answer(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.Response(body=AGENT_ANSWER, content_type="application/x-ndjson")


async def agent_error(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    body = ndjson(delta("Use "), {"type": "error", "data": {"message": "boom", "retryable": False}})
    return web.Response(body=body, content_type="application/x-ndjson")


async def prompt_answer(request: web.Request, gateway: FakeGateway) -> web.StreamResponse:
    return web.json_response("It adds two numbers.")


@pytest.fixture()
def api(instance: LiveInstance) -> Api:
    return Api(instance)


def scopes_of(headers: dict[str, str]) -> list[str]:
    token = headers["Authorization"].removeprefix("Bearer ")
    return sorted(jwt.decode(token, options={"verify_signature": False})["scopes"])


def test_chat_goes_to_v2_chat_agent(api: Api, fresh_gateway: FakeGateway) -> None:
    fresh_gateway.handler = agent_answer
    response = api.post(CHAT, {"content": "How do I undo a commit?"})
    assert response.status_code == 200, response.text
    assert response.json() == "Use git revert."
    [sent] = fresh_gateway.requests
    assert sent.path == "/v2/chat/agent"
    assert sent.body == {
        "messages": [
            {
                "role": "user",
                "content": "How do I undo a commit?",
                "context": None,
                "current_file": None,
                "additional_context": [],
            }
        ],
        "model_metadata": {
            "provider": "openai",
            "name": "general",
            "endpoint": EMBEDDED_ENDPOINT,
            "api_key": MODEL_API_KEY,
            "identifier": sent.body["model_metadata"]["identifier"],
        },
        "unavailable_resources": [],
    }
    assert scopes_of(sent.headers) == ["duo_chat", "duo_classic_chat"]
    assert sent.headers["X-Gitlab-Version"] == "18.11.0-enclave"
    assert sent.headers["X-Gitlab-Unit-Primitive"] == "duo_chat"


@pytest.mark.parametrize("stream", [False, True])
def test_finish_reason_and_usage_reach_the_request_log(
    api: Api, fresh_gateway: FakeGateway, stream: bool
) -> None:
    fresh_gateway.handler = agent_answer
    request_id = f"usage-{stream}"
    with structlog.testing.capture_logs() as logs:
        response = api.post(
            CHAT, {"content": "hi", "stream": stream}, headers={"X-Request-ID": request_id}
        )
        assert response.status_code == 200, response.text
        [line] = request_lines(logs, request_id)
    assert (line["input_tokens"], line["output_tokens"], line["finish_reason"]) == (5, 2, "stop")


def test_streamed_chat_relays_the_agent_text(api: Api, fresh_gateway: FakeGateway) -> None:
    fresh_gateway.handler = agent_answer
    response = api.post(CHAT, {"content": "How do I undo a commit?", "stream": True})
    assert response.status_code == 200, response.text
    assert response.text == "Use git revert."


def test_an_error_line_is_a1003(api: Api, fresh_gateway: FakeGateway) -> None:
    fresh_gateway.handler = agent_error
    response = api.post(CHAT, {"content": "hi"})
    assert response.status_code == 502
    assert response.json()["error_code"] == "A1003"


def test_slash_commands_go_to_the_prompt_registry(api: Api, fresh_gateway: FakeGateway) -> None:
    fresh_gateway.handler = prompt_answer
    response = api.post(
        CHAT,
        {
            "content": "/explain what does it return?",
            "current_file": {
                "file_name": "calc.py",
                "selected_text": "return a + b",
                "content_above_cursor": "def add(a, b):\n    ",
            },
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == "It adds two numbers."
    [sent] = fresh_gateway.requests
    assert sent.raw_path == "/v1/prompts/chat%2Fexplain_code"
    assert sent.body["prompt_version"] == "^1.0.0"
    assert sent.body["stream"] is False
    assert sent.body["inputs"] == {
        "selected_text": "return a + b",
        "file_name": "calc.py",
        "file_content": "def add(a, b):\n    return a + b",
        "file_content_reuse": "",
        "language_info": "",
        "input": "what does it return?",
    }
    assert scopes_of(sent.headers) == ["duo_chat", "duo_classic_chat", "explain_code"]
    assert sent.headers["X-Gitlab-Unit-Primitive"] == "explain_code"


@pytest.mark.parametrize(
    ("command", "prompt_id"),
    [
        ("/tests", "chat%2Fwrite_tests"),
        ("/refactor", "chat%2Frefactor_code"),
        ("/fix", "chat%2Ffix_code"),
        ("/troubleshoot", "chat%2Ftroubleshoot_job"),
    ],
)
def test_each_slash_command_has_its_prompt(
    api: Api, fresh_gateway: FakeGateway, command: str, prompt_id: str
) -> None:
    fresh_gateway.handler = prompt_answer
    response = api.post(CHAT, {"content": f"{command} def add(a, b): return a - b"})
    assert response.status_code == 200, response.text
    [sent] = fresh_gateway.requests
    assert sent.raw_path == f"/v1/prompts/{prompt_id}"
    inputs = sent.body["inputs"]
    assert inputs["selected_text"] == "def add(a, b): return a - b"
    assert inputs["language_info"] == ""
    if command != "/troubleshoot":
        assert {"file_content", "file_content_reuse", "input"} <= set(inputs)


def test_editor_chat_asks_v2_chat_agent(instance: LiveInstance, fresh_gateway: FakeGateway) -> None:
    """GraphQL's aiAction (the editors' chat) goes the same way as the REST chat."""
    fresh_gateway.handler = agent_answer
    token = instance.new_token(("api",))
    url = f"{instance.url}/api/graphql"
    ask = 'mutation { aiAction(input: {chat: {content: "undo?"}}) { requestId errors } }'
    asked = httpx.post(url, json={"query": ask}, headers={"PRIVATE-TOKEN": token}, timeout=30)
    request_id = asked.json()["data"]["aiAction"]["requestId"]
    polled = (
        f'{{ aiMessages(requestIds: ["{request_id}"], roles: [ASSISTANT]) '
        "{ nodes { content errors } } }"
    )
    nodes: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while not nodes and time.monotonic() < deadline:
        answer = httpx.post(url, json={"query": polled}, headers={"PRIVATE-TOKEN": token})
        nodes = answer.json()["data"]["aiMessages"]["nodes"]
        time.sleep(0.05)
    assert nodes == [{"content": "Use git revert.", "errors": []}]
    assert [r.path for r in fresh_gateway.requests] == ["/v2/chat/agent"]
