"""Provider clients and requests wired to a :class:`FakeProvider`, for the provider tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from provider_fakes import FakeProvider, Reply, json_reply
from wire_fixtures import (
    ANTHROPIC_MESSAGE,
    ANTHROPIC_MODEL,
    AZURE_COMPLETION,
    AZURE_DEPLOYMENT,
    BEDROCK_MODEL,
    GEMINI_ANSWER,
    GEMINI_MODEL,
    QUESTION,
    STOP,
    SYSTEM,
    TOKEN_ANSWER,
    VERTEX_CLAUDE_MODEL,
    VERTEX_LOCATION,
    VERTEX_PROJECT,
    anthropic_stream,
    azure_stream,
    bedrock_reply,
    gemini_stream,
)

from enclave.common.http1 import Http1Client
from enclave.gateway.models.anthropic import AnthropicClient
from enclave.gateway.models.azure import AzureOpenAIClient
from enclave.gateway.models.base import ChatMessage, ModelRequest
from enclave.gateway.models.bedrock import BedrockClient
from enclave.gateway.models.http_provider import HttpProvider
from enclave.gateway.models.openai_compat import OpenAICompatClient
from enclave.gateway.models.vertex import TokenSource, VertexClient

ANTHROPIC_KEY: Final = "sk-ant-api03-test-key-0123456789"
AZURE_KEY: Final = "azure-test-key-0123456789abcdef"
AWS_ACCESS_KEY: Final = "AKIDEXAMPLE"
AWS_SECRET_KEY: Final = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
BEDROCK_KEY: Final = f"{AWS_ACCESS_KEY}:{AWS_SECRET_KEY}"
OPENAI_KEY: Final = "sk-test-openai-0123456789"

# Each provider as the tests use it: the ids are also the identifier prefixes.
KINDS: Final = ("openai", "anthropic", "azure", "bedrock", "vertex_gemini", "vertex_claude")


def service_account_key() -> tuple[str, rsa.RSAPrivateKey]:
    """A service-account key file's JSON (as Google issues it) and its private key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": VERTEX_PROJECT,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": pem,
        "client_email": f"enclave@{VERTEX_PROJECT}.iam.gserviceaccount.com",
        "client_id": "100000000000000000001",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return orjson.dumps(info).decode(), private


SA_KEY, SA_PRIVATE = service_account_key()


async def no_sleep(seconds: float) -> None:
    return None


@dataclass
class Setup:
    kind: str
    client: HttpProvider
    endpoint: str
    model: str
    api_key: str
    provider: str  # ModelRequest.provider

    def request(self, api: str = "chat", **changes: Any) -> ModelRequest:
        fields: dict[str, Any] = {
            "endpoint": self.endpoint,
            "model": self.model,
            "api": api,
            "api_key": self.api_key,
            "max_tokens": 64,
            "temperature": 0.2,
            "stop": tuple(STOP),
            "provider": self.provider,
        }
        if api == "chat":
            fields["messages"] = (ChatMessage("system", SYSTEM), ChatMessage("user", QUESTION))
        else:
            fields["prompt"] = QUESTION
        fields.update(changes)
        return ModelRequest(**fields)


# The token session of setup()'s Vertex clients (the token endpoint is called over aiohttp,
# like the issuers'), opened on first use; the tests' client fixture closes it.
OPEN_TOKEN_SESSIONS: list[aiohttp.ClientSession] = []


def token_session() -> aiohttp.ClientSession:
    if not OPEN_TOKEN_SESSIONS:
        OPEN_TOKEN_SESSIONS.append(aiohttp.ClientSession())
    return OPEN_TOKEN_SESSIONS[0]


@asynccontextmanager
async def model_client() -> AsyncIterator[Http1Client]:
    """The gateway's model-call client for one test (and the token session, closed after)."""
    async with Http1Client() as client:
        yield client
    while OPEN_TOKEN_SESSIONS:
        await OPEN_TOKEN_SESSIONS.pop().close()


