"""Each provider's request as sent (path, query, headers, signature, body) and answers as read."""

from __future__ import annotations

import asyncio
import datetime
import gc
import hashlib
import hmac
import sys
from collections.abc import AsyncIterator
from typing import Any

import jwt
import orjson
import pytest
from provider_fakes import FakeProvider, Reply, bedrock_event, bedrock_exception
from provider_setup import (
    ANTHROPIC_KEY,
    AWS_ACCESS_KEY,
    AWS_SECRET_KEY,
    AZURE_KEY,
    BEDROCK_KEY,
    KINDS,
    SA_PRIVATE,
    Setup,
    model_client,
    setup,
    success,
)
from wire_fixtures import (
    ACCESS_TOKEN,
    ANSWER,
    ANTHROPIC_BODY,
    ANTHROPIC_STREAM_ERROR,
    AZURE_BODY,
    AZURE_DEPLOYMENT,
    BEDROCK_BODY,
    BEDROCK_PATH,
    GEMINI_BODY,
    GEMINI_MODEL,
    QUESTION,
    VERTEX_CLAUDE_MODEL,
    VERTEX_LOCATION,
    VERTEX_PROJECT,
    anthropic_stream,
)

from enclave.common.http1 import Http1Client
from enclave.gateway.models.base import ModelBadResponse, ModelRateLimited, ModelServerError, Usage

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    server = FakeProvider()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def session() -> AsyncIterator[Http1Client]:
    async with model_client() as client:
        yield client


async def collect(s: Setup, **changes: Any) -> tuple[str, Any]:
    stream = await s.client.stream(s.request(**changes))
    try:
        text = "".join([delta async for delta in stream])
    finally:
        await stream.aclose()
    return text, stream


# -- every provider: whole and streamed answers ------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_whole_answer(kind: str, fake: FakeProvider, session: Http1Client) -> None:
    s = setup(kind, session, fake)
    fake.script(success(kind, stream=False))
    result = await s.client.complete(s.request())
    assert (result.text, result.finish_reason) == (ANSWER, "stop")
    assert result.usage == Usage(25, 12)


@pytest.mark.parametrize("kind", KINDS)
async def test_streamed_answer(kind: str, fake: FakeProvider, session: Http1Client) -> None:
    s = setup(kind, session, fake)
    fake.script(success(kind, stream=True))
    text, stream = await collect(s)
    assert text == ANSWER
    assert (stream.finish_reason, stream.usage) == ("stop", Usage(25, 12))


@pytest.mark.parametrize("kind", KINDS)
async def test_a_read_stream_leaves_no_generator_to_the_loops_finalizer(
    kind: str, fake: FakeProvider, session: Http1Client
) -> None:
    # Readers stop at the stream's end event ([DONE], message_stop, ...) before the body's
    # end: the event and line generators they leave must be closed there, not by the loop's
    # finalizer hook (a task woken through call_soon_threadsafe per generator, uvloop).
    finalized: list[str] = []
    hooks = sys.get_asyncgen_hooks()

    def finalizer(agen: Any) -> None:
        finalized.append(agen.ag_code.co_qualname)
        if hooks.finalizer is not None:
            hooks.finalizer(agen)

    s = setup(kind, session, fake)
    fake.script(success(kind, stream=True))
    sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=finalizer)
    try:
        text, _ = await collect(s)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        sys.set_asyncgen_hooks(*hooks)
    assert text == ANSWER
    assert finalized == []


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_answered_whole_is_relayed(
    kind: str, fake: FakeProvider, session: Http1Client
) -> None:
    # A server (or proxy) that ignores "stream" and answers JSON: one chunk, same text.
    s = setup(kind, session, fake)
    fake.script(success(kind, stream=False))
    text, _ = await collect(s)
    assert text == ANSWER


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "openai"])
async def test_raw_prompt_becomes_one_user_turn(
    kind: str, fake: FakeProvider, session: Http1Client
) -> None:
    # Chat-only providers: a completions-API prompt (FIM templates) is sent as the user turn.
    s = setup(kind, session, fake)
    fake.script(success(kind, stream=False))
    await s.client.complete(s.request(api="completions"))
    assert QUESTION in fake.seen[-1].body.decode()
    assert b"system" not in fake.seen[-1].body.lower().replace(b"system_fingerprint", b"")


