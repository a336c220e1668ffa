"""Which provider module serves a model, and the one client that dispatches to it.

A model names its provider twice: in its LiteLLM-style identifier prefix (``bedrock/…``,
``azure/…``), which is what GitLab's instance sends, and in the instance's ``provider`` field
(``api``, ``bedrock``, …), which the routes table carries. Both map to one key of
:data:`PROVIDERS`, stored in :attr:`ModelRequest.provider`; :class:`ProviderRouter` then picks
the client with one dict lookup, beneath the one chain every call goes through (egress check →
metrics → router → provider), so every provider is checked, counted and mapped the same way.

Bedrock and Vertex AI models need no endpoint: their URL comes from the gateway's settings
(region, project, location), installed once per process by :func:`install_settings`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final

from enclave.gateway.models.base import (
    ModelCatalog,
    ModelError,
    ModelRequest,
    ModelResult,
    TextModelClient,
    TextStream,
)

OPENAI: Final = "openai"
ANTHROPIC: Final = "anthropic"
AZURE: Final = "azure"
BEDROCK: Final = "bedrock"
VERTEX_AI: Final = "vertex_ai"
PROVIDERS: Final = (OPENAI, ANTHROPIC, AZURE, BEDROCK, VERTEX_AI)

# LiteLLM identifier prefixes → provider; the text-completion ones force the completions API.
IDENTIFIER_PROVIDERS: Final = {
    "custom_openai": OPENAI,
    "openai": OPENAI,
    "hosted_vllm": OPENAI,
    "text-completion-openai": OPENAI,
    "text-completion-custom_openai": OPENAI,
    "anthropic": ANTHROPIC,
    "azure": AZURE,
    "bedrock": BEDROCK,
    "vertex_ai": VERTEX_AI,
}
TEXT_COMPLETION_PREFIXES: Final = frozenset(
    {"text-completion-openai", "text-completion-custom_openai"}
)
# The instance's provider field (and GitLab's model_provider values) → provider.
FIELD_PROVIDERS: Final = {
    "api": OPENAI,
    "openai": OPENAI,
    "azure_openai": AZURE,
    "bedrock": BEDROCK,
    "vertex_ai": VERTEX_AI,
    "vertex-ai": VERTEX_AI,
    "anthropic": ANTHROPIC,
}
# Providers whose endpoint is optional, and what it is when the model has none.
ANTHROPIC_API: Final = "https://api.anthropic.com"
ENDPOINT_OPTIONAL: Final = frozenset({ANTHROPIC, BEDROCK, VERTEX_AI})

_ARN_REGION: Final = re.compile(r"^arn:aws[a-z-]*:bedrock:([a-z0-9-]+):")


class ProviderSetupError(Exception):
    """The gateway lacks a setting this provider needs (a region, a project)."""


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """The gateway-wide settings of the cloud providers (see ``GatewaySettings``)."""

    bedrock_region: str | None = None
    bedrock_endpoint: str | None = None
    vertex_project: str | None = None
    vertex_location: str = "us-central1"
    vertex_endpoint: str | None = None


_settings = ProviderSettings()


def install_settings(settings: ProviderSettings) -> None:
    """Use ``settings`` for the endpoints of models that have none (once per process)."""
    global _settings
    _settings = settings


def env_region() -> str | None:
    """The AWS region from the environment, as the AWS SDKs (and LiteLLM) read it."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_REGION_NAME"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def bedrock_region(model: str) -> str | None:
    """The region of a Bedrock model: its ARN's, else the gateway's, else the environment's."""
    match = _ARN_REGION.match(model)
    if match:
        return match.group(1)
    return _settings.bedrock_region or env_region()


def default_endpoint(provider: str, model: str, endpoint: str) -> str:
    """The endpoint to call for ``provider`` when the model's own (``endpoint``) may be empty.

    Raises :class:`ProviderSetupError` when a needed setting is missing.
    """
    if provider == BEDROCK:
        if endpoint:
            return endpoint  # a VPC interface endpoint registered with the model
        if _settings.bedrock_endpoint:
            return _settings.bedrock_endpoint.rstrip("/")
        region = bedrock_region(model)
        if not region:
            raise ProviderSetupError(
                "no AWS region for the Amazon Bedrock model: set ENCLAVE_GATEWAY__BEDROCK_REGION "
                "(or AWS_REGION) on the gateway, or use an inference-profile ARN"
            )
        return f"https://bedrock-runtime.{region}.amazonaws.com"
    if provider == VERTEX_AI:
        if "/projects/" in endpoint:
            return endpoint  # a full base that names its project and location already
        project, location = _settings.vertex_project, _settings.vertex_location
        if not project:
            raise ProviderSetupError(
                "no Google Cloud project for the Vertex AI model: set "
                "ENCLAVE_GATEWAY__VERTEX_PROJECT (and ENCLAVE_GATEWAY__VERTEX_LOCATION) on the "
                "gateway"
            )
        base = endpoint or (_settings.vertex_endpoint or "").rstrip("/")
        if not base:
            host = "aiplatform.googleapis.com"
            base = f"https://{host if location == 'global' else f'{location}-{host}'}"
        return f"{base}/v1/projects/{project}/locations/{location}"
    if provider == ANTHROPIC:
        return endpoint or ANTHROPIC_API
    return endpoint


class ProviderRouter:
    """One :class:`TextModelClient` over the provider clients: the provider picks the client.

    The methods are plain functions returning the chosen client's coroutine, so dispatching
    costs one dict lookup and no coroutine of its own.
    """

    __slots__ = ("_clients",)

    def __init__(self, clients: dict[str, TextModelClient]) -> None:
        self._clients = clients

    def _unknown(self, request: ModelRequest) -> ModelError:
        return ModelError(f"the model provider '{request.provider}' is not supported")

    def complete(self, request: ModelRequest) -> Coroutine[Any, Any, ModelResult]:
        try:
            client = self._clients[request.provider]
        except KeyError:
            raise self._unknown(request) from None
        return client.complete(request)

    def stream(self, request: ModelRequest) -> Coroutine[Any, Any, TextStream]:
        try:
            client = self._clients[request.provider]
        except KeyError:
            raise self._unknown(request) from None
        return client.stream(request)

    async def list_models(self, request: ModelRequest) -> list[str]:
        """The models served where ``request`` points (see ``HttpProvider.list_models``)."""
        client = self._clients.get(request.provider)
        if client is None or not isinstance(client, ModelCatalog):
            raise self._unknown(request)
        return await client.list_models(request)

    async def health(self, request: ModelRequest) -> None:
        """Raise the mapped :class:`ModelError` unless the model answers."""
        client = self._clients.get(request.provider)
        if client is None or not isinstance(client, ModelCatalog):
            raise self._unknown(request)
        await client.health(request)
