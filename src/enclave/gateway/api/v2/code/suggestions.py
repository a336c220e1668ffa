"""What code completions and generations share: the request pipeline and the model target.

Per request: authenticate (401/503) → scope (403) → parse and validate the body (413/422) →
plan the model call (422) → check the endpoint (403) → call the model, whole or streamed
(503/429 on model errors) → GitLab's ``text_completion`` response.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from enclave.common.logging import get_logger
from enclave.common.wire import CLAIM_SURFACE, H_GLOBAL_USER_ID
from enclave.gateway.api.v2.code.schemas import (
    PromptMessage,
    SuggestionsRequest,
    field_error,
    validation_detail,
)
from enclave.gateway.auth.verify import AuthError, Principal
from enclave.gateway.http import MAX_BODY_BYTES, BodyTooLarge, detail, json_response, read_body
from enclave.gateway.models.base import (
    ChatMessage,
    EndpointNotAllowed,
    ModelError,
    ModelRequest,
    ModelResult,
)
from enclave.gateway.models.providers import (
    ENDPOINT_OPTIONAL,
    FIELD_PROVIDERS,
    IDENTIFIER_PROVIDERS,
    OPENAI,
    TEXT_COMPLETION_PREFIXES,
    ProviderSetupError,
    default_endpoint,
)
from enclave.gateway.rate_limit import RateLimited
from enclave.gateway.streaming import RawTextStreamResponse, TextFilter

if TYPE_CHECKING:
    from enclave.gateway.app import Gateway

log = get_logger(__name__)

ENGINE: Final = "litellm"
PROVIDER_LITELLM: Final = "litellm"

BodyT = TypeVar("BodyT", bound=BaseModel)

# Providers LiteLLM knows that no provider module speaks; refused with a hint, not guessed.
_OTHER_PROVIDERS: Final = frozenset(
    {
        "azure_ai",
        "gemini",
        "ollama",
        "sagemaker",
        "fireworks_ai",
        "mistral",
        "codestral",
        "huggingface",
        "cohere",
        "groq",
    }
)


class PlanError(Exception):
    """The request is valid JSON but cannot be served as asked (422 unless told otherwise)."""

    def __init__(self, detail: str | list[dict[str, Any]], status: int = 422) -> None:
        super().__init__(str(detail))
        self.detail = detail
        self.status = status


@dataclass(frozen=True, slots=True)
class ModelTarget:
    endpoint: str  # without trailing slash
    model: str  # the served model name sent as "model"
    api_key: str | None
    force_text_completion: bool
    provider: str = OPENAI  # which provider module serves it (enclave.gateway.models.providers)


def model_target(payload: SuggestionsRequest) -> ModelTarget:
    """Where and what to call, from the LiteLLM-style fields GitLab's instance sends."""
    return resolve_target(
        payload.model_provider,
        payload.model_name,
        payload.model_endpoint,
        payload.model_api_key,
        payload.model_identifier,
    )


def _suggestions_loc(name: str) -> list[str | int]:
    return [f"model_{name}"]


def resolve_target(
    provider: str | None,
    name: str | None,
    endpoint: str | None,
    api_key: str | None,
    identifier: str | None,
    *,
    loc: Callable[[str], list[str | int]] = _suggestions_loc,
) -> ModelTarget:
    """The model target from a provider, family name, endpoint, key and LiteLLM identifier.

    ``loc`` names a field ("endpoint", "identifier") where the request body carries it, for
    FastAPI-style error locations.
    """
    provider = (provider or PROVIDER_LITELLM).strip().lower()
    # "litellm": the identifier's prefix says which provider; otherwise the field says it.
    kind = FIELD_PROVIDERS.get(provider)
    if kind is None and provider != PROVIDER_LITELLM:
        raise PlanError(
            f"model provider '{provider}' is not supported by this gateway; use model_provider "
            f"'litellm' (or one of: {', '.join(sorted(FIELD_PROVIDERS))})"
        )
    raw_identifier = identifier
    identifier = (identifier or "").strip()
    force_text = False
    if not identifier:
        model = (name or "").strip()
    else:
        prefix, slash, rest = identifier.partition("/")
        if not slash:
            model = identifier
        elif prefix in IDENTIFIER_PROVIDERS:
            named = IDENTIFIER_PROVIDERS[prefix]
            if kind is not None and named != kind:
                raise PlanError(
                    f"model identifier '{identifier}' is for provider '{named}', not "
                    f"'{provider}'; fix the identifier or the provider"
                )
            kind, model, force_text = named, rest, prefix in TEXT_COMPLETION_PREFIXES
        elif prefix in _OTHER_PROVIDERS:
            raise PlanError(
                f"model identifier provider '{prefix}' is not supported by this gateway; use "
                "custom_openai/<served model name> with an OpenAI-compatible endpoint, or "
                f"one of the prefixes {', '.join(sorted(IDENTIFIER_PROVIDERS))}"
            )
        else:
            model = identifier  # e.g. a Hugging Face style name such as Qwen/Qwen2.5-Coder
    kind = kind or OPENAI
    if not model:
        raise PlanError(
            [
                field_error(
                    loc("identifier"),
                    "model_identifier is required: custom_openai/<served model name>",
                    raw_identifier,
                    kind="missing",
                )
            ]
        )
    raw_endpoint = endpoint
    endpoint = (endpoint or "").strip().rstrip("/")
    if kind in ENDPOINT_OPTIONAL:
        try:
            endpoint = default_endpoint(kind, model, endpoint)
        except ProviderSetupError as exc:
            raise PlanError(str(exc), status=503) from None
    if not endpoint:
        raise PlanError(
            [
                field_error(
                    loc("endpoint"),
                    "model_endpoint is required for model_provider litellm: the "
                    "OpenAI-compatible API base, e.g. http://model-host:8000/v1",
                    raw_endpoint,
                    kind="missing",
                )
            ]
        )
    return ModelTarget(endpoint, model, api_key or None, force_text, kind)


