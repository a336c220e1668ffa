"""POST /v2/code/completions and /v2/code/generations against a fake OpenAI-compatible server."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import orjson
import pytest
from gateway_fakes import MODEL_API_KEY, Harness, HarnessFactory, call_asgi
from pydantic import BaseModel, StringConstraints, ValidationError
from starlette.types import Message

from enclave.common.net import free_port
from enclave.gateway.api.schemas import validation_detail

pytestmark = pytest.mark.anyio

PREFIX = "def add(a, b):\n"
SUFFIX = "\n\nprint(add(1, 2))\n"


# -- non-streamed completions ---------------------------------------------------------------


async def test_completion_response_and_model_call(gw: Harness) -> None:
    gw.model.finish_reason = "length"
    response = await gw.complete()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body.pop("id"), str)
    assert isinstance(body.pop("created"), int)
    assert body == {
        "model": {
            "engine": "litellm",
            "name": "custom_openai/codestral-local",
            "lang": "python",
            "tokens_consumption_metadata": {
                "input_tokens": 27,
                "output_tokens": 9,
                "max_output_tokens_used": True,
                "context_tokens_sent": 0,
                "context_tokens_used": 0,
            },
            "region": "self-hosted",
        },
        "experiments": [],
        "object": "text_completion",
        "choices": [{"text": "    return a + b\n", "index": 0, "finish_reason": "length"}],
        "metadata": {"enabled_feature_flags": []},
    }
    [call] = gw.model.requests
    assert call.path == "/v1/completions"
    assert call.headers["Authorization"] == f"Bearer {MODEL_API_KEY}"
    assert call.json == {
        "model": "codestral-local",
        "prompt": f"<s>[SUFFIX]{SUFFIX}[PREFIX]{PREFIX}",
        "max_tokens": 128,
        "n": 1,
        "stream": False,
        "temperature": 0.2,
        "stop": ["</s>", "[SUFFIX]", "[PREFIX]"],
    }


async def test_request_id_and_process_time(gw: Harness) -> None:
    headers = {**gw.headers(), "X-Request-ID": "req-123"}
    response = await gw.complete(headers=headers)
    assert response.headers["x-request-id"] == "req-123"
    assert float(response.headers["x-process-time"]) >= 0
    generated = await gw.complete(headers={**gw.headers(), "X-Request-ID": "bad id\x7f"})
    assert generated.headers["x-request-id"] not in ("", "bad id\x7f")
    error = await gw.complete(headers=gw.headers(Authorization=None))
    assert error.status_code == 401
    assert "x-request-id" in error.headers and "x-process-time" in error.headers


async def test_finish_reason_and_usage_are_reported_as_the_model_says(gw: Harness) -> None:
    gw.model.usage = None
    gw.model.finish_reason = "stop"
    body = (await gw.complete()).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["model"]["tokens_consumption_metadata"]["output_tokens"] == 0


@pytest.mark.parametrize(
    ("family", "prompt"),
    [
        ("codellama", f"<PRE> {PREFIX} <SUF>{SUFFIX} <MID>"),
        ("codegemma", f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"),
        ("deepseekcoder", f"<｜fim▁begin｜>{PREFIX}<｜fim▁hole｜>{SUFFIX}<｜fim▁end｜>"),
        ("qwen", f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"),
    ],
)
async def test_fill_in_the_middle_families(gw: Harness, family: str, prompt: str) -> None:
    response = await gw.complete(
        gw.body(model_name=family, model_identifier=f"custom_openai/{family}-x")
    )
    assert response.status_code == 200
    [call] = gw.model.requests
    assert (call.path, call.json["prompt"], call.json["model"]) == (
        "/v1/completions",
        prompt,
        f"{family}-x",
    )
    if family == "deepseekcoder":
        assert call.json["temperature"] == 0.0


@pytest.mark.parametrize("family", ["mistral", "gpt", "claude_3", "general", "llama3", "mixtral"])
async def test_chat_families_get_an_instruction(gw: Harness, family: str) -> None:
    gw.model.text = "```python\ndef add(a, b):\n    return a + b\n```"
    response = await gw.complete(gw.body(model_name=family, model_identifier="custom_openai/chat"))
    assert response.status_code == 200
    # The fence and the echoed line before the cursor are removed.
    assert response.json()["choices"][0]["text"] == "    return a + b"
    [call] = gw.model.requests
    assert call.path == "/v1/chat/completions"
    [message] = call.json["messages"]
    assert message["role"] == "user"
    assert f"{PREFIX}<CURSOR>{SUFFIX}" in message["content"]
    assert "app/calc.py" in message["content"]
    assert call.json["max_tokens"] == 128 and call.json["n"] == 1


async def test_unknown_family_is_422(gw: Harness) -> None:
    response = await gw.complete(gw.body(model_name="embedding"))
    assert response.status_code == 422
    assert response.json()["detail"].startswith(
        "model embedding is not supported by use case code completions and provider litellm"
    )
    assert gw.model.requests == []


async def test_prompt_version_1_builds_the_prompt(gw: Harness) -> None:
    response = await gw.complete(gw.body(prompt_version=1, prompt=None))
    assert response.status_code == 200
    assert gw.model.requests[0].json["prompt"] == f"<s>[SUFFIX]{SUFFIX}[PREFIX]{PREFIX}"


async def test_prompt_version_2_prompt_is_used_verbatim(gw: Harness) -> None:
    prompt = "<s>[SUFFIX]pass[PREFIX]def f():\n    "
    assert (await gw.complete(gw.body(prompt=prompt))).status_code == 200
    assert gw.model.requests[-1].json["prompt"] == prompt
    # For a chat family the pre-built prompt is the one user message.
    body = gw.body(prompt="Complete this.", model_name="mistral")
    assert (await gw.complete(body)).status_code == 200
    assert gw.model.requests[-1].json["messages"] == [{"role": "user", "content": "Complete this."}]


async def test_prompt_version_3_messages(gw: Harness) -> None:
    messages = [
        {"role": "system", "content": "You complete code."},
        {"role": "user", "content": "def add(a, b):"},
    ]
    response = await gw.complete(gw.body(prompt_version=3, prompt=messages))
    assert response.status_code == 200
    [call] = gw.model.requests
    assert call.path == "/v1/chat/completions"
    assert call.json["messages"] == messages


async def test_text_completion_identifier_forces_the_completions_api(gw: Harness) -> None:
    body = gw.body(
        model_name="mistral", model_identifier="text-completion-custom_openai/mistral-7b"
    )
    assert (await gw.complete(body)).status_code == 200
    [call] = gw.model.requests
    assert call.path == "/v1/completions"
    assert call.json["model"] == "mistral-7b"
    assert "<CURSOR>" in call.json["prompt"]


async def test_identifier_without_provider_and_endpoint_slash(gw: Harness) -> None:
    body = gw.body(model_identifier="codestral-22b", model_endpoint=gw.model.endpoint + "/")
    assert (await gw.complete(body)).status_code == 200
    [call] = gw.model.requests
    assert (call.path, call.json["model"]) == ("/v1/completions", "codestral-22b")


async def test_legacy_alias(gw: Harness) -> None:
    response = await gw.complete(path="/v2/completions")
    assert response.status_code == 200
    assert response.json()["object"] == "text_completion"


async def test_no_api_key_sends_no_authorization(gw: Harness) -> None:
    assert (await gw.complete(gw.body(model_api_key=None))).status_code == 200
    assert "Authorization" not in gw.model.requests[0].headers


async def test_language_from_extension(gw: Harness) -> None:
    body = gw.body()
    body["current_file"] = {
        **body["current_file"],
        "language_identifier": None,
        "file_name": "x.go",
    }
    assert (await gw.complete(body)).json()["model"]["lang"] == "go"


# -- validation ----------------------------------------------------------------------------


async def _detail(gw: Harness, body: Any) -> list[dict[str, Any]]:
    response = await gw.complete(body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list)
    return detail


async def test_validation_errors_are_fastapi_shaped(gw: Harness) -> None:
    body = gw.body()
    del body["current_file"]
    [error] = await _detail(gw, body)
    assert (error["type"], error["loc"], error["msg"]) == (
        "missing",
        ["body", "current_file"],
        "Field required",
    )
    # FastAPI would echo the whole body, API key included; we never do.
    assert error["input"]["model_api_key"] == "[REDACTED]"
    assert MODEL_API_KEY not in orjson.dumps(error).decode()


def test_secret_fields_are_never_echoed_whatever_their_shape() -> None:
    class Body(BaseModel):
        model_api_key: Annotated[str, StringConstraints(max_length=8)] | None = None
        nested: dict[str, Annotated[str, StringConstraints(max_length=4)]] = {}
        max_tokens: int = 1

    bad = {
        "model_api_key": "long-secret-value",
        "nested": {"api_key": "other-secret", "token": "third-secret"},
        "max_tokens": "lots",
    }
    with pytest.raises(ValidationError) as caught:
        Body.model_validate(bad)
    details = {tuple(e["loc"]): e for e in validation_detail(caught.value)}
    assert details["body", "model_api_key"]["input"] == "[REDACTED]"
    assert "ctx" not in details["body", "model_api_key"]  # ctx may carry the value too
    assert details["body", "nested", "api_key"]["input"] == "[REDACTED]"
    assert details["body", "nested", "token"]["input"] == "[REDACTED]"
    assert details["body", "max_tokens"]["input"] == "lots"  # a count, not a secret
    assert "secret" not in orjson.dumps(list(details.values())).decode()


@pytest.mark.parametrize(
    ("change", "loc", "kind"),
    [
        ({"current_file": {"file_name": "x" * 256, "content_above_cursor": ""}},
         ["body", "current_file", "file_name"], "string_too_long"),
        ({"current_file": {"file_name": "a.py", "content_above_cursor": "x" * 100_001}},
         ["body", "current_file", "content_above_cursor"], "string_too_long"),
        ({"model_name": "m" * 51}, ["body", "model_name"], "string_too_long"),
        ({"telemetry": [{}] * 11}, ["body", "telemetry"], "too_long"),
        ({"context": [{"type": "file", "name": "a", "content": ""}] * 101},
         ["body", "context"], "too_long"),
        ({"prompt_version": 4}, ["body", "prompt_version"], "literal_error"),
        ({"prompt_version": 3, "prompt": "text"}, ["body", "prompt"], "value_error"),
        ({"prompt_version": 2, "prompt": [{"role": "user", "content": "x"}]},
         ["body", "prompt"], "value_error"),
        ({"model_endpoint": None}, ["body", "model_endpoint"], "missing"),
    ],
)  # fmt: skip
async def test_field_validation(
    gw: Harness, change: dict[str, Any], loc: list[str], kind: str
) -> None:
    errors = await _detail(gw, gw.body(**change))
    assert (errors[0]["loc"], errors[0]["type"]) == (loc, kind)
    assert len(orjson.dumps(errors)) < 5000  # huge inputs are not echoed back
    assert gw.model.requests == []


async def test_body_that_is_not_json(gw: Harness) -> None:
    response = await gw.client.post(
        "/v2/code/completions", content=b"{not json", headers=gw.headers()
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


async def test_oversized_body_is_413(gw: Harness) -> None:
    response = await gw.client.post(
        "/v2/code/completions", content=b" " * (9 * 1024 * 1024), headers=gw.headers()
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"model_provider": "amazon_q"}, "model provider 'amazon_q' is not supported"),
        ({"model_identifier": "sagemaker/endpoint-1"}, "provider 'sagemaker' is not supported"),
        (
            {"model_provider": "anthropic"},
            "is for provider 'openai', not 'anthropic'",
        ),
    ],
)
async def test_unsupported_providers(gw: Harness, change: dict[str, Any], text: str) -> None:
    response = await gw.complete(gw.body(**change))
    assert response.status_code == 422
    assert text in response.json()["detail"]


async def test_unknown_routes_and_methods_answer_json(gw: Harness) -> None:
    missing = await gw.client.get("/v2/nothing")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    wrong = await gw.client.get("/v2/code/completions")
    assert (wrong.status_code, wrong.json()) == (405, {"detail": "Method Not Allowed"})


# -- model errors --------------------------------------------------------------------------


async def test_model_refusing_the_key_is_503_without_the_key(gw: Harness) -> None:
    gw.model.status = 401
    gw.model.error_body = {"error": {"message": f"Incorrect API key provided: {MODEL_API_KEY}"}}
    response = await gw.complete()
    assert response.status_code == 503
    assert response.json() == {
        "detail": f"Inference failed: the model endpoint {gw.model.endpoint} refused the API key "
        "(HTTP 401); check the API key configured for this self-hosted model"
    }
    assert MODEL_API_KEY not in response.text


async def test_model_server_error_is_503_with_its_reason(gw: Harness) -> None:
    gw.model.status = 500
    gw.model.error_body = {"error": {"message": f"CUDA out of memory ({MODEL_API_KEY})"}}
    response = await gw.complete()
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert detail.startswith(f"Inference failed: the model endpoint {gw.model.endpoint} failed")
    assert "CUDA out of memory" in detail
    assert MODEL_API_KEY not in detail


async def test_model_404_explains_the_endpoint(gw: Harness) -> None:
    gw.model.status = 404
    gw.model.error_body = {"detail": "model 'codestral-local' not found"}
    detail = (await gw.complete()).json()["detail"]
    assert "HTTP 404 for /completions" in detail
    assert "usually ending in /v1" in detail


async def test_model_rate_limit_is_passed_through(gw: Harness) -> None:
    gw.model.status = 429
    gw.model.retry_after = "7"
    response = await gw.complete()
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert "rate limiting" in response.json()["detail"]


async def test_model_unreachable_is_503(gw: Harness) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/v1"
    response = await gw.complete(gw.body(model_endpoint=endpoint))
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert detail.startswith(
        f"Inference failed: cannot connect to the model endpoint {endpoint} (connection refused)"
    )


async def test_model_answer_with_null_text(gw: Harness) -> None:
    gw.model.usage = None
    gw.model.text = None  # type: ignore[assignment]
    response = await gw.complete()
    assert response.status_code == 200
    assert response.json()["choices"][0]["text"] == ""


# -- egress ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://169.254.169.254/latest",
        "http://[fe80::1]/v1",
        "http://[::ffff:169.254.169.254]/v1",
        "http://100.100.100.200/v1",
        "http://[fd00:ec2::254]/v1",
        "ftp://model-host/v1",
        "file:///etc/passwd",
    ],
)
async def test_forbidden_model_endpoints(gw: Harness, endpoint: str) -> None:
    # The URL rules the instance applies to models: a URL breaking them is an invalid field.
    response = await gw.complete(gw.body(model_endpoint=endpoint))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "model_endpoint"]
    assert error["msg"].startswith("model_endpoint ")
    assert gw.model.requests == []


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://user:hunter2@169.254.169.254/v1",
        "http://user:hunter2@127.0.0.1:8000/v1",
        "http://hunter2@model-host/v1",
        "http://model-host/v1?key=hunter2",
        "http://model-host/v1#hunter2",
    ],
)
async def test_credentials_in_the_endpoint_are_422_and_not_shown(
    gw: Harness, endpoint: str
) -> None:
    response = await gw.complete(gw.body(model_endpoint=endpoint))
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "model_endpoint"]
    assert "hunter2" not in response.text
    assert gw.model.requests == []


# -- streaming -----------------------------------------------------------------------------


async def test_stream_over_http(gw: Harness) -> None:
    response = await gw.complete(gw.body(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.text == "".join(gw.model.chunks)
    assert "data:" not in response.text
    [call] = gw.model.requests
    assert call.json["stream"] is True


async def test_stream_relays_each_chunk_as_it_comes(gw: Harness) -> None:
    messages = await call_asgi(gw, gw.body(stream=True))
    start, *bodies = messages
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    chunks = [m["body"].decode() for m in bodies if m.get("more_body")]
    assert chunks == gw.model.chunks  # one message per model delta, in order, unbuffered
    assert bodies[-1]["more_body"] is False


async def test_stream_of_a_chat_family_strips_fences(gw: Harness) -> None:
    gw.model.chunks = ["```py", "thon\n", "    return", " a + b\n", "``", "`\n"]
    body = gw.body(stream=True, model_name="mistral")
    response = await gw.complete(body)
    assert response.text == "    return a + b"
    assert gw.model.requests[0].path == "/v1/chat/completions"


async def test_client_disconnect_cancels_the_upstream(gw: Harness) -> None:
    gw.model.endless_stream = True
    disconnect = asyncio.Event()

    def first_body(message: Message) -> None:
        if message.get("body"):
            disconnect.set()

    async with asyncio.timeout(10):  # hang guard only
        messages = await call_asgi(gw, gw.body(stream=True), disconnect, first_body)
        await gw.model.stream_closed.wait()
    assert messages[-1].get("more_body") is True  # the response never claimed to be complete


async def test_stream_upstream_errors_before_the_first_byte(gw: Harness) -> None:
    gw.model.status = 401
    response = await gw.complete(gw.body(stream=True))
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert "refused the API key" in response.json()["detail"]


# -- generations ---------------------------------------------------------------------------


async def test_generation_sends_the_prompt_verbatim(gw: Harness) -> None:
    gw.model.text = "<new_code>\ndef sub(a, b):\n    return a - b\n"
    prompt = "Write a function sub(a, b) in <new_code> tags."
    body = gw.body(prompt=prompt, prompt_id="code_suggestions/generations")
    response = await gw.complete(body, path="/v2/code/generations")
    assert response.status_code == 200
    answer = response.json()
    assert answer["model"]["engine"] == "litellm"
    assert answer["model"]["name"] == "custom_openai/codestral"
    assert answer["choices"][0]["text"] == "def sub(a, b):\n    return a - b\n"
    [call] = gw.model.requests
    assert call.path == "/v1/chat/completions"
    assert call.json == {
        "model": "codestral-local",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 2048,
        "n": 1,
        "stream": False,
        "temperature": 0.2,
        "top_p": 0.95,
        "stop": ["</new_code>"],
    }


async def test_generation_without_prompt_and_streamed(gw: Harness) -> None:
    gw.model.chunks = ["<new", "_code>\n", "x = 1\n"]
    response = await gw.complete(gw.body(stream=True), path="/v2/code/generations")
    assert response.text == "x = 1\n"
    content = gw.model.requests[0].json["messages"][0]["content"]
    assert "<CURSOR>" in content and "app/calc.py" in content


async def test_harness_issuer_is_untouched_by_model_errors(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness()
    gw.model.status = 500
    assert (await gw.complete()).status_code == 503
    assert (await gw.complete()).status_code == 503
    assert gw.issuer.jwks_hits == 1


async def test_a_422_echoes_an_integer_past_64_bits_as_sent(gw: Harness) -> None:
    # orjson stops at 64-bit integers: the echo used to fail into a 500.
    huge = -9223372247141013987
    response = await gw.complete(gw.body(prompt_version=huge))
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert (error["loc"], error["input"]) == (["body", "prompt_version"], huge)
    assert gw.model.requests == []