# -- Anthropic ----------------------------------------------------------------------------------


async def test_anthropic_request_as_sent(fake: FakeProvider, session: Http1Client) -> None:
    s = setup("anthropic", session, fake)
    fake.script(success("anthropic", False), success("anthropic", True))
    await s.client.complete(s.request())
    await collect(s)
    whole, streamed = fake.seen
    assert (whole.method, whole.path, whole.query) == ("POST", "/v1/messages", "")
    assert whole.headers["x-api-key"] == ANTHROPIC_KEY
    assert whole.headers["anthropic-version"] == "2023-06-01"
    assert whole.headers["Content-Type"] == "application/json"
    assert "Authorization" not in whole.headers
    assert whole.json == ANTHROPIC_BODY
    assert streamed.json == {**ANTHROPIC_BODY, "stream": True}
    assert streamed.headers["Accept"] == "text/event-stream"


async def test_anthropic_endpoint_with_v1_and_turn_order(
    fake: FakeProvider, session: Http1Client
) -> None:
    from enclave.gateway.models.base import ChatMessage

    s = setup("anthropic", session, fake)
    fake.script(success("anthropic", False))
    messages = (
        ChatMessage("assistant", "Hi."),
        ChatMessage("user", "a"),
        ChatMessage("user", "b"),
    )
    await s.client.complete(s.request(endpoint=f"{fake.base}/v1", messages=messages))
    assert fake.seen[0].path == "/v1/messages"
    # The API wants a user turn first and alternating roles.
    assert fake.seen[0].json["messages"] == [
        {"role": "user", "content": "."},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "a\n\nb"},
    ]


async def test_anthropic_length_and_stream_error(fake: FakeProvider, session: Http1Client) -> None:
    s = setup("anthropic", session, fake)
    fake.script(Reply(content_type="text/event-stream", chunks=anthropic_stream("max_tokens")))
    _, stream = await collect(s)
    assert stream.finish_reason == "length"
    fake.script(Reply(content_type="text/event-stream", chunks=ANTHROPIC_STREAM_ERROR))
    with pytest.raises(ModelServerError, match="failed while streaming: Overloaded"):
        await collect(s)


# -- Azure OpenAI --------------------------------------------------------------------------------


async def test_azure_request_as_sent(fake: FakeProvider, session: Http1Client) -> None:
    s = setup("azure", session, fake)
    fake.script(success("azure", False), success("azure", True))
    await s.client.complete(s.request())
    await collect(s)
    whole, streamed = fake.seen
    assert whole.path == f"/openai/deployments/{AZURE_DEPLOYMENT}/chat/completions"
    assert whole.query == "api-version=2024-10-21"
    assert whole.headers["api-key"] == AZURE_KEY
    assert "Authorization" not in whole.headers
    assert whole.json == AZURE_BODY
    assert streamed.json == {
        **AZURE_BODY,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_azure_entra_token_and_completions_path(
    fake: FakeProvider, session: Http1Client
) -> None:
    s = setup("azure", session, fake)
    fake.script(success("openai", False))
    entra = "Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.entra.token"
    fake.script(Reply(body=orjson.dumps({"choices": [{"text": "x", "finish_reason": "stop"}]})))
    await s.client.complete(
        s.request(api="completions", api_key=entra, endpoint=f"{fake.base}/openai")
    )
    [seen] = fake.seen
    assert seen.path == f"/openai/deployments/{AZURE_DEPLOYMENT}/completions"
    assert seen.headers["Authorization"] == entra
    assert "api-key" not in seen.headers


# -- Amazon Bedrock ------------------------------------------------------------------------------


def _sigv4(seen: Any, region: str, when: str, signed: list[str]) -> str:
    """The Authorization header by AWS's "Signature Version 4 signing process", independently."""
    canonical_path = _double_encoded(seen.raw_path)
    headers = {name.lower(): value for name, value in seen.headers.items()}
    canonical = "\n".join(
        [
            "POST",
            canonical_path,
            "",
            "".join(f"{name}:{headers[name].strip()}\n" for name in signed),
            ";".join(signed),
            hashlib.sha256(seen.body).hexdigest(),
        ]
    )
    scope = f"{when[:8]}/{region}/bedrock/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", when, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{AWS_SECRET_KEY}".encode()
    for part in (when[:8], region, "bedrock", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        f"AWS4-HMAC-SHA256 Credential={AWS_ACCESS_KEY}/{scope}, "
        f"SignedHeaders={';'.join(signed)}, Signature={signature}"
    )


def _double_encoded(raw_path: str) -> str:
    # Every AWS service but S3 signs the path URI-encoded twice: "%3A" becomes "%253A".
    return raw_path.replace("%", "%25")


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> str:
    moment = datetime.datetime(2024, 5, 1, 12, 0, 0)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda *a, **k: moment)
    return "20240501T120000Z"


