"""The self-hosted model registry (GitLab's ``Ai::SelfHostedModel`` and its services).

A model record says how the gateway reaches one deployment: a unique name, the model family
(which picks the prompts), the provider kind, the endpoint, the LiteLLM-style identifier and an
optional API key, stored AES-256-GCM encrypted (:mod:`enclave.instance.secrets`) and never
returned. Validation is strict and its messages precise, because a wrong value here only shows
up later as a failed completion in someone's IDE.

Identifier formats per provider (LiteLLM's, as GitLab uses them):

=================  ===========================  =====================================
provider           identifier                   endpoint
=================  ===========================  =====================================
``api``            ``custom_openai/<served>``   required: the OpenAI-compatible base URL
``azure_openai``   ``azure/<deployment>``       required: https://<resource>.openai.azure.com
``bedrock``        ``bedrock/<model-id>``       optional (a VPC endpoint); or ``region``; else
                                                the gateway's AWS region
``vertex_ai``      ``vertex_ai/<model>``        optional API base; ``project`` and ``location``
                                                (else the gateway's)
``anthropic``      ``anthropic/<model>``        optional (an Anthropic-compatible proxy)
=================  ===========================  =====================================

Endpoints follow the gateway's rules when they are saved (:class:`EndpointRules`): the shared
URL rules, then the model egress allow-list (``instance.model_egress_allow``, the same entries
and default as the gateway's) with the host name resolved once, at save time. Moving a model
with a stored API key to another host (scheme, host or port) needs the key again, or
``keep_api_token: true`` — so an edit cannot send the stored key somewhere new — and the audit
event records the old and the new endpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from enclave.common.endpoint_url import (
    MAX_URL_CHARS,
    EndpointUrlError,
    check_endpoint_address,
    check_endpoint_url,
)
from enclave.common.netrules import DEFAULT_EGRESS, EgressPolicy
from enclave.config import InstanceSettings
from enclave.instance import audit
from enclave.instance.actor import Actor
from enclave.instance.admin_errors import (
    ConflictError,
    InvalidInputError,
    ModelInUseError,
    NotFoundError,
)
from enclave.instance.db.models import (
    MAX_ID,
    FeatureProvider,
    FeatureSetting,
    ModelProvider,
    SelfHostedModel,
    id_can_exist,
)
from enclave.instance.features import (
    API_TOKEN_PURPOSE,
    FAMILY_DISPLAY_NAMES,
    MODEL_FAMILIES,
    Feature,
    family_release_state,
    incompatibility,
)
from enclave.instance.secrets import SecretBox

MAX_NAME_CHARS = 255
MAX_ENDPOINT_CHARS = MAX_URL_CHARS
MAX_IDENTIFIER_CHARS = 255
MAX_API_TOKEN_CHARS = 4096

IDENTIFIER_PREFIXES: dict[str, str] = {
    ModelProvider.API.value: "custom_openai/",
    ModelProvider.AZURE_OPENAI.value: "azure/",
    ModelProvider.BEDROCK.value: "bedrock/",
    ModelProvider.VERTEX_AI.value: "vertex_ai/",
    ModelProvider.ANTHROPIC.value: "anthropic/",
}
PROVIDER_TITLES: dict[str, str] = {
    ModelProvider.API.value: "OpenAI-compatible API",
    ModelProvider.AZURE_OPENAI.value: "Azure OpenAI",
    ModelProvider.BEDROCK.value: "Amazon Bedrock",
    ModelProvider.VERTEX_AI.value: "Google Vertex AI",
    ModelProvider.ANTHROPIC.value: "Anthropic",
}
ENDPOINT_REQUIRED = frozenset({ModelProvider.API.value, ModelProvider.AZURE_OPENAI.value})
_IDENTIFIER_REST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")


# --- validation -----------------------------------------------------------------------------


def validate_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError("name is missing: give the deployment a name", field="name")
    name = value.strip()
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInputError(
            f"name is too long ({len(name)} characters; at most {MAX_NAME_CHARS})", field="name"
        )
    if any(ord(ch) < 32 for ch in name):
        raise InvalidInputError("name must not contain control characters", field="name")
    return name


def validate_family(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(
            f"model family is missing; use one of: {', '.join(sorted(MODEL_FAMILIES))}",
            field="model",
        )
    family = value.strip().lower()
    if family not in MODEL_FAMILIES:
        raise InvalidInputError(
            f"model family {value!r} is unknown; use one of: {', '.join(sorted(MODEL_FAMILIES))}",
            field="model",
        )
    return family


def validate_provider(value: Any) -> str:
    provider = value.strip().lower() if isinstance(value, str) else value
    if provider not in IDENTIFIER_PREFIXES:
        raise InvalidInputError(
            f"provider {value!r} is unknown; use one of: {', '.join(IDENTIFIER_PREFIXES)}",
            field="provider",
        )
    return str(provider)


def validate_url(value: Any, field: str, *, what: str) -> str:
    """An absolute http(s) URL by the shared endpoint rules (:mod:`enclave.common.endpoint_url`).

    The gateway applies the same rules before it calls anything, so what is saved here is what
    it will call.
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{field} is missing: give the {what} URL", field=field)
    try:
        return check_endpoint_url(value, field)
    except EndpointUrlError as exc:
        raise InvalidInputError(str(exc), field=field) from None


