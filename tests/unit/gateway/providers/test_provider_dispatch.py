"""Which provider serves a model: identifier prefixes, the instance's provider field, defaults."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from enclave.gateway.code_suggestions.pipeline import PlanError, resolve_target
from enclave.gateway.models.base import ModelError, ModelRequest
from enclave.gateway.models.providers import (
    ProviderRouter,
    ProviderSettings,
    install_settings,
)


@pytest.fixture(autouse=True)
def cloud_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_REGION_NAME"):
        monkeypatch.delenv(name, raising=False)
    install_settings(ProviderSettings(bedrock_region="eu-central-1", vertex_project="p-1"))
    yield
    install_settings(ProviderSettings())


@pytest.mark.parametrize(
    ("identifier", "provider", "model", "text"),
    [
        ("custom_openai/codestral", "openai", "codestral", False),
        ("openai/gpt-4o", "openai", "gpt-4o", False),
        ("hosted_vllm/qwen", "openai", "qwen", False),
        ("text-completion-openai/starcoder", "openai", "starcoder", True),
        ("Qwen/Qwen2.5-Coder", "openai", "Qwen/Qwen2.5-Coder", False),
        ("anthropic/claude-3-5-sonnet", "anthropic", "claude-3-5-sonnet", False),
        ("azure/gpt-4o-prod", "azure", "gpt-4o-prod", False),
        (
            "bedrock/us.anthropic.claude-3-7-sonnet-v1:0",
            "bedrock",
            "us.anthropic.claude-3-7-sonnet-v1:0",
            False,
        ),
        ("vertex_ai/gemini-1.5-pro", "vertex_ai", "gemini-1.5-pro", False),
    ],
)
def test_identifier_prefix_picks_the_provider(
    identifier: str, provider: str, model: str, text: bool
) -> None:
    target = resolve_target("litellm", None, "http://10.0.0.5:8000/v1", "k", identifier)
    assert (target.provider, target.model, target.force_text_completion) == (provider, model, text)


def test_endpoints_of_providers_that_need_none() -> None:
    bedrock = resolve_target(None, None, None, "a:b", "bedrock/anthropic.claude-v2")
    assert bedrock.endpoint == "https://bedrock-runtime.eu-central-1.amazonaws.com"
    arn = "arn:aws:bedrock:ap-northeast-1:123456789012:inference-profile/apac.anthropic.claude"
    assert resolve_target(None, None, "", "a:b", f"bedrock/{arn}").endpoint == (
        "https://bedrock-runtime.ap-northeast-1.amazonaws.com"
    )
    vertex = resolve_target(None, None, None, "t", "vertex_ai/gemini-1.5-pro")
    assert vertex.endpoint == (
        "https://us-central1-aiplatform.googleapis.com/v1/projects/p-1/locations/us-central1"
    )
    proxy = resolve_target(None, None, "https://vertex.internal", "t", "vertex_ai/gemini")
    assert proxy.endpoint == "https://vertex.internal/v1/projects/p-1/locations/us-central1"
    assert resolve_target(None, None, None, "k", "anthropic/claude").endpoint == (
        "https://api.anthropic.com"
    )


def test_provider_field_and_identifier_must_agree() -> None:
    target = resolve_target("bedrock", None, None, "a:b", "anthropic.claude-v2")
    assert target.provider == "bedrock"
    assert (
        resolve_target("azure_openai", None, "https://r.openai.azure.com", "k", "gpt").provider
        == "azure"
    )
    with pytest.raises(PlanError, match="is for provider 'bedrock', not 'vertex_ai'"):
        resolve_target("vertex_ai", None, None, "k", "bedrock/anthropic.claude-v2")


def test_missing_region_is_a_setup_error() -> None:
    install_settings(ProviderSettings())
    with pytest.raises(PlanError, match="ENCLAVE_GATEWAY__BEDROCK_REGION") as caught:
        resolve_target(None, None, None, "a:b", "bedrock/anthropic.claude-v2")
    assert caught.value.status == 503


@pytest.mark.anyio
async def test_router_refuses_an_unknown_provider() -> None:
    router = ProviderRouter({})
    request = ModelRequest(endpoint="http://x", model="m", api="chat", provider="sagemaker")
    with pytest.raises(ModelError, match="'sagemaker' is not supported"):
        await router.complete(request)