async def test_bedrock_request_as_sent_and_signed(
    fake: FakeProvider, session: Http1Client, fixed_clock: str
) -> None:
    s = setup("bedrock", session, fake)
    fake.script(success("bedrock", False), success("bedrock", True))
    await s.client.complete(s.request())
    await collect(s)
    whole, streamed = fake.seen
    assert whole.raw_path == BEDROCK_PATH  # the model id's ":" encoded once on the wire
    assert streamed.raw_path == BEDROCK_PATH.replace("/converse", "/converse-stream")
    assert whole.json == BEDROCK_BODY
    assert streamed.json == BEDROCK_BODY
    assert whole.headers["X-Amz-Date"] == fixed_clock
    assert streamed.headers["Accept"] == "application/vnd.amazon.eventstream"
    signed = ["accept", "content-type", "host", "x-amz-date"]
    for seen in (whole, streamed):
        assert seen.headers["Authorization"] == _sigv4(seen, "us-east-1", fixed_clock, signed)
    assert AWS_SECRET_KEY not in str(whole.headers)


async def test_bedrock_session_token_region_from_endpoint_and_api_key(
    fake: FakeProvider, session: Http1Client, fixed_clock: str
) -> None:
    s = setup("bedrock", session, fake)
    fake.script(success("bedrock", False))
    await s.client.complete(s.request(api_key=f"{BEDROCK_KEY}:session-token-1"))
    seen = fake.seen[-1]
    assert seen.headers["X-Amz-Security-Token"] == "session-token-1"
    assert "x-amz-security-token" in seen.headers["Authorization"]
    # A Bedrock API key (no colon) is a bearer token, not signed.
    await s.client.complete(s.request(api_key="ABSKQmVkcm9ja0FQSUtleS1leGFtcGxl"))
    assert fake.seen[-1].headers["Authorization"] == "Bearer ABSKQmVkcm9ja0FQSUtleS1leGFtcGxl"
    assert "X-Amz-Date" not in fake.seen[-1].headers


async def test_bedrock_region_in_endpoint_host_wins() -> None:
    from enclave.gateway.models.bedrock import BedrockClient

    async with Http1Client() as client_session:
        client = BedrockClient(client_session, 5, region="us-east-1")
        s = Setup(
            "bedrock",
            client,
            "https://bedrock-runtime.eu-west-3.amazonaws.com",
            "m",
            BEDROCK_KEY,
            "bedrock",
        )
        _, _, headers = client.build(s.request(), stream=False)
        assert "/eu-west-3/bedrock/aws4_request" in headers["Authorization"]
        vpce = "https://vpce-0a1b-c2d3.bedrock-runtime.ap-south-1.vpce.amazonaws.com"
        _, _, headers = client.build(s.request(endpoint=vpce), stream=False)
        assert "/ap-south-1/bedrock/aws4_request" in headers["Authorization"]