def validate_endpoint(value: Any, provider: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if provider in ENDPOINT_REQUIRED:
            example = (
                "http://vllm.internal:8000/v1"
                if provider == ModelProvider.API.value
                else "https://<resource>.openai.azure.com"
            )
            raise InvalidInputError(
                f"endpoint is missing: {PROVIDER_TITLES[provider]} models need the URL of their "
                f"server, for example {example}",
                field="endpoint",
            )
        return None
    return validate_url(value, "endpoint", what="model server's")


# --- where a cloud model runs: Bedrock's region, Vertex AI's project and location ---------------
#
# Not stored on their own: saved as the endpoint the gateway would derive from its own settings
# (``gateway.models.providers.default_endpoint``), so a model's value wins over the gateway-wide
# one with no new column and no new field on the wire. The views read them back from it.

PLACEMENT_FIELDS = ("region", "project", "location")
_AWS_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}$")
# The gateway's (bedrock.py): bedrock-runtime[-fips].<region>.amazonaws.com, and VPC endpoints
# vpce-….bedrock-runtime.<region>.vpce.amazonaws.com; the signing region comes from it.
_BEDROCK_HOST_REGION = re.compile(
    r"bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.(?:vpce\.)?amazonaws\.com$"
)
_BEDROCK_PUBLIC = re.compile(r"^https://bedrock-runtime\.([a-z0-9-]+)\.amazonaws\.com$")
_GCP_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_GCP_LOCATION = re.compile(r"^(?:global|[a-z]+(?:-[a-z]+[0-9]+)?)$")
_VERTEX_PLACE = re.compile(r"^(.*)/v1/projects/([^/]+)/locations/([^/]+)$")
_VERTEX_PUBLIC = re.compile(r"^https://(?:[a-z0-9-]+-)?aiplatform\.googleapis\.com$")


def _vertex_host(location: str) -> str:
    host = "aiplatform.googleapis.com"
    return f"https://{host if location == 'global' else f'{location}-{host}'}"


def placement_of(provider: str, endpoint: str | None) -> dict[str, str | None]:
    """Bedrock's region, Vertex AI's project and location, as ``endpoint`` names them."""
    found: dict[str, str | None] = dict.fromkeys(PLACEMENT_FIELDS)
    if not endpoint:
        return found
    if provider == ModelProvider.BEDROCK.value:
        match = _BEDROCK_HOST_REGION.search((urlsplit(endpoint).hostname or "").lower())
        found["region"] = match.group(1) if match else None
    elif provider == ModelProvider.VERTEX_AI.value:
        place = _VERTEX_PLACE.match(endpoint)
        if place:
            found["project"], found["location"] = place.group(2), place.group(3)
    return found


