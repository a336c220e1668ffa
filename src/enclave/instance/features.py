"""AI features and which model serves each (GitLab's ``Ai::FeatureSetting``).

One row per feature says: disabled, vendored (a shared gateway's model), self-hosted (one of
our model records) or unassigned. Resolving a feature for a request yields everything the
forwarded request needs: model family, endpoint, identifier and the decrypted API key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from enclave.common import wire
from enclave.instance.db.models import FeatureProvider, FeatureSetting
from enclave.instance.secrets import SecretBox, SecretDecryptError

# Associated data bound into every encrypted model API key (see secrets.SecretBox).
API_TOKEN_PURPOSE = "ai_self_hosted_models.api_token"  # noqa: S105 - AEAD label


class Feature(StrEnum):
    CODE_COMPLETIONS = "code_completions"
    CODE_GENERATIONS = "code_generations"
    DUO_CHAT = "duo_chat"


FEATURE_TITLES: dict[Feature, str] = {
    Feature.CODE_COMPLETIONS: "Code completions",
    Feature.CODE_GENERATIONS: "Code generations",
    Feature.DUO_CHAT: "General chat",
}

# The unit primitive (token scope) the gateway demands for each feature.
FEATURE_UNIT_PRIMITIVES: dict[Feature, str] = {
    Feature.CODE_COMPLETIONS: wire.UP_COMPLETE_CODE,
    Feature.CODE_GENERATIONS: wire.UP_GENERATE_CODE,
    Feature.DUO_CHAT: wire.UP_DUO_CHAT,
}

# Model families (GitLab's ``Ai::SelfHostedModel#model`` enum) and which may serve what
# (GitLab's feature metadata); the admin API validates assignments against this.
MODEL_FAMILIES = frozenset(
    {
        "mistral",
        "mixtral",
        "llama3",
        "codegemma",
        "codestral",
        "codellama",
        "deepseekcoder",
        "claude_3",
        "gpt",
        "general",
        "gemini",
    }
)
_CODE_FAMILIES = frozenset(MODEL_FAMILIES - {"gemini"})
COMPATIBLE_FAMILIES: dict[Feature, frozenset[str]] = {
    Feature.CODE_COMPLETIONS: _CODE_FAMILIES,
    Feature.CODE_GENERATIONS: _CODE_FAMILIES,
    Feature.DUO_CHAT: frozenset(
        {"mistral", "mixtral", "codestral", "claude_3", "gpt", "llama3", "general"}
    ),
}


class FeatureUnavailableError(Exception):
    """The feature cannot be served as configured (HTTP 403); the message says what to do."""


class FeatureMisconfiguredError(Exception):
    """The feature's model record is broken (e.g. its key cannot be decrypted) (HTTP 500)."""


@dataclass(frozen=True)
class ResolvedModel:
    """The self-hosted model that serves a feature, with its decrypted API key."""

    feature: Feature
    model_id: int
    name: str
    family: str
    provider: str
    endpoint: str | None
    identifier: str | None
    api_key: str | None = field(repr=False)


def resolve_feature(session: Session, secret_box: SecretBox, feature: Feature) -> ResolvedModel:
    """The model serving ``feature``; blocking (database), call it from a thread pool."""
    title = FEATURE_TITLES[feature]
    setting = session.scalar(
        select(FeatureSetting)
        .options(joinedload(FeatureSetting.self_hosted_model))
        .where(FeatureSetting.feature == feature.value)
    )
    provider = setting.provider if setting is not None else FeatureProvider.UNASSIGNED.value
    if provider == FeatureProvider.DISABLED:
        raise FeatureUnavailableError(
            f"{title} is disabled on this instance. Ask an administrator to assign a "
            f"self-hosted model to the {feature.value} feature."
        )
    if provider == FeatureProvider.VENDORED:
        raise FeatureUnavailableError(
            f"{title} is set to a vendored model, which this instance cannot use. Ask an "
            f"administrator to assign a self-hosted model to the {feature.value} feature."
        )
    model = setting.self_hosted_model if setting is not None else None
    if provider != FeatureProvider.SELF_HOSTED or model is None:
        raise FeatureUnavailableError(
            f"{title} has no model assigned. Ask an administrator to assign a self-hosted model "
            f"to the {feature.value} feature (or start the instance with "
            f"ENCLAVE_INSTANCE__EMBEDDED_MODEL_ENDPOINT to use the embedded model)."
        )
    api_key: str | None = None
    if model.api_token_encrypted is not None:
        try:
            api_key = secret_box.decrypt(model.api_token_encrypted, API_TOKEN_PURPOSE)
        except SecretDecryptError as exc:
            raise FeatureMisconfiguredError(
                f"the API key of self-hosted model {model.name!r} cannot be read: {exc}"
            ) from exc
    return ResolvedModel(
        feature=feature,
        model_id=model.id,
        name=model.name,
        family=model.family,
        provider=model.provider,
        endpoint=model.endpoint,
        identifier=model.identifier,
        api_key=api_key,
    )
