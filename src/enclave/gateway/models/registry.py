"""The provider clients of one gateway process, built from its settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp

from enclave.common.http1 import Http1Client
from enclave.config import GatewaySettings
from enclave.gateway.models.anthropic import AnthropicClient
from enclave.gateway.models.azure import AzureOpenAIClient
from enclave.gateway.models.base import TextModelClient
from enclave.gateway.models.bedrock import BedrockClient
from enclave.gateway.models.http_provider import CircuitBreaker
from enclave.gateway.models.openai_compat import OpenAICompatClient
from enclave.gateway.models.providers import (
    ANTHROPIC,
    AZURE,
    BEDROCK,
    OPENAI,
    VERTEX_AI,
    ProviderSettings,
)
from enclave.gateway.models.tls import endpoint_tls
from enclave.gateway.models.vertex import TokenSource, VertexClient


def provider_settings(settings: GatewaySettings) -> ProviderSettings:
    return ProviderSettings(
        bedrock_region=settings.bedrock_region,
        bedrock_endpoint=settings.bedrock_endpoint,
        vertex_project=settings.vertex_project,
        vertex_location=settings.vertex_location,
        vertex_endpoint=settings.vertex_endpoint,
    )


def call_options(settings: GatewaySettings) -> dict[str, Any]:
    """Timeouts and retries, the same for every provider."""
    return {
        "connect_timeout_s": settings.model_connect_timeout_s,
        "retries": settings.model_retries,
        "backoff_s": settings.model_retry_backoff_s,
        "max_wait_s": settings.model_retry_max_wait_s,
        "tls": endpoint_tls(settings),
        # One breaker for all providers: it is the endpoint that is down.
        "breaker": CircuitBreaker(
            settings.model_breaker_failures, settings.model_breaker_cooldown_s
        )
        if settings.model_breaker_failures
        else None,
    }


def build_providers(
    session: Http1Client,
    settings: GatewaySettings,
    token_session: Callable[[], aiohttp.ClientSession],
) -> dict[str, TextModelClient]:
    """One client per provider, all on the gateway's one model-call session.

    ``token_session`` reaches the administrator's Vertex token endpoint (a configured URL,
    like the issuers', so not subject to the per-request model egress rules).
    """
    timeout, options = settings.model_timeout_s, call_options(settings)
    tokens = TokenSource(token_session, settings.vertex_token_url, timeout)
    return {
        OPENAI: OpenAICompatClient(session, timeout, **options),
        ANTHROPIC: AnthropicClient(session, timeout, **options),
        AZURE: AzureOpenAIClient(
            session, timeout, api_version=settings.azure_api_version, **options
        ),
        BEDROCK: BedrockClient(session, timeout, region=settings.bedrock_region, **options),
        VERTEX_AI: VertexClient(session, timeout, tokens=tokens, **options),
    }