def placement_base(provider: str, endpoint: str | None) -> str | None:
    """``endpoint`` less what a region, project or location put there (None: the default)."""
    if not endpoint:
        return None
    if provider == ModelProvider.BEDROCK.value and _BEDROCK_PUBLIC.match(endpoint):
        return None
    if provider == ModelProvider.VERTEX_AI.value:
        place = _VERTEX_PLACE.match(endpoint)
        if place:
            base = place.group(1)
            return None if _VERTEX_PUBLIC.match(base) else base
    return endpoint


def _placement_text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{field} must be a string", field=field)
    return value.strip() or None


def place_endpoint(
    provider: str,
    endpoint: str | None,
    region: Any = None,
    project: Any = None,
    location: Any = None,
) -> str | None:
    """The endpoint to store for a Bedrock ``region`` or a Vertex AI ``project``/``location``
    (``endpoint``, validated, is the model's own: a VPC endpoint, an API base)."""
    region = _placement_text(region, "region")
    project = _placement_text(project, "project")
    location = _placement_text(location, "location")
    title = PROVIDER_TITLES[provider]
    if region is not None:
        if provider != ModelProvider.BEDROCK.value:
            raise InvalidInputError(
                f"region is for Amazon Bedrock models (provider bedrock), not {title} models",
                field="region",
            )
        if not _AWS_REGION.match(region):
            raise InvalidInputError(
                f"region {region!r} is not an AWS region name such as us-east-1 or eu-central-1",
                field="region",
            )
        if endpoint is None:
            return f"https://bedrock-runtime.{region}.amazonaws.com"
        named = placement_of(provider, endpoint)["region"]
        if named != region:
            raise InvalidInputError(
                f"region {region} and endpoint {endpoint} disagree: the gateway signs for the "
                f"region the endpoint's host names ({named or 'none'}); give the region alone, "
                "or the endpoint alone (with ENCLAVE_GATEWAY__BEDROCK_REGION for a host that "
                "names none)",
                field="region",
            )
        return endpoint
    if project is None and location is None:
        return endpoint
    if provider != ModelProvider.VERTEX_AI.value:
        field = "project" if project is not None else "location"
        raise InvalidInputError(
            f"{field} is for Google Vertex AI models (provider vertex_ai), not {title} models",
            field=field,
        )
    if project is None:
        raise InvalidInputError(
            "project is missing: a location needs its Google Cloud project (project)",
            field="project",
        )
    if location is None:
        raise InvalidInputError(
            "location is missing: give the project's Vertex AI location too, for example "
            "us-central1, europe-west4 or global",
            field="location",
        )
    if not _GCP_PROJECT.match(project):
        raise InvalidInputError(
            f"project {project!r} is not a Google Cloud project id (6-30 characters: lowercase "
            "letters, digits and hyphens, starting with a letter)",
            field="project",
        )
    if not _GCP_LOCATION.match(location):
        raise InvalidInputError(
            f"location {location!r} is not a Vertex AI location such as us-central1, "
            "europe-west4 or global",
            field="location",
        )
    if endpoint is not None and _VERTEX_PLACE.match(endpoint):
        raise InvalidInputError(
            f"endpoint {endpoint} names a project and location already: give project and "
            "location with an API base (or no endpoint), not both",
            field="endpoint",
        )
    base = endpoint.rstrip("/") if endpoint else _vertex_host(location)
    placed = f"{base}/v1/projects/{project}/locations/{location}"
    if len(placed) > MAX_ENDPOINT_CHARS:
        raise InvalidInputError(
            f"endpoint with project and location is too long ({len(placed)} characters; at "
            f"most {MAX_ENDPOINT_CHARS})",
            field="endpoint",
        )
    return placed


