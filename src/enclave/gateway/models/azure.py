"""Client for Azure OpenAI (``{endpoint}/openai/deployments/{deployment}/…?api-version=…``).

Wire format: Azure OpenAI REST API reference, "Chat completions" and "Completions" (data plane
inference): the deployment is in the path, ``api-version`` in the query (a GA version by
default, ``gateway.azure_api_version``), the key in the ``api-key`` header, or a Microsoft
Entra ID token as ``Authorization: Bearer`` when the model's key is given as
``Bearer <token>``. Body, answer and stream are OpenAI's, so they are
:class:`~enclave.gateway.models.openai_compat.OpenAICompatClient`'s.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote

from enclave.gateway.models.base import ModelRequest
from enclave.gateway.models.http_provider import Call
from enclave.gateway.models.openai_compat import OpenAICompatClient, openai_payload

DEFAULT_API_VERSION: Final = "2024-10-21"  # the current GA data-plane version
_PATHS: Final = {"completions": "/completions", "chat": "/chat/completions"}
_BEARER: Final = "Bearer "


class AzureOpenAIClient(OpenAICompatClient):
    """:class:`~enclave.gateway.models.base.TextModelClient` for Azure OpenAI deployments."""

    api_hint = "is it an Azure OpenAI resource URL (https://<resource>.openai.azure.com)?"
    credential_hint = "check the Azure OpenAI key (or Entra ID token) configured for this model"

    def __init__(self, *args: Any, api_version: str = DEFAULT_API_VERSION, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._api_version = api_version

    @staticmethod
    def _auth(request: ModelRequest, headers: dict[str, str]) -> dict[str, str]:
        headers.update(request.extra_headers)
        key = request.api_key
        if key:
            if key.startswith(_BEARER):
                headers["Authorization"] = key  # a Microsoft Entra ID access token
            else:
                headers["api-key"] = key
        return headers

    @staticmethod
    def _base(request: ModelRequest) -> str:
        base = request.endpoint
        return base if base.endswith("/openai") else base + "/openai"

    def models_call(self, request: ModelRequest) -> tuple[str, dict[str, str]] | None:
        url = f"{self._base(request)}/models?api-version={self._api_version}"
        return url, self._auth(request, {"Accept": "application/json"})

    def build(self, request: ModelRequest, stream: bool) -> Call:
        headers = self._auth(
            request,
            {
                "Content-Type": "application/json",
                "Accept": "text/event-stream" if stream else "application/json",
            },
        )
        base = self._base(request)
        url = (
            f"{base}/deployments/{quote(request.model, safe='')}{_PATHS[request.api]}"
            f"?api-version={self._api_version}"
        )
        return url, openai_payload(request, stream, with_model=False), headers

    def secret(self, request: ModelRequest) -> str | None:
        key = request.api_key
        return key[len(_BEARER) :] if key and key.startswith(_BEARER) else key

    def not_found(self, request: ModelRequest, said: str) -> str:
        return (
            f"{said}; check that the deployment '{request.model}' exists in this Azure OpenAI "
            f"resource and that api-version {self._api_version} is supported"
        )