def setup(
    kind: str,
    session: Http1Client,
    fake: FakeProvider,
    *,
    timeout_s: float = 5,
    retries: int = 2,
    clock: Callable[[], float] | None = None,
) -> Setup:
    options: dict[str, Any] = {"retries": retries, "backoff_s": 0, "sleep": no_sleep}
    base = fake.base
    if kind == "openai":
        client: HttpProvider = OpenAICompatClient(session, timeout_s, **options)
        return Setup(kind, client, f"{base}/v1", "codestral", OPENAI_KEY, "openai")
    if kind == "anthropic":
        client = AnthropicClient(session, timeout_s, **options)
        return Setup(kind, client, base, ANTHROPIC_MODEL, ANTHROPIC_KEY, "anthropic")
    if kind == "azure":
        client = AzureOpenAIClient(session, timeout_s, api_version="2024-10-21", **options)
        return Setup(kind, client, base, AZURE_DEPLOYMENT, AZURE_KEY, "azure")
    if kind == "bedrock":
        client = BedrockClient(session, timeout_s, region="us-east-1", **options)
        return Setup(kind, client, base, BEDROCK_MODEL, BEDROCK_KEY, "bedrock")
    tokens = TokenSource(
        token_session, f"{base}/token", timeout_s, **({"clock": clock} if clock else {})
    )
    fake.token_replies = [json_reply(TOKEN_ANSWER)]
    client = VertexClient(session, timeout_s, tokens=tokens, **options)
    endpoint = f"{base}/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}"
    model = GEMINI_MODEL if kind == "vertex_gemini" else VERTEX_CLAUDE_MODEL
    return Setup(kind, client, endpoint, model, SA_KEY, "vertex_ai")


def success(kind: str, stream: bool) -> Reply:
    """The provider's normal answer (the wire fixtures), whole or streamed."""
    if kind in ("anthropic", "vertex_claude"):
        return (
            Reply(content_type="text/event-stream", chunks=anthropic_stream())
            if stream
            else json_reply(ANTHROPIC_MESSAGE)
        )
    if kind in ("openai", "azure"):
        return (
            Reply(content_type="text/event-stream", chunks=azure_stream())
            if stream
            else json_reply(AZURE_COMPLETION)
        )
    if kind == "bedrock":
        return bedrock_reply(stream)
    return (
        Reply(content_type="text/event-stream", chunks=gemini_stream())
        if stream
        else json_reply(GEMINI_ANSWER)
    )


def cut_stream(kind: str) -> Reply:
    """A stream that stops after its first two chunks, connection closed."""
    full = success(kind, stream=True)
    assert full.chunks is not None
    return Reply(content_type=full.content_type, chunks=full.chunks[:2], cut=True)


def error_reply(kind: str, status: int, message: str = "upstream trouble", **headers: str) -> Reply:
    """An error answer in the provider's own error shape."""
    if kind in ("anthropic", "vertex_claude"):
        kinds = {429: "rate_limit_error", 401: "authentication_error", 404: "not_found_error"}
        body: Any = {
            "type": "error",
            "error": {"type": kinds.get(status, "api_error"), "message": message},
        }
    elif kind == "bedrock":
        types = {
            429: "ThrottlingException",
            403: "AccessDeniedException",
            404: "ResourceNotFoundException",
            400: "ValidationException",
        }
        headers = {
            "x-amzn-ErrorType": f"{types.get(status, 'InternalServerException')}:http://internal.amazon.com/coral/com.amazon.bedrock/",
            **headers,
        }
        body = {"message": message}
    elif kind == "vertex_gemini":
        body = {
            "error": {
                "code": status,
                "message": message,
                "status": "RESOURCE_EXHAUSTED" if status == 429 else "INTERNAL",
            }
        }
    else:
        body = {"error": {"message": message, "type": "server_error", "code": str(status)}}
    return json_reply(body, status, **headers)