@dataclass(frozen=True)
class EndpointRules:
    """The gateway's address rules, applied when a model endpoint is saved (not on the hot path)."""

    policy: EgressPolicy = DEFAULT_EGRESS
    resolve_timeout_s: float = 3.0

    @classmethod
    def from_settings(cls, settings: InstanceSettings) -> EndpointRules:
        return cls(
            EgressPolicy.parse(settings.model_egress_allow), settings.endpoint_resolve_timeout_s
        )

    def check(self, endpoint: str | None) -> None:
        """:class:`InvalidInputError` when the gateway would refuse to call ``endpoint``."""
        if endpoint is None:
            return
        try:
            check_endpoint_address(endpoint, self.policy, timeout_s=self.resolve_timeout_s)
        except EndpointUrlError as exc:
            raise InvalidInputError(str(exc), field="endpoint") from None


def _origin(endpoint: str | None) -> tuple[str, str, int] | None:
    """Where a key sent to ``endpoint`` goes: scheme, host and port (None: the provider's own)."""
    if endpoint is None:
        return None
    parts = urlsplit(endpoint)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def validate_identifier(value: Any, provider: str) -> str:
    prefix = IDENTIFIER_PREFIXES[provider]
    title = PROVIDER_TITLES[provider]
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(
            f"identifier is missing: {title} models need {prefix}<model>, for example "
            f"{_example_identifier(provider)}",
            field="identifier",
        )
    identifier = value.strip()
    if len(identifier) > MAX_IDENTIFIER_CHARS:
        raise InvalidInputError(
            f"identifier is too long ({len(identifier)} characters; at most "
            f"{MAX_IDENTIFIER_CHARS})",
            field="identifier",
        )
    if not identifier.startswith(prefix):
        other = next(
            (p for p, pre in IDENTIFIER_PREFIXES.items() if identifier.startswith(pre)), None
        )
        hint = (
            f"; {identifier.split('/', 1)[0]}/… is the format of provider {other!r}"
            if other
            else ""
        )
        raise InvalidInputError(
            f"identifier {identifier!r} does not fit provider {provider!r} ({title}): it must "
            f"start with {prefix!r}, for example {_example_identifier(provider)}{hint}",
            field="identifier",
        )
    rest = identifier[len(prefix) :]
    if not rest or not _IDENTIFIER_REST.match(rest):
        raise InvalidInputError(
            f"identifier {identifier!r} needs a model name after {prefix!r} (letters, digits "
            "and . _ : / @ + -, no spaces), for example "
            f"{_example_identifier(provider)}",
            field="identifier",
        )
    return identifier


def _example_identifier(provider: str) -> str:
    return {
        ModelProvider.API.value: "custom_openai/Mistral-7B-Instruct-v0.3",
        ModelProvider.AZURE_OPENAI.value: "azure/gpt-4o",
        ModelProvider.BEDROCK.value: "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
        ModelProvider.VERTEX_AI.value: "vertex_ai/gemini-2.5-flash",
        ModelProvider.ANTHROPIC.value: "anthropic/claude-sonnet-4-5",
    }[provider]


