"""``POST /v1/prompts/{prompt_id}``: GitLab's prompt registry, for every prompt Enclave defines.

Prompts are the registry's definition files (:mod:`enclave.gateway.prompts.registry`); the
instance calls e.g. ``model_configuration/check`` (URL-encoded ``model_configuration%2Fcheck``)
for "Test connection", ``chat/explain_code`` or ``generate_commit_message``, with the model in
``model_metadata`` (its ``name`` is the family that picks the definition) and the template
variables in ``inputs``. Pipeline: authenticate (401/503) → find the prompt (404) → scope (403)
→ body (413/422) → model target (422) → definition for the family and ``prompt_version``
(422 at ``["prompt_version"]``) → render (422 at ``["inputs", name]``) → call the model → the
model's text as a bare JSON string. When the model fails the answer is **421
Misdirected Request** (as in GitLab: the gateway worked, the model did not) with a ``detail``
that starts with the model's HTTP status ("401 ...") when it answered with one, and without a
leading status when it could not be reached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import StringConstraints
from starlette.requests import Request
from starlette.responses import Response

from enclave.common.logging import get_logger
from enclave.gateway.api.steps import authenticate, parse_body
from enclave.gateway.api.v2.code.schemas import Str255, _Model, field_error
from enclave.gateway.http import detail, json_response
from enclave.gateway.models.base import (
    Api,
    ChatMessage,
    EndpointNotAllowed,
    ModelError,
    ModelRequest,
)
from enclave.gateway.prompts.definition import ModelParams
from enclave.gateway.prompts.registry import (
    InputError,
    NoMatchingVersion,
    Prompt,
    PromptNotFound,
    get_registry,
)
from enclave.gateway.prompts.semver import InvalidVersion
from enclave.gateway.streaming import RawTextStreamResponse
from enclave.gateway.targets import (
    PROVIDER_LITELLM,
    ModelTarget,
    PlanError,
    messages_as_text,
    resolve_target,
)

if TYPE_CHECKING:
    from enclave.gateway.runtime import Gateway

log = get_logger(__name__)

MODEL_FAILED: Final = 421  # Misdirected Request: the model, not the gateway, failed
# model_metadata.provider values that mean "an OpenAI-compatible server" (older GitLab
# instances send "openai", newer ones the model's provider "api").
OPENAI_COMPATIBLE: Final = frozenset({"openai", "api", "custom_openai", PROVIDER_LITELLM})


class ModelMetadata(_Model):
    provider: Str255
    name: Annotated[str, StringConstraints(max_length=50)]
    endpoint: Annotated[str, StringConstraints(max_length=2048)] | None = None
    api_key: Annotated[str, StringConstraints(max_length=4096)] | None = None
    identifier: Str255 | None = None


class PromptRequest(_Model):
    inputs: dict[str, Any]
    prompt_version: Str255 | None = None  # a semver constraint ("^1.0.0"); none: newest
    stream: bool = False
    model_metadata: ModelMetadata | None = None


def _metadata_loc(name: str) -> list[str | int]:
    return ["model_metadata", name]


def plan_prompt(prompt_id: str, payload: PromptRequest) -> ModelRequest:
    """The model call for ``prompt_id``: target from ``model_metadata``, rendered definition."""
    target = metadata_target(payload.model_metadata)
    family = payload.model_metadata.name if payload.model_metadata is not None else None
    try:
        definition = get_registry().resolve(prompt_id, family, payload.prompt_version)
    except (InvalidVersion, NoMatchingVersion) as exc:
        raise PlanError(
            [field_error(["prompt_version"], str(exc), payload.prompt_version, kind="value_error")]
        ) from None
    return model_request(target, definition, payload.inputs)


def metadata_target(metadata: ModelMetadata | None) -> ModelTarget:
    """The model ``model_metadata`` names; required here, this gateway serves self-hosted ones."""
    if metadata is None:
        raise PlanError(
            [
                field_error(
                    ["model_metadata"],
                    "model_metadata is required: this gateway serves self-hosted models",
                    None,
                    kind="missing",
                )
            ]
        )
    provider = metadata.provider.strip().lower()
    return resolve_target(
        PROVIDER_LITELLM if provider in OPENAI_COMPATIBLE else provider,
        metadata.name,
        metadata.endpoint,
        metadata.api_key,
        metadata.identifier,
        loc=_metadata_loc,
    )


def model_request(target: ModelTarget, definition: Prompt, inputs: dict[str, Any]) -> ModelRequest:
    try:
        rendered = definition.render(inputs)
    except InputError as exc:
        value = inputs.get(exc.name)
        raise PlanError(
            [field_error(["inputs", exc.name], str(exc), value, kind=exc.kind)]
        ) from None
    return target_request(target, rendered.messages, rendered.prompt, rendered.params)


def target_request(
    target: ModelTarget,
    messages: tuple[ChatMessage, ...],
    prompt: str | None,
    params: ModelParams,
) -> ModelRequest:
    """Chat messages or a raw prompt for ``target`` (text-only models get messages as text)."""
    api: Api = "completions" if prompt is not None else "chat"
    if target.force_text_completion and messages:
        prompt, messages, api = messages_as_text(messages), (), "completions"
    return ModelRequest(
        endpoint=target.endpoint,
        model=target.model,
        provider=target.provider,
        api=api,
        api_key=target.api_key,
        prompt=prompt,
        messages=messages,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        stop=params.stop,
    )


def model_failed(error: ModelError) -> Response:
    """421 with the model's HTTP status first in ``detail`` (what the instance parses)."""
    log.warning("model_call_failed", status=error.upstream_status, reason=error.reason)
    if error.upstream_status is None:
        return detail(error.reason, MODEL_FAILED)
    return detail(f"{error.upstream_status} {error.reason}", MODEL_FAILED)


async def invoke(request: Request) -> Response | RawTextStreamResponse:
    gateway: Gateway = request.app.state.gateway
    prompt_id: str = request.path_params["prompt_id"]
    principal = await authenticate(request)
    if isinstance(principal, Response):
        return principal
    try:
        scopes = get_registry().unit_primitives(prompt_id)
    except PromptNotFound:
        return detail(f"Prompt '{prompt_id}' not found", 404)
    if not principal.can(*scopes):
        return detail(f"Unauthorized to access {prompt_id}", 403)
    payload = await parse_body(request, PromptRequest)
    if isinstance(payload, Response):
        return payload
    try:
        model_request = plan_prompt(prompt_id, payload)
    except PlanError as exc:
        return json_response({"detail": exc.detail}, exc.status)
    try:
        if payload.stream:
            return RawTextStreamResponse(await gateway.models.stream(model_request))
        result = await gateway.models.complete(model_request)
    except EndpointNotAllowed as exc:
        # Reported as the model being unreachable, which is what the administrator sees.
        log.warning("model_endpoint_refused", reason=exc.reason)
        return detail(exc.reason, MODEL_FAILED)
    except ModelError as exc:
        return model_failed(exc)
    return json_response(result.text)
