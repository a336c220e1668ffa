"""``POST /v1/prompts/{prompt_id}``: GitLab's prompt registry, for every prompt Enclave defines.

Prompts are the registry's definition files (:mod:`enclave.gateway.prompts.registry`); the
instance calls e.g. ``model_configuration/check`` (URL-encoded ``model_configuration%2Fcheck``)
for "Test connection", ``chat/explain_code`` or ``generate_commit_message``, with the model in
``model_metadata`` (its ``name`` is the family that picks the definition) and the template
variables in ``inputs``. Pipeline: authenticate (401/503) → find the prompt (404; 400 when a
GitLab 18 instance asks, as GitLab's gateway does) → scope (403) → body (413/422) → model
target (422) → definition for the family and ``prompt_version`` (422 at
``["prompt_version"]``) → render (422 at ``["inputs", name]``) → call the model → the model's
text as a bare JSON string. When the model fails the answer is **421
Misdirected Request** (as in GitLab: the gateway worked, the model did not) with a ``detail``
that starts with the model's HTTP status ("401 ...") when it answered with one, and without a
leading status when it could not be reached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import Response

from enclave.common import wire
from enclave.common.logging import get_logger
from enclave.gateway.api.schemas import BodyModel, Str255, field_error
from enclave.gateway.api.steps import authenticate, gitlab_major, parse_body
from enclave.gateway.auth.verify import Principal
from enclave.gateway.http import detail, json_response
from enclave.gateway.models.base import (
    EndpointNotAllowed,
    ModelError,
    ModelRequest,
)
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
    ModelMetadata,
    ModelTarget,
    PlanError,
    metadata_target,
    target_request,
)
from enclave.gateway.tenants import Tenants, choose_target, feature_of_prompt

if TYPE_CHECKING:
    from enclave.gateway.runtime import Gateway

log = get_logger(__name__)

MODEL_FAILED: Final = 421  # Misdirected Request: the model, not the gateway, failed


class PromptRequest(BodyModel):
    inputs: dict[str, Any]
    prompt_version: Str255 | None = None  # a semver constraint ("^1.0.0"); none: newest
    stream: bool = False
    model_metadata: ModelMetadata | None = None


def plan_prompt(
    prompt_id: str, payload: PromptRequest, tenants: Tenants, principal: Principal
) -> ModelRequest:
    """The model call for ``prompt_id``: target from ``model_metadata`` (or, on a shared
    gateway, the vendor model for the prompt's feature), rendered definition."""
    target, vendor = choose_target(
        tenants,
        principal,
        feature_of_prompt(prompt_id),
        payload.model_metadata is not None,
        lambda: metadata_target(payload.model_metadata),
    )
    family = payload.model_metadata.name if payload.model_metadata is not None else None
    if vendor is not None:
        family = vendor.family
    try:
        definition = get_registry().resolve(prompt_id, family, payload.prompt_version)
    except (InvalidVersion, NoMatchingVersion) as exc:
        raise PlanError(
            [field_error(["prompt_version"], str(exc), payload.prompt_version, kind="value_error")]
        ) from None
    request = model_request(target, definition, payload.inputs)
    return vendor.apply(request) if vendor is not None else request


def model_request(target: ModelTarget, definition: Prompt, inputs: dict[str, Any]) -> ModelRequest:
    try:
        rendered = definition.render(inputs)
    except InputError as exc:
        value = inputs.get(exc.name)
        raise PlanError(
            [field_error(["inputs", exc.name], str(exc), value, kind=exc.kind)]
        ) from None
    return target_request(
        target,
        rendered.messages,
        rendered.prompt,
        rendered.params,
        prompt_id=definition.prompt_id,
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
        # GitLab's gateway answers 404 to GitLab 17 instances and 400 to GitLab 18 ones.
        major = gitlab_major(request.headers.get(wire.H_VERSION))
        status = 400 if major is not None and major >= 18 else 404
        return detail(f"Prompt '{prompt_id}' not found", status)
    if not principal.can(*scopes):
        return detail(f"Unauthorized to access {prompt_id}", 403)
    payload = await parse_body(request, PromptRequest)
    if isinstance(payload, Response):
        return payload
    try:
        model_request = plan_prompt(prompt_id, payload, gateway.tenants, principal)
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