def validate_api_token(value: Any, provider: str | None = None) -> str | None:
    """The key to store; None or "" means "no key".

    Keys go into a header, so spaces and control characters are refused, except in the
    shapes some providers take: Vertex AI's service-account key (its JSON, stored compact;
    the gateway exchanges it for a token) and Azure's ``Bearer <Entra ID token>``. Bedrock's
    ``ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]`` must have non-empty parts.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError("api_token must be a string", field="api_token")
    token = value.strip()
    if len(token) > MAX_API_TOKEN_CHARS:
        raise InvalidInputError(
            f"api_token is too long (at most {MAX_API_TOKEN_CHARS} characters)", field="api_token"
        )
    if provider == ModelProvider.VERTEX_AI.value and token.startswith("{"):
        return _service_account_key(token)
    checked = token
    if provider == ModelProvider.AZURE_OPENAI.value and token.startswith("Bearer "):
        checked = token.removeprefix("Bearer ")
    if any(ord(ch) < 32 or ch == " " for ch in checked):
        raise InvalidInputError(
            "api_token must not contain spaces or control characters", field="api_token"
        )
    if provider == ModelProvider.BEDROCK.value and ":" in token:
        parts = token.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidInputError(
                "api_token of a Bedrock model is ACCESS_KEY_ID:SECRET_ACCESS_KEY"
                "[:SESSION_TOKEN] (or a Bedrock API key, without colons)",
                field="api_token",
            )
    return token or None


def _service_account_key(text: str) -> str:
    try:
        info = json.loads(text)
    except ValueError:
        info = None
    if (
        not isinstance(info, dict)
        or not isinstance(info.get("client_email"), str)
        or "PRIVATE KEY-----" not in str(info.get("private_key", ""))
    ):
        raise InvalidInputError(
            "api_token of a Vertex AI model is a service-account key (the JSON file, with "
            "client_email and private_key) or an access token",
            field="api_token",
        )
    return json.dumps(info, separators=(",", ":"))


@dataclass(frozen=True)
class ModelSpec:
    """A validated model definition (what create and connection tests take)."""

    name: str
    family: str
    provider: str
    endpoint: str | None
    identifier: str
    api_token: str | None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Validate a create request; ``model`` (GitLab's name) or ``family`` give the family."""
        provider = validate_provider(data.get("provider") or ModelProvider.API.value)
        return cls(
            name=validate_name(data.get("name")),
            family=validate_family(data.get("model", data.get("family"))),
            provider=provider,
            endpoint=place_endpoint(
                provider,
                validate_endpoint(data.get("endpoint"), provider),
                *(data.get(field) for field in PLACEMENT_FIELDS),
            ),
            identifier=validate_identifier(data.get("identifier"), provider),
            api_token=validate_api_token(data.get("api_token"), provider),
        )


# --- views ----------------------------------------------------------------------------------


def model_view(model: SelfHostedModel) -> dict[str, Any]:
    """The API representation; the key is never part of it, only whether there is one."""
    return {
        "id": model.id,
        "name": model.name,
        "model": model.family,
        "model_display_name": FAMILY_DISPLAY_NAMES.get(model.family, model.family),
        "provider": model.provider,
        "provider_display_name": PROVIDER_TITLES.get(model.provider, model.provider),
        "endpoint": model.endpoint,
        **placement_of(model.provider, model.endpoint),
        "identifier": model.identifier or "",
        "has_api_token": model.api_token_encrypted is not None,
        "release_state": family_release_state(model.family).value,
        "feature_settings": sorted(
            setting.feature
            for setting in model.feature_settings
            if setting.provider == FeatureProvider.SELF_HOSTED
        ),
        "created_at": model.created_at,
        "updated_at": model.updated_at,
    }


# --- queries and changes --------------------------------------------------------------------


def get_model(session: Session, model_id: int) -> SelfHostedModel:
    model = (
        session.get(
            SelfHostedModel, model_id, options=[selectinload(SelfHostedModel.feature_settings)]
        )
        if id_can_exist(model_id)
        else None
    )
    if model is None:
        raise NotFoundError(f"self-hosted model {model_id} does not exist", field="id")
    return model


def find_model(session: Session, ref: int | str) -> SelfHostedModel:
    """A model by id or by name (the CLI accepts both)."""
    if isinstance(ref, int) or (
        isinstance(ref, str) and ref.isdigit() and len(ref) <= len(str(MAX_ID))
    ):
        by_id = session.get(SelfHostedModel, int(ref)) if id_can_exist(int(ref)) else None
        if by_id is not None:
            return get_model(session, by_id.id)
    model = session.scalar(select(SelfHostedModel).where(SelfHostedModel.name == str(ref)))
    if model is None:
        raise NotFoundError(f"no self-hosted model is named or numbered {ref!r}", field="name")
    return get_model(session, model.id)


def list_models(
    session: Session, *, offset: int = 0, limit: int | None = None
) -> tuple[list[SelfHostedModel], int]:
    total = int(session.scalar(select(func.count()).select_from(SelfHostedModel)) or 0)
    query = (
        select(SelfHostedModel)
        .options(selectinload(SelfHostedModel.feature_settings))
        .order_by(SelfHostedModel.id)
        .offset(offset)
    )
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query)), total


