"""``POST /v1/chat/{chat_invokable}``: GitLab's legacy chat API (one ``prompt_components``).

The instance's Duo Chat (``/api/v4/chat/completions``) sends the conversation here with the
model, endpoint, identifier and key in the one component's ``payload``. Pipeline: authenticate
(401/503) → find the invokable (404) → scope (403) → body (413/422) → model target (422) → call
the model's chat API with the system prompt of the registry's ``chat/<invokable>`` definition
for the model's family → ``{"response", "metadata"}``, or the
answer relayed as raw text chunks when ``stream`` is true. Model errors are answered as in
code suggestions (503 ``Inference failed: ...``, 429 passed through).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import Field, StringConstraints
from starlette.requests import Request
from starlette.responses import Response

from enclave.common.logging import get_logger
from enclave.gateway.api.schemas import BodyModel, PromptMessage, Str255
from enclave.gateway.api.steps import authenticate, model_error_response, parse_body
from enclave.gateway.auth.verify import Principal
from enclave.gateway.http import detail, json_response
from enclave.gateway.models.base import (
    ChatMessage,
    EndpointNotAllowed,
    ModelError,
    ModelRequest,
)
from enclave.gateway.prompts.definition import ModelParams
from enclave.gateway.prompts.registry import Prompt, PromptNotFound, get_registry
from enclave.gateway.streaming import RawTextStreamResponse
from enclave.gateway.targets import PlanError, resolve_target, target_request
from enclave.gateway.tenants import Tenants, choose_target, feature_of_prompt

if TYPE_CHECKING:
    from enclave.gateway.runtime import Gateway

log = get_logger(__name__)

# The largest max_tokens a caller may ask for.
MAX_MAX_TOKENS: Final = 8192

ChatContent = Annotated[str, StringConstraints(max_length=200_000)]


class ChatParams(BodyModel):
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_MAX_TOKENS)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: Annotated[list[Str255], Field(max_length=8)] | None = None


class ChatPayload(BodyModel):
    content: ChatContent | Annotated[list[PromptMessage], Field(min_length=1, max_length=200)]
    provider: Literal["litellm", "anthropic"]
    model: Annotated[str, StringConstraints(max_length=50)]
    params: ChatParams | None = None
    model_endpoint: Annotated[str, StringConstraints(max_length=2048)] | None = None
    model_api_key: Annotated[str, StringConstraints(max_length=4096)] | None = None
    model_identifier: Str255 | None = None


class ComponentMetadata(BodyModel):
    source: Str255
    version: Str255


class PromptComponent(BodyModel):
    type: Str255  # "string" in GitLab's docs, "prompt" from its instance: both accepted
    metadata: ComponentMetadata
    payload: ChatPayload


class ChatRequest(BodyModel):
    prompt_components: Annotated[list[PromptComponent], Field(min_length=1, max_length=1)]
    stream: bool = False


def _payload_loc(name: str) -> list[str | int]:
    return ["prompt_components", 0, "payload", f"model_{name}"]


def invokable_prompt_id(name: str) -> str:
    """The registry prompt behind ``/v1/chat/<name>`` (``agent`` is ``chat/agent``)."""
    return f"chat/{name}"


def conversation(definition: Prompt, content: str | list[PromptMessage]) -> tuple[ChatMessage, ...]:
    """The messages for the model: the prompt's instructions unless the caller sent a system one."""
    if isinstance(content, str):
        messages: tuple[ChatMessage, ...] = (ChatMessage("user", content),)
    else:
        messages = tuple(ChatMessage(m.role, m.content) for m in content)
    return definition.conversation(messages)


def plan_chat(
    prompt_id: str, payload: ChatPayload, tenants: Tenants, principal: Principal
) -> ModelRequest:
    names_model = any(
        (value or "").strip()
        for value in (payload.model_endpoint, payload.model_api_key, payload.model_identifier)
    )
    target, vendor = choose_target(
        tenants,
        principal,
        feature_of_prompt(prompt_id),
        names_model,
        lambda: resolve_target(
            payload.provider,
            payload.model,
            payload.model_endpoint,
            payload.model_api_key,
            payload.model_identifier,
            loc=_payload_loc,
        ),
    )
    # ``model`` is the family; unknown families get the base definition.
    family = vendor.family if vendor is not None else payload.model
    definition = get_registry().resolve(prompt_id, family)
    messages = conversation(definition, payload.content)
    params = payload.params or ChatParams()
    defaults = definition.params
    # The request's own parameters win over the definition's (already validated: no re-check).
    merged = ModelParams.model_construct(
        max_tokens=params.max_tokens or defaults.max_tokens,
        temperature=defaults.temperature if params.temperature is None else params.temperature,
        top_p=defaults.top_p if params.top_p is None else params.top_p,
        stop=tuple(params.stop) if params.stop is not None else defaults.stop,
    )
    request = target_request(target, messages, None, merged, prompt_id=prompt_id)
    return vendor.apply(request) if vendor is not None else request


def response_body(payload: ChatPayload, text: str) -> dict[str, Any]:
    return {
        "response": text,
        "metadata": {
            "provider": payload.provider,
            "model": payload.model,
            "timestamp": int(time.time()),
        },
    }


async def chat(request: Request) -> Response | RawTextStreamResponse:
    gateway: Gateway = request.app.state.gateway
    name: str = request.path_params["chat_invokable"]
    principal = await authenticate(request)
    if isinstance(principal, Response):
        return principal
    prompt_id = invokable_prompt_id(name)
    try:
        scopes = get_registry().unit_primitives(prompt_id)
    except PromptNotFound:
        return detail(f"Chat invokable '{name}' not found", 404)
    if not principal.can(*scopes):
        return detail(f"Unauthorized to access {name}", 403)
    body = await parse_body(request, ChatRequest)
    if isinstance(body, Response):
        return body
    payload = body.prompt_components[0].payload
    try:
        model_request = plan_chat(prompt_id, payload, gateway.tenants, principal)
    except PlanError as exc:
        return json_response({"detail": exc.detail}, exc.status)
    try:
        if body.stream:
            return RawTextStreamResponse(await gateway.models.stream(model_request))
        result = await gateway.models.complete(model_request)
    except EndpointNotAllowed as exc:
        log.warning("model_endpoint_refused", reason=exc.reason)
        return detail(exc.reason, 403)
    except ModelError as exc:
        return model_error_response(exc)
    return json_response(response_body(payload, result.text))
