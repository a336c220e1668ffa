"""The OpenAI-compatible API on every provider, through the gateway's one model chain.

A feature routed to an Anthropic, Azure OpenAI, Bedrock or Vertex AI model (Gemini or Claude)
answers in OpenAI's shapes, whole and streamed; the request each provider gets is its own API's
(the wire fixtures of ``tests/unit/gateway/providers``), with the client's sampling options
mapped to their equivalents; failures are the same generic errors as for OpenAI-compatible
servers, and the calls are counted in the model metrics.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai_harness import (
    MODEL_API_KEY,
    OpenAIFactory,
    OpenAIHarness,
    make_openai,
    oai,
)
from openai_providers import MODELS, fake, routed
from provider_fakes import FakeProvider
from provider_setup import ANTHROPIC_KEY, AZURE_KEY, error_reply, success
from wire_fixtures import (
    ACCESS_TOKEN,
    ANSWER,
    ANTHROPIC_BODY,
    BEDROCK_BODY,
    GEMINI_BODY,
    QUESTION,
    STOP,
    SYSTEM,
)

__all__ = ["fake", "make_openai", "oai"]  # fixtures

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
OPTIONS = {"max_tokens": 64, "temperature": 0.2, "stop": STOP}


def check_auth(kind: str, fake: FakeProvider) -> None:
    headers = {name.lower(): value for name, value in fake.seen[-1].headers.items()}
    if kind == "anthropic":
        assert headers["x-api-key"] == ANTHROPIC_KEY
    elif kind == "azure":
        assert headers["api-key"] == AZURE_KEY
    elif kind == "bedrock":
        assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    else:
        assert headers["authorization"] == f"Bearer {ACCESS_TOKEN}"


def check_body(kind: str, sent: dict[str, Any]) -> None:
    """The client's messages and options, in the provider's own API (its wire fixture)."""
    if kind == "anthropic":
        assert sent == ANTHROPIC_BODY
    elif kind == "vertex_claude":
        expected = {k: v for k, v in ANTHROPIC_BODY.items() if k != "model"}
        assert sent == {**expected, "anthropic_version": "vertex-2023-10-16"}
    elif kind == "bedrock":
        assert sent == BEDROCK_BODY
    elif kind == "vertex_gemini":
        assert sent == GEMINI_BODY
    else:  # Azure OpenAI speaks OpenAI's API: the body as the client sent it
        assert sent == {"messages": MESSAGES, **OPTIONS, "stream": False}


def sse_events(text: str) -> list[Any]:
    data = [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [orjson.loads(item) for item in data[:-1]]


@pytest.mark.parametrize("kind", list(MODELS))
async def test_chat(kind: str, make_openai: OpenAIFactory, fake: FakeProvider) -> None:
    oai = await routed(make_openai, fake, kind)
    fake.script(success(kind, stream=False))
    response = await oai.post("/v1/chat/completions", {"messages": MESSAGES, **OPTIONS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert (body["object"], body["model"]) == ("chat.completion", "duo_chat")
    assert isinstance(body["created"], int)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": ANSWER},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 25, "completion_tokens": 12, "total_tokens": 37}
    [seen] = fake.seen
    check_auth(kind, fake)
    check_body(kind, seen.json)
    # Counted in the model metrics like every other model call.
    family = MODELS[kind][2]
    registry = oai.h.app.state.gateway.metrics.registry
    value = registry.get_sample_value(
        "enclave_gateway_model_requests_total", {"family": family, "outcome": "success"}
    )
    assert value == 1


@pytest.mark.parametrize("kind", list(MODELS))
async def test_chat_streamed(kind: str, make_openai: OpenAIFactory, fake: FakeProvider) -> None:
    oai = await routed(make_openai, fake, kind)
    fake.script(success(kind, stream=True))
    response = await oai.post(
        "/v1/chat/completions", {"messages": MESSAGES, **OPTIONS, "stream": True}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert {e["model"] for e in events} == {"duo_chat"}
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == ANSWER
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["usage"]["completion_tokens"] == 12
    check_auth(kind, fake)


@pytest.mark.parametrize("kind", ["anthropic", "bedrock", "vertex_gemini", "vertex_claude"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_completions(
    kind: str, stream: bool, make_openai: OpenAIFactory, fake: FakeProvider
) -> None:
    oai = await routed(make_openai, fake, kind)
    fake.script(success(kind, stream=stream))
    response = await oai.post(
        "/v1/completions", {"prompt": "def add(a, b):", "max_tokens": 64, "stream": stream}
    )
    assert response.status_code == 200, response.text
    if stream:
        events = sse_events(response.text)
        assert {e["object"] for e in events} == {"text_completion"}
        text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
    else:
        body = response.json()
        assert (body["object"], body["model"]) == ("text_completion", "code_completions")
        text = body["choices"][0]["text"]
    assert text == ANSWER
    assert b"def add(a, b):" in fake.seen[0].body


@pytest.mark.parametrize("kind", list(MODELS))
async def test_failures_are_the_generic_errors(
    kind: str, make_openai: OpenAIFactory, fake: FakeProvider
) -> None:
    oai = await routed(make_openai, fake, kind)
    fake.script(error_reply(kind, 429, "slow down", **{"Retry-After": "20"}))
    response = await oai.chat()
    assert response.status_code == 429
    assert response.headers["retry-after"] == "20"
    assert response.json()["error"]["code"] == "model_unavailable"
    fake.script(error_reply(kind, 401, "bad key"))
    for stream in (False, True):
        response = await oai.chat(stream=stream)
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "model_unavailable"
        assert response.headers["x-request-id"] in error["message"]
        assert MODELS[kind][3] not in response.text and "bad key" not in response.text


async def test_a_mid_stream_failure_ends_with_the_error_event(
    make_openai: OpenAIFactory, fake: FakeProvider
) -> None:
    from provider_setup import cut_stream

    oai = await routed(make_openai, fake, "anthropic")
    fake.script(cut_stream("anthropic"))
    response = await oai.chat(stream=True)
    assert response.status_code == 200
    last = response.text.strip().split("\n\n")[-1]
    assert orjson.loads(last.removeprefix("data: "))["error"]["code"] == "model_unavailable"
    assert "[DONE]" not in response.text


async def test_openai_compatible_servers_get_extra_fields_as_sent(oai: OpenAIHarness) -> None:
    extra = {"seed": 7, "top_p": 0.9, "presence_penalty": 0.5, "user": "u1", "logit_bias": {}}
    response = await oai.chat(**extra)
    assert response.status_code == 200, response.text
    sent = oai.model.requests[0].json
    assert {name: sent[name] for name in extra} == extra
    assert sent["model"] == "codestral-local"
    assert sent["messages"] == [{"role": "user", "content": "add two numbers"}]
    assert MODEL_API_KEY not in response.text


async def test_one_choice_per_request(oai: OpenAIHarness) -> None:
    response = await oai.chat(n=2)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "n"
    response = await oai.post("/v1/completions", {"prompt": ["a", "b"]})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "prompt"
    for name, value in (("temperature", "hot"), ("seed", 1.5), ("stop", [1])):
        response = await oai.chat(**{name: value})
        assert response.status_code == 422, name
        assert response.json()["error"]["param"] == name
    assert oai.model.requests == []