def _ensure_unique_name(session: Session, name: str, exclude_id: int | None = None) -> None:
    query = select(SelfHostedModel.id).where(SelfHostedModel.name == name)
    if exclude_id is not None:
        query = query.where(SelfHostedModel.id != exclude_id)
    if session.scalar(query) is not None:
        raise ConflictError(
            f"name {name!r} has already been taken by another self-hosted model", field="name"
        )


def create_model(
    session: Session, box: SecretBox, spec: ModelSpec, actor: Actor, *, rules: EndpointRules
) -> SelfHostedModel:
    _ensure_unique_name(session, spec.name)
    rules.check(spec.endpoint)
    model = SelfHostedModel(
        name=spec.name,
        family=spec.family,
        provider=spec.provider,
        endpoint=spec.endpoint,
        identifier=spec.identifier,
        api_token_encrypted=(
            box.encrypt(spec.api_token, API_TOKEN_PURPOSE) if spec.api_token else None
        ),
    )
    session.add(model)
    session.flush()
    audit.record(
        session,
        audit.SELF_HOSTED_MODEL_CREATED,
        f"ai_self_hosted_model/{model.id}",
        {
            "name": model.name,
            "model": model.family,
            "provider": model.provider,
            "endpoint": model.endpoint,
            "identifier": model.identifier,
            "has_api_token": spec.api_token is not None,
        },
        actor=actor,
    )
    return get_model(session, model.id)


UPDATABLE = (
    "name",
    "model",
    "family",
    "provider",
    "endpoint",
    "identifier",
    "api_token",
    "keep_api_token",
    *PLACEMENT_FIELDS,
)


