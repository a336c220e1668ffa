"""AI features and which model serves each (GitLab's ``Ai::FeatureSetting``).

One row per feature says: disabled, vendored (a shared gateway's model), self-hosted (one of
our model records) or unassigned. Resolving a feature for a request yields everything the
forwarded request needs: model family, endpoint, identifier and the decrypted API key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from enclave.common.features import (
    CHAT_SUB_FEATURES,
    COMPATIBLE_FAMILIES,
    FAMILY_DISPLAY_NAMES,
    FEATURE_RELEASE_STATES,
    FEATURE_TITLES,
    FEATURE_UNIT_PRIMITIVES,
    MODEL_FAMILIES,
    Feature,
    ReleaseState,
    family_release_state,
    incompatibility,
    main_feature,
)
from enclave.instance.db.models import FeatureProvider, FeatureSetting, SelfHostedModel
from enclave.instance.secrets import SecretBox, SecretDecryptError

# The catalogue lives in enclave.common.features (the gateway needs it too); re-exported here
# so the instance keeps one import for everything about features.
__all__ = [
    "API_TOKEN_PURPOSE",
    "CHAT_SUB_FEATURES",
    "COMPATIBLE_FAMILIES",
    "FAMILY_DISPLAY_NAMES",
    "FEATURE_RELEASE_STATES",
    "FEATURE_TITLES",
    "FEATURE_UNIT_PRIMITIVES",
    "MODEL_FAMILIES",
    "Feature",
    "FeatureMisconfiguredError",
    "FeatureUnavailableError",
    "ReleaseState",
    "ResolvedModel",
    "effective_setting",
    "family_release_state",
    "incompatibility",
    "main_feature",
    "resolve_fallback",
    "resolve_feature",
    "vendored_model",
]

# Associated data bound into every encrypted model API key (see secrets.SecretBox).
API_TOKEN_PURPOSE = "ai_self_hosted_models.api_token"  # noqa: S105 - AEAD label


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
    # Served by the vendored (shared) gateway's own model: the request names no model.
    vendored: bool = False


def vendored_model(feature: Feature) -> ResolvedModel:
    """A vendored feature: no model of ours; the shared gateway picks its vendor model."""
    return ResolvedModel(
        feature=feature,
        model_id=0,
        name="vendored",
        family="",
        provider="vendored",
        endpoint=None,
        identifier=None,
        api_key=None,
        vendored=True,
    )


def _setting_row(session: Session, feature: Feature) -> FeatureSetting | None:
    return session.scalar(
        select(FeatureSetting)
        .options(joinedload(FeatureSetting.self_hosted_model))
        .where(FeatureSetting.feature == feature.value)
    )


def effective_setting(session: Session, feature: Feature) -> tuple[FeatureSetting | None, Feature]:
    """The row that decides ``feature`` and which feature it belongs to.

    A chat sub-feature without a row, or whose row is unassigned, uses the ``duo_chat`` row.
    """
    row = _setting_row(session, feature)
    parent = main_feature(feature)
    if parent is not None and (row is None or row.provider == FeatureProvider.UNASSIGNED):
        return _setting_row(session, parent), parent
    return row, feature


def resolve_feature(
    session: Session, secret_box: SecretBox, feature: Feature, *, vendored_gateway: bool = False
) -> ResolvedModel:
    """The model serving ``feature``; blocking (database), call it from a thread pool.

    ``vendored_gateway``: whether a vendored AI gateway is configured; without one a vendored
    feature is refused (it never goes to the self-hosted gateway instead).
    """
    title = FEATURE_TITLES[feature]
    setting, source = effective_setting(session, feature)
    provider = setting.provider if setting is not None else FeatureProvider.UNASSIGNED.value
    via = f" (it uses the {source.value} setting)" if source is not feature else ""
    if provider == FeatureProvider.DISABLED:
        raise FeatureUnavailableError(
            f"{title} is disabled on this instance{via}. Ask an administrator to assign a "
            f"self-hosted model to the {feature.value} feature."
        )
    if provider == FeatureProvider.VENDORED:
        if vendored_gateway:
            return vendored_model(feature)
        raise FeatureUnavailableError(
            f"{title} is set to a vendored model{via}, but no vendored AI gateway is "
            "configured. Ask an administrator to set the vendored AI gateway URL (admin AI "
            f"settings) or to assign a self-hosted model to the {feature.value} feature."
        )
    model = setting.self_hosted_model if setting is not None else None
    if provider != FeatureProvider.SELF_HOSTED or model is None:
        raise FeatureUnavailableError(
            f"{title} has no model assigned. Ask an administrator to assign a self-hosted model "
            f"to the {feature.value} feature (or start the instance with "
            f"ENCLAVE_INSTANCE__EMBEDDED_MODEL_ENDPOINT to use the embedded model)."
        )
    return _resolved(feature, model, secret_box)


def resolve_fallback(
    session: Session, secret_box: SecretBox, feature: Feature
) -> ResolvedModel | None:
    """The fallback model of the setting that decides ``feature`` (a chat sub-feature that
    follows ``duo_chat`` uses its fallback), or None; blocking (database)."""
    setting, _ = effective_setting(session, feature)
    if setting is None or setting.provider != FeatureProvider.SELF_HOSTED:
        return None
    model = setting.fallback_model
    return _resolved(feature, model, secret_box) if model is not None else None


def _resolved(feature: Feature, model: SelfHostedModel, secret_box: SecretBox) -> ResolvedModel:
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
