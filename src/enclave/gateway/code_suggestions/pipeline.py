"""What code completions and generations share: the request pipeline and the model target.

Per request: authenticate (401/503) → scope (403) → parse and validate the body (413/422) →
the model target (the body's for the instance's tokens, 422; the administrator's for a user's
direct-access token, 403/503, see :mod:`enclave.gateway.user_access`) → plan the model call
(422) → check the endpoint (403) → call the model, whole or streamed (503/429 on model errors;
one generic message for a user) → GitLab's ``text_completion`` response.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from enclave.common.request_id import new_request_id
from enclave.gateway.answers import JsonAnswer
from enclave.gateway.api.schemas import field_error
from enclave.gateway.api.steps import authenticate, decode_body, model_failure
from enclave.gateway.auth.verify import Principal
from enclave.gateway.code_suggestions.schemas import Message, SuggestionsBody, decode_suggestions
from enclave.gateway.http import detail, json_response
from enclave.gateway.models.base import (
    ChatMessage,
    EndpointNotAllowed,
    ModelError,
    ModelRequest,
    ModelResult,
)
from enclave.gateway.streaming import RawTextStreamResponse, TextFilter
from enclave.gateway.targets import ModelTarget, PlanError, resolve_target
from enclave.gateway.tenants import VendorTarget, choose_target
from enclave.gateway.user_access import NamedModel, admin_model

if TYPE_CHECKING:
    from enclave.gateway.runtime import Gateway

ENGINE: Final = "litellm"
# ``model.region`` in GitLab 18's answers is the gateway's cloud location; a self-hosted
# gateway has none, so it names itself.
REGION: Final = "self-hosted"


def model_target(payload: SuggestionsBody) -> ModelTarget:
    """Where and what to call, from the LiteLLM-style fields GitLab's instance sends."""
    return resolve_target(
        payload.model_provider,
        payload.model_name,
        payload.model_endpoint,
        payload.model_api_key,
        payload.model_identifier,
    )


def names_model(payload: SuggestionsBody) -> bool:
    """Whether the body names a model of its own (a vendored request names none)."""
    # Spelled out, not any() over a generator: this runs on every request.
    return bool(
        (payload.model_endpoint or "").strip()
        or (payload.model_api_key or "").strip()
        or (payload.model_identifier or "").strip()
    )


def target_for(
    gateway: Gateway, principal: Principal, feature: str, payload: SuggestionsBody
) -> tuple[SuggestionsBody, ModelTarget, VendorTarget | None]:
    """The model to call, the payload to plan with and the vendor model when it is one;
    :class:`PlanError` (403/422/503).

    The instance's tokens name the model in the body (the administrator's configuration), or,
    on a shared gateway, none (the gateway's vendor model for ``feature``); a user's token
    gets the administrator's model for ``feature``, and its family.
    """
    if not principal.user_token:
        target, vendor = choose_target(
            gateway.tenants, principal, feature, names_model(payload), lambda: model_target(payload)
        )
        if vendor is not None:
            payload = msgspec.structs.replace(payload, model_name=vendor.family)
        return payload, target, vendor
    named = NamedModel(
        payload.model_provider,
        payload.model_endpoint,
        payload.model_api_key,
        payload.model_identifier,
    )
    target, family = admin_model(gateway, feature, named, principal.subject)
    return msgspec.structs.replace(payload, model_name=family or None), target, None


def with_vendor(plan: Plan, vendor: VendorTarget | None) -> Plan:
    """``plan`` with the vendor model's parameters (operator's settings) when it uses one."""
    if vendor is None:
        return plan
    return dataclasses.replace(plan, request=vendor.apply(plan.request))


def messages_from(prompt: list[Message]) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(m.role, m.content) for m in prompt)


def check_prompt_shape(payload: SuggestionsBody) -> None:
    """``prompt_version`` is the discriminator of ``prompt``'s type (as in GitLab's schema)."""
    version, prompt = payload.prompt_version, payload.prompt
    if version == 2 and isinstance(prompt, list):
        raise PlanError(
            [field_error(["prompt"], "prompt_version 2 expects prompt to be a string", "[...]")]
        )
    if version == 3 and not (isinstance(prompt, list) and prompt):
        raise PlanError(
            [
                field_error(
                    ["prompt"],
                    "prompt_version 3 expects prompt to be a non-empty list of messages",
                    prompt,
                )
            ]
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """A model call ready to send, and how to present its answer."""

    request: ModelRequest
    model_name: str  # model.name in the response
    lang: str | None
    postprocess: Callable[[str], str]
    stream_filter: Callable[[], TextFilter] | None


@dataclass(frozen=True, slots=True)
class UseCase:
    name: str  # "code completions"
    feature: str  # the instance's feature, whose model serves user tokens
    scopes: tuple[str, ...]  # any of these unit primitives grants access
    plan: Callable[[SuggestionsBody, ModelTarget], Plan]

    @property
    def unauthorized(self) -> str:
        return f"Unauthorized to access {self.name}"


def response_body(plan: Plan, result: ModelResult, text: str) -> dict[str, Any]:
    usage = result.usage
    return {
        "id": new_request_id(),  # 32 random hex characters, as uuid4().hex, minus the UUID
        "model": {
            "engine": ENGINE,
            "name": plan.model_name,
            "lang": plan.lang,
            "tokens_consumption_metadata": {
                "input_tokens": usage.input_tokens if usage else 0,
                "output_tokens": usage.output_tokens if usage else 0,
                "max_output_tokens_used": result.finish_reason == "length",
                "context_tokens_sent": 0,
                "context_tokens_used": 0,
            },
            "region": REGION,
        },
        "experiments": [],
        "object": "text_completion",
        "created": int(time.time()),
        "choices": [{"text": text, "index": 0, "finish_reason": result.finish_reason}],
        # GitLab 18: the instance's feature flags this gateway acted on (none here).
        "metadata": {"enabled_feature_flags": []},
    }


async def serve(
    request: Request, use_case: UseCase
) -> Response | JsonAnswer | RawTextStreamResponse:
    """The whole pipeline for one code-suggestions request."""
    gateway: Gateway = request.app.state.gateway
    principal = await authenticate(request, user_tokens=True)
    if isinstance(principal, Response):
        return principal
    if not principal.can(*use_case.scopes):
        return detail(use_case.unauthorized, 403)
    payload = await decode_body(request, decode_suggestions)
    if isinstance(payload, Response):
        return payload
    try:
        check_prompt_shape(payload)
        payload, target, vendor = target_for(gateway, principal, use_case.feature, payload)
        plan = with_vendor(use_case.plan(payload, target), vendor)
    except PlanError as exc:
        return json_response({"detail": exc.detail}, exc.status)

    try:
        if payload.stream:
            stream = await gateway.models.stream(plan.request)
            return RawTextStreamResponse(
                stream, plan.stream_filter() if plan.stream_filter else None
            )
        result = await gateway.models.complete(plan.request)
    except (EndpointNotAllowed, ModelError) as exc:
        return model_failure(request, principal, exc)
    return JsonAnswer(response_body(plan, result, plan.postprocess(result.text)))
