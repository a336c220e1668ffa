"""The OpenAI-compatible API with its features routed to a fake provider of each kind.

Reuses the provider tests' loopback fake and wire fixtures (``tests/unit/gateway/providers``),
put on ``sys.path`` here. (A plain module, not a test module, so test modules can import it.)
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from openai_harness import OpenAIFactory, OpenAIHarness, available

sys.path.insert(0, str(Path(__file__).parents[1] / "providers"))

from provider_fakes import FakeProvider, json_reply
from provider_setup import ANTHROPIC_KEY, AZURE_KEY, BEDROCK_KEY, OPENAI_KEY, SA_KEY
from wire_fixtures import (
    ANTHROPIC_MODEL,
    AZURE_DEPLOYMENT,
    BEDROCK_MODEL,
    GEMINI_MODEL,
    TOKEN_ANSWER,
    VERTEX_CLAUDE_MODEL,
    VERTEX_LOCATION,
    VERTEX_PROJECT,
)

from enclave.common import wire

# kind -> (provider field on the instance, identifier, family, key)
MODELS: dict[str, tuple[str, str, str, str]] = {
    "anthropic": ("anthropic", f"anthropic/{ANTHROPIC_MODEL}", "claude_3", ANTHROPIC_KEY),
    "azure": ("azure_openai", f"azure/{AZURE_DEPLOYMENT}", "gpt", AZURE_KEY),
    "bedrock": ("bedrock", f"bedrock/{BEDROCK_MODEL}", "claude_3", BEDROCK_KEY),
    "vertex_gemini": ("vertex_ai", f"vertex_ai/{GEMINI_MODEL}", "general", SA_KEY),
    "vertex_claude": ("vertex_ai", f"vertex_ai/{VERTEX_CLAUDE_MODEL}", "claude_3", SA_KEY),
}
# An OpenAI-compatible server too (its endpoint is the API base, /v1).
OPENAI_MODEL: tuple[str, str, str, str] = ("api", "custom_openai/gpt-4o", "gpt", OPENAI_KEY)


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    server = FakeProvider()
    await server.start()
    yield server
    await server.stop()


async def routed(make_openai: OpenAIFactory, fake: FakeProvider, kind: str) -> OpenAIHarness:
    """A gateway whose duo_chat and code_completions are served by ``kind``'s model."""
    oai = await make_openai(
        load=False,
        bedrock_region="us-east-1",
        vertex_project=VERTEX_PROJECT,
        vertex_location=VERTEX_LOCATION,
        vertex_token_url=f"{fake.base}/token",
        model_retry_backoff_s=0,
    )
    provider, identifier, family, key = OPENAI_MODEL if kind == "openai" else MODELS[kind]
    endpoint = f"{fake.base}/v1" if kind == "openai" else fake.base
    model = {"provider": provider, "identifier": identifier, "family": family, "api_key": key}
    oai.issuer.routes = {
        "routes": [
            available("duo_chat", wire.UP_DUO_CHAT, endpoint, **model),
            available("code_completions", wire.UP_COMPLETE_CODE, endpoint, **model),
        ]
    }
    assert await oai.table.refresh()
    assert oai.table.routes()["duo_chat"].available, oai.table.routes()["duo_chat"].message
    fake.token_replies = [json_reply(TOKEN_ANSWER)]
    return oai