def update_model(
    session: Session,
    box: SecretBox,
    model_id: int,
    changes: Mapping[str, Any],
    actor: Actor,
    *,
    rules: EndpointRules,
) -> SelfHostedModel:
    """Apply ``changes`` (any of :data:`UPDATABLE`); ``api_token``: "" or None removes the key,
    absent keeps it. The result is validated as a whole (e.g. a new provider needs a matching
    identifier) and against the features that use the model (a new family must suit them).

    A new endpoint must pass ``rules``; one on another host (scheme, host or port) while a key
    is stored needs ``api_token`` again or ``keep_api_token: true``."""
    unknown = sorted(set(changes) - set(UPDATABLE))
    if unknown:
        raise InvalidInputError(
            f"cannot change {', '.join(unknown)}; updatable fields: {', '.join(UPDATABLE[2:])}, "
            "name, model",
            field=unknown[0],
        )
    model = get_model(session, model_id)
    provider = validate_provider(changes.get("provider", model.provider))
    merged = {
        "name": changes.get("name", model.name),
        "model": changes.get("model", changes.get("family", model.family)),
        "provider": provider,
        "endpoint": changes.get("endpoint", model.endpoint),
        "identifier": changes.get("identifier", model.identifier),
    }
    name = validate_name(merged["name"])
    family = validate_family(merged["model"])
    placement = {field: changes[field] for field in PLACEMENT_FIELDS if field in changes}
    if placement:
        # A new region, project or location replaces what the old ones put in the endpoint.
        if "endpoint" not in changes:
            merged["endpoint"] = placement_base(model.provider, model.endpoint)
        current = placement_of(provider, model.endpoint) if provider == model.provider else {}
        if "project" in placement and not _placement_text(placement["project"], "project"):
            current["location"] = None  # no project: back to the gateway's, location too
        endpoint = place_endpoint(
            provider,
            validate_endpoint(merged["endpoint"], provider),
            **{**current, **placement},
        )
    else:
        endpoint = validate_endpoint(merged["endpoint"], provider)
    identifier = validate_identifier(merged["identifier"], provider)
    keep = changes.get("keep_api_token")
    if keep is not None and not isinstance(keep, bool):
        raise InvalidInputError("keep_api_token must be true or false", field="keep_api_token")
    if endpoint != model.endpoint:
        rules.check(endpoint)
    moved = _origin(endpoint) != _origin(model.endpoint)
    if (
        moved
        and model.api_token_encrypted is not None
        and "api_token" not in changes
        and keep is not True
    ):
        # Else an edit (or a stolen admin session) could redirect the stored key elsewhere.
        new_place = endpoint or f"the {PROVIDER_TITLES[provider]} default endpoint"
        raise InvalidInputError(
            f"endpoint moves {model.name!r} from {model.endpoint or 'the provider default'} to "
            f"{new_place}, another host, and the stored API key would be sent there: give the "
            "key for the new endpoint again (api_token; CLI --api-key-file), remove it "
            '(api_token ""; CLI --remove-api-key), or confirm that the new host may receive it '
            "(keep_api_token: true; CLI --keep-api-key)",
            field="api_token",
        )
    if name != model.name:
        _ensure_unique_name(session, name, exclude_id=model.id)
    if family != model.family:
        as_fallback = session.scalars(
            select(FeatureSetting).where(FeatureSetting.fallback_model_id == model.id)
        ).all()
        for setting in [*model.feature_settings, *as_fallback]:
            try:
                feature = Feature(setting.feature)
            except ValueError:
                continue
            problem = incompatibility(feature, family)
            if problem:
                raise InvalidInputError(
                    f"cannot change the family of {model.name!r} to {family}: {problem}; "
                    "assign another model to that feature first",
                    field="model",
                )
    previous_endpoint = model.endpoint
    changed: list[str] = []
    for attribute, value in (
        ("name", name),
        ("family", family),
        ("provider", provider),
        ("endpoint", endpoint),
        ("identifier", identifier),
    ):
        if getattr(model, attribute) != value:
            setattr(model, attribute, value)
            changed.append("model" if attribute == "family" else attribute)
    if "api_token" in changes:
        token = validate_api_token(changes["api_token"], provider)
        model.api_token_encrypted = box.encrypt(token, API_TOKEN_PURPOSE) if token else None
        changed.append("api_token")
    if changed:
        session.flush()
        details: dict[str, Any] = {
            "name": model.name,
            "changed": changed,
            "model": model.family,
            "provider": model.provider,
            "endpoint": model.endpoint,
            "identifier": model.identifier,
            "has_api_token": model.api_token_encrypted is not None,
        }
        if "endpoint" in changed:
            details["previous_endpoint"] = previous_endpoint
            if moved and model.api_token_encrypted is not None:
                # Who decided that the key may go to the new host (never the key itself).
                details["key_on_move"] = "replaced" if "api_token" in changed else "kept"
        audit.record(
            session,
            audit.SELF_HOSTED_MODEL_UPDATED,
            f"ai_self_hosted_model/{model.id}",
            details,
            actor=actor,
        )
    return get_model(session, model.id)


def delete_model(session: Session, model_id: int, actor: Actor) -> None:
    model = get_model(session, model_id)
    primary = session.scalars(
        select(FeatureSetting.feature).where(FeatureSetting.self_hosted_model_id == model.id)
    ).all()
    fallback = session.scalars(
        select(FeatureSetting.feature).where(FeatureSetting.fallback_model_id == model.id)
    ).all()
    in_use = [*primary, *(f"{feature} (as its fallback model)" for feature in fallback)]
    if in_use:
        raise ModelInUseError(model.name, in_use)
    audit.record(
        session,
        audit.SELF_HOSTED_MODEL_DESTROYED,
        f"ai_self_hosted_model/{model.id}",
        {"name": model.name, "model": model.family, "endpoint": model.endpoint},
        actor=actor,
    )
    session.delete(model)
    session.flush()


def decrypt_api_token(box: SecretBox, model: SelfHostedModel) -> str | None:
    if model.api_token_encrypted is None:
        return None
    return box.decrypt(model.api_token_encrypted, API_TOKEN_PURPOSE)