async def test_bedrock_stream_exception_and_corrupt_frame(
    fake: FakeProvider, session: Http1Client
) -> None:
    s = setup("bedrock", session, fake)
    start = bedrock_event("messageStart", {"role": "assistant"})
    eventstream = "application/vnd.amazon.eventstream"
    fake.script(
        Reply(
            content_type=eventstream,
            chunks=[start, bedrock_exception("throttlingException", "slow down")],
        )
    )
    with pytest.raises(ModelRateLimited):
        await collect(s)
    fake.script(
        Reply(
            content_type=eventstream,
            chunks=[start, bedrock_exception("modelStreamErrorException", "boom")],
        )
    )
    with pytest.raises(ModelServerError, match="modelStreamErrorException"):
        await collect(s)
    corrupt = bytearray(start)
    corrupt[-1] ^= 0xFF  # message CRC no longer matches
    fake.script(Reply(content_type=eventstream, chunks=[bytes(corrupt)]))
    with pytest.raises(ModelBadResponse, match="corrupt event-stream frame"):
        await collect(s)


# -- Google Vertex AI -------------------------------------------------------------------------


async def test_vertex_gemini_request_as_sent(fake: FakeProvider, session: Http1Client) -> None:
    s = setup("vertex_gemini", session, fake)
    fake.script(success("vertex_gemini", False), success("vertex_gemini", True))
    await s.client.complete(s.request())
    await collect(s)
    whole, streamed = fake.seen
    prefix = f"/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}/publishers/google/models"
    assert whole.path == f"{prefix}/{GEMINI_MODEL}:generateContent"
    assert (streamed.path, streamed.query) == (
        f"{prefix}/{GEMINI_MODEL}:streamGenerateContent",
        "alt=sse",
    )
    assert whole.json == GEMINI_BODY == streamed.json
    assert whole.headers["Authorization"] == f"Bearer {ACCESS_TOKEN}"
    # One token exchange for both calls (cached until shortly before it expires).
    [exchange] = fake.token_requests
    form = dict(pair.split("=", 1) for pair in exchange.body.decode().split("&"))
    assert form["grant_type"] == "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
    claims = jwt.decode(
        form["assertion"],
        SA_PRIVATE.public_key(),
        algorithms=["RS256"],
        audience=f"{fake.base}/token",
    )
    assert claims["iss"] == f"enclave@{VERTEX_PROJECT}.iam.gserviceaccount.com"
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert claims["exp"] - claims["iat"] == 3600


async def test_vertex_claude_request_as_sent(fake: FakeProvider, session: Http1Client) -> None:
    s = setup("vertex_claude", session, fake)
    fake.script(success("vertex_claude", False), success("vertex_claude", True))
    await s.client.complete(s.request())
    await collect(s)
    whole, streamed = fake.seen
    prefix = (
        f"/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}/publishers/anthropic/models"
    )
    assert whole.path == f"{prefix}/{VERTEX_CLAUDE_MODEL}:rawPredict"
    assert streamed.path == f"{prefix}/{VERTEX_CLAUDE_MODEL}:streamRawPredict"
    body = {k: v for k, v in ANTHROPIC_BODY.items() if k != "model"}
    assert whole.json == {**body, "anthropic_version": "vertex-2023-10-16"}
    assert streamed.json == {**body, "anthropic_version": "vertex-2023-10-16", "stream": True}
    assert "x-api-key" not in whole.headers


async def test_vertex_access_token_is_used_as_is_and_token_refusal(
    fake: FakeProvider, session: Http1Client
) -> None:
    from provider_fakes import json_reply

    from enclave.gateway.models.base import ModelAuthRefused

    s = setup("vertex_gemini", session, fake)
    fake.script(success("vertex_gemini", False))
    await s.client.complete(s.request(api_key="ya29.given-token"))
    assert fake.seen[-1].headers["Authorization"] == "Bearer ya29.given-token"
    assert fake.token_requests == []
    fake.token_replies = [json_reply({"error": "invalid_grant", "error_description": "bad"}, 400)]
    with pytest.raises(ModelAuthRefused, match="refused the Vertex AI service-account key"):
        await s.client.complete(s.request())


