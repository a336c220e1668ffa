"""Model targets: where a model call goes, from the LiteLLM-style fields GitLab's instance sends
(a code-suggestion body's ``model_*`` fields, or ``model_metadata`` on the prompt, chat and v4
endpoints), and the model request built for one.

Pure (no I/O): used by every endpoint that takes a model from the request body (only for the
instance's own tokens, see :mod:`enclave.gateway.user_access`) and by the routes table, which
reads the administrator's models from the instance. Endpoint URLs follow the one rule set that
the instance's registry applies (:func:`enclave.common.endpoint_url.check_endpoint_url`), so
the gateway calls nothing the instance would have refused; a bad URL is a 422 at its field,
which never repeats the URL's user-info or query (where credentials get pasted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import StringConstraints

from enclave.common.endpoint_url import EndpointUrlError, check_endpoint_url
from enclave.gateway import output_caps
from enclave.gateway.api.schemas import BodyModel, Str255, field_error
from enclave.gateway.egress import display_url
from enclave.gateway.models.base import Api, ChatMessage, ModelRequest
from enclave.gateway.models.providers import (
    ENDPOINT_OPTIONAL,
    FIELD_PROVIDERS,
    IDENTIFIER_PROVIDERS,
    OPENAI,
    TEXT_COMPLETION_PREFIXES,
    ProviderSetupError,
    default_endpoint,
)
from enclave.gateway.prompts.definition import ModelParams

PROVIDER_LITELLM: Final = "litellm"

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

    @property
    def message(self) -> str:
        """The detail as one sentence (the first field error's message for a list)."""
        if isinstance(self.detail, str):
            return self.detail
        return "; ".join(str(item.get("msg", "")) for item in self.detail)


@dataclass(frozen=True, slots=True)
class ModelTarget:
    endpoint: str  # without trailing slash
    model: str  # the served model name sent as "model"
    api_key: str | None
    force_text_completion: bool
    provider: str = OPENAI  # which provider module serves it (enclave.gateway.models.providers)


def _suggestions_loc(name: str) -> list[str | int]:
    return [f"model_{name}"]


Loc = Callable[[str], list[str | int]]


def served_model(
    identifier: str | None,
    name: str | None,
    loc: Loc,
    kind: str | None = None,
    field: str = PROVIDER_LITELLM,
) -> tuple[str, bool, str]:
    """The served model name, whether to force the completions API, and the provider module.

    The identifier's LiteLLM prefix names the provider; ``kind`` is what the provider field
    said (None for "litellm"), and the two must agree.
    """
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
                    f"'{field}'; fix the identifier or the provider"
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
    return model, force_text, kind or OPENAI


def resolve_target(
    provider: str | None,
    name: str | None,
    endpoint: str | None,
    api_key: str | None,
    identifier: str | None,
    *,
    loc: Loc = _suggestions_loc,
) -> ModelTarget:
    """The model target from a provider, family name, endpoint, key and LiteLLM identifier.

    ``loc`` names a field ("endpoint", "identifier") where the request body carries it, for
    FastAPI-style error locations. Anthropic, Bedrock and Vertex models may leave the endpoint
    out (their public API, or one derived from the gateway's region/project settings); every
    endpoint, given or derived, passes the shared URL rules.
    """
    field = (provider or PROVIDER_LITELLM).strip().lower()
    # "litellm": the identifier's prefix says which provider; otherwise the field says it.
    kind = FIELD_PROVIDERS.get(field)
    if kind is None and field != PROVIDER_LITELLM:
        raise PlanError(
            f"model provider '{field}' is not supported by this gateway; use model_provider "
            f"'litellm' (or one of: {', '.join(sorted(FIELD_PROVIDERS))})"
        )
    model, force_text, kind = served_model(identifier, name, loc, kind, field)
    given = (endpoint or "").strip()
    if kind in ENDPOINT_OPTIONAL:
        try:
            given = default_endpoint(kind, model, given.rstrip("/"))
        except ProviderSetupError as exc:
            raise PlanError(str(exc), status=503) from None
    if not given:
        raise PlanError(
            [
                field_error(
                    loc("endpoint"),
                    "model_endpoint is required for model_provider litellm: the "
                    "OpenAI-compatible API base, e.g. http://model-host:8000/v1",
                    endpoint,
                    kind="missing",
                )
            ]
        )
    try:
        checked = check_endpoint_url(given, "model_endpoint")
    except EndpointUrlError as exc:
        # The input is shown without user-info and query: that is where credentials hide.
        raise PlanError([field_error(loc("endpoint"), str(exc), display_url(given))]) from None
    return ModelTarget(checked, model, api_key or None, force_text, kind)


def messages_as_text(messages: tuple[ChatMessage, ...]) -> str:
    """Chat messages as one raw prompt, for identifiers that force the completions API."""
    return "\n\n".join(
        m.content if m.role == "user" else f"{m.role}: {m.content}" for m in messages
    )


# model_metadata.provider values that mean "an OpenAI-compatible server" (older GitLab
# instances send "openai", newer ones the model's provider "api").
OPENAI_COMPATIBLE: Final = frozenset({"openai", "api", "custom_openai", PROVIDER_LITELLM})


class ModelMetadata(BodyModel):
    provider: Str255
    name: Annotated[str, StringConstraints(max_length=50)]
    endpoint: Annotated[str, StringConstraints(max_length=2048)] | None = None
    api_key: Annotated[str, StringConstraints(max_length=4096)] | None = None
    identifier: Str255 | None = None


def _metadata_loc(name: str) -> list[str | int]:
    return ["model_metadata", name]


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


def target_request(
    target: ModelTarget,
    messages: tuple[ChatMessage, ...],
    prompt: str | None,
    params: ModelParams,
    *,
    family: str = "other",
    prompt_id: str | None = None,
) -> ModelRequest:
    """Chat messages or a raw prompt for ``target`` (text-only models get messages as text):
    the one place a model request is built from a target, for every endpoint. ``prompt_id``
    caps the output of the embedded model (:mod:`enclave.gateway.output_caps`)."""
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
        max_tokens=output_caps.capped(target.endpoint, prompt_id, params.max_tokens),
        temperature=params.temperature,
        top_p=params.top_p,
        stop=params.stop,
        family=family,
    )