def messages_from(prompt: list[PromptMessage]) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(m.role, m.content) for m in prompt)


def messages_as_text(messages: tuple[ChatMessage, ...]) -> str:
    """Chat messages as one raw prompt, for identifiers that force the completions API."""
    return "\n\n".join(
        m.content if m.role == "user" else f"{m.role}: {m.content}" for m in messages
    )


def check_prompt_shape(payload: SuggestionsRequest) -> None:
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
    scopes: tuple[str, ...]  # any of these unit primitives grants access
    plan: Callable[[SuggestionsRequest], Plan]

    @property
    def unauthorized(self) -> str:
        return f"Unauthorized to access {self.name}"


def response_body(plan: Plan, result: ModelResult, text: str) -> dict[str, Any]:
    usage = result.usage
    return {
        "id": uuid.uuid4().hex,
        "model": {
            "engine": ENGINE,
            "name": plan.model_name,
            "lang": plan.lang,
            "tokens_consumption_metadata": {
                "input_tokens": usage.input_tokens if usage else 0,
                "output_tokens": usage.output_tokens if usage else 0,
                "context_tokens_sent": 0,
                "context_tokens_used": 0,
            },
        },
        "experiments": [],
        "object": "text_completion",
        "created": int(time.time()),
        "choices": [{"text": text, "index": 0, "finish_reason": result.finish_reason}],
    }


def model_error_response(error: ModelError) -> Response:
    log.warning("model_call_failed", status=error.status, reason=error.reason)
    headers = {"Retry-After": error.retry_after} if error.retry_after else None
    return detail(f"Inference failed: {error.reason}", error.status, headers)


OPENAI_ONLY_MESSAGE: Final = (
    "This token is only valid for the OpenAI-compatible API (/v1/models, /v1/chat/completions, "
    "/v1/completions)"
)


async def authenticate(request: Request) -> Principal | Response:
    """The verified caller within its rate limits, or the 401/503/429 response to send."""
    gateway: Gateway = request.app.state.gateway
    headers = request.headers
    try:
        principal = await gateway.authenticator.authenticate(headers)
    except AuthError as exc:
        return json_response(exc.body, exc.status)
    if CLAIM_SURFACE in principal.claims:
        # A user's token for the OpenAI-compatible API: it must not reach endpoints that take
        # the model's endpoint and key from the request body.
        return json_response({"error": OPENAI_ONLY_MESSAGE}, 401)
    limiter = gateway.rate_limiter
    if limiter.enabled:
        try:
            limiter.check(principal.issuer, principal.instance_id, headers.get(H_GLOBAL_USER_ID))
        except RateLimited as exc:
            return detail(exc.detail, 429, {"Retry-After": str(exc.retry_after_s)})
    return principal


async def authorize(
    request: Request, scopes: tuple[str, ...], unauthorized: str
) -> Response | None:
    """Authenticate the caller (401/503) and check it holds any of ``scopes`` (403).

    None when the request may go on, else the error response to send.
    """
    principal = await authenticate(request)
    if isinstance(principal, Response):
        return principal
    if not principal.can(*scopes):
        return detail(unauthorized, 403)
    return None


async def parse_body(request: Request, schema: type[BodyT]) -> BodyT | Response:
    """The request body validated as ``schema``, or the 413/422 response to send."""
    try:
        body = await read_body(request)
    except BodyTooLarge:
        return detail(f"Request body larger than {MAX_BODY_BYTES} bytes", 413)
    try:
        return schema.model_validate_json(body)
    except ValidationError as exc:
        return json_response({"detail": validation_detail(exc)}, 422)


async def serve(request: Request, use_case: UseCase) -> Response | RawTextStreamResponse:
    """The whole pipeline for one code-suggestions request."""
    gateway: Gateway = request.app.state.gateway
    refused = await authorize(request, use_case.scopes, use_case.unauthorized)
    if refused is not None:
        return refused
    payload = await parse_body(request, SuggestionsRequest)
    if isinstance(payload, Response):
        return payload
    try:
        check_prompt_shape(payload)
        plan = use_case.plan(payload)
    except PlanError as exc:
        return json_response({"detail": exc.detail}, exc.status)

    try:
        if payload.stream:
            stream = await gateway.models.stream(plan.request)
            return RawTextStreamResponse(
                stream, plan.stream_filter() if plan.stream_filter else None
            )
        result = await gateway.models.complete(plan.request)
    except EndpointNotAllowed as exc:
        log.warning("model_endpoint_refused", reason=exc.reason)
        return detail(exc.reason, 403)
    except ModelError as exc:
        return model_error_response(exc)
    return json_response(response_body(plan, result, plan.postprocess(result.text)))