async def test_vertex_without_token_url_never_calls_google(session: Http1Client) -> None:
    from enclave.gateway.models.base import ModelAuthRefused
    from enclave.gateway.models.vertex import TokenSource

    tokens = TokenSource(lambda: session, None, 5)
    from provider_setup import SA_KEY

    with pytest.raises(ModelAuthRefused, match="ENCLAVE_GATEWAY__VERTEX_TOKEN_URL"):
        await tokens.token(SA_KEY)


# -- model lists and health ---------------------------------------------------------------------
# SOURCE: OpenAI "List models" (GET /v1/models), Anthropic "List Models" (GET /v1/models),
# Azure OpenAI "Models - List" (GET /openai/models?api-version=…): all {"data": [{"id"}]}.

MODEL_LIST = {"object": "list", "data": [{"id": "model-a", "object": "model"}, {"id": "model-b"}]}


@pytest.mark.parametrize(
    ("kind", "path", "query", "auth"),
    [
        ("openai", "/v1/models", "", ("Authorization", "Bearer sk-test-openai-0123456789")),
        ("anthropic", "/v1/models", "", ("x-api-key", ANTHROPIC_KEY)),
        ("azure", "/openai/models", "api-version=2024-10-21", ("api-key", AZURE_KEY)),
    ],
)
async def test_model_list(
    kind: str,
    path: str,
    query: str,
    auth: tuple[str, str],
    fake: FakeProvider,
    session: Http1Client,
) -> None:
    from provider_fakes import json_reply

    s = setup(kind, session, fake)
    fake.script(json_reply(MODEL_LIST))
    assert await s.client.list_models(s.request()) == ["model-a", "model-b"]
    await s.client.health(s.request())
    seen = fake.seen[0]
    assert (seen.method, seen.path, seen.query) == ("GET", path, query)
    assert seen.headers[auth[0]] == auth[1]


@pytest.mark.parametrize("kind", ["bedrock", "vertex_gemini", "vertex_claude"])
async def test_health_without_a_list_is_a_one_token_answer(
    kind: str, fake: FakeProvider, session: Http1Client
) -> None:
    from enclave.gateway.models.base import ModelAuthRefused

    s = setup(kind, session, fake)
    assert await s.client.list_models(s.request()) == [s.model]
    assert fake.seen == []  # the control-plane list lives elsewhere: nothing is called
    fake.script(success(kind, stream=False))
    await s.client.health(s.request())
    assert fake.seen[0].method == "POST"
    assert b"ping" in fake.seen[0].body
    from provider_setup import error_reply

    fake.script(error_reply(kind, 403, "denied"))
    with pytest.raises(ModelAuthRefused):
        await s.client.health(s.request())


async def test_anthropic_overloaded_529_is_retried(
    fake: FakeProvider, session: Http1Client
) -> None:
    from provider_setup import error_reply

    s = setup("anthropic", session, fake)
    fake.script(error_reply("anthropic", 529, "Overloaded"), success("anthropic", False))
    assert (await s.client.complete(s.request())).text == ANSWER
    assert len(fake.seen) == 2


async def test_bedrock_model_timeout_is_a_timeout(fake: FakeProvider, session: Http1Client) -> None:
    from provider_fakes import json_reply

    from enclave.gateway.models.base import ModelTimeout

    s = setup("bedrock", session, fake)
    error_type = "ModelTimeoutException:http://internal.amazon.com/coral/com.amazon.bedrock/"
    fake.script(
        json_reply({"message": "Model has timed out"}, 408, **{"x-amzn-ErrorType": error_type})
    )
    with pytest.raises(ModelTimeout, match="took too long"):
        await s.client.complete(s.request())
