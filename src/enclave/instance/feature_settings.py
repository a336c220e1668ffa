"""Changing and listing feature settings (GitLab's ``Ai::FeatureSettings::UpdateService``).

Each feature is set to ``disabled``, ``vendored``, ``self_hosted`` (with a model whose family
suits the feature) or back to ``unassigned``. Chat sub-features left unassigned follow
``duo_chat``; the list shows both what a feature is set to and what it effectively uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from enclave.instance import audit
from enclave.instance.actor import Actor
from enclave.instance.admin_errors import InvalidInputError, NotFoundError
from enclave.instance.ai_settings import EffectiveAiSettings
from enclave.instance.db.models import FeatureProvider, FeatureSetting, SelfHostedModel
from enclave.instance.features import (
    COMPATIBLE_FAMILIES,
    FEATURE_RELEASE_STATES,
    FEATURE_TITLES,
    FEATURE_UNIT_PRIMITIVES,
    Feature,
    incompatibility,
    main_feature,
)
from enclave.instance.registry import find_model

PROVIDER_TITLES = {
    FeatureProvider.DISABLED.value: "Disabled",
    FeatureProvider.VENDORED.value: "Vendored model",
    FeatureProvider.SELF_HOSTED.value: "Self-hosted model",
    FeatureProvider.UNASSIGNED.value: "Unassigned",
}


def parse_feature(value: Any) -> Feature:
    try:
        return Feature(str(value).strip())
    except ValueError:
        raise InvalidInputError(
            f"feature {value!r} is unknown; use one of: {', '.join(f.value for f in Feature)}",
            field="feature",
        ) from None


def parse_provider(value: Any) -> FeatureProvider:
    try:
        return FeatureProvider(str(value).strip().lower())
    except ValueError:
        raise InvalidInputError(
            f"provider {value!r} is unknown; use one of: "
            f"{', '.join(p.value for p in FeatureProvider)}",
            field="provider",
        ) from None


def _rows(session: Session) -> dict[str, FeatureSetting]:
    rows = session.scalars(
        select(FeatureSetting).options(
            joinedload(FeatureSetting.self_hosted_model), joinedload(FeatureSetting.fallback_model)
        )
    ).all()
    return {row.feature: row for row in rows}


def _model_brief(model: SelfHostedModel | None) -> dict[str, Any] | None:
    if model is None:
        return None
    return {"id": model.id, "name": model.name, "model": model.family}


def serving_gateway(
    provider: str, gateways: EffectiveAiSettings | None
) -> tuple[str | None, str | None]:
    """Which gateway serves a feature in effect ("self_hosted", "vendored" or None) and its URL
    (None when unknown, or for a vendored feature while no vendored gateway is configured)."""
    if provider == FeatureProvider.SELF_HOSTED:
        return "self_hosted", gateways.ai_gateway_url if gateways is not None else None
    if provider == FeatureProvider.VENDORED:
        return "vendored", gateways.vendored_ai_gateway_url if gateways is not None else None
    return None, None


def feature_view(
    feature: Feature,
    rows: dict[str, FeatureSetting],
    gateways: EffectiveAiSettings | None = None,
) -> dict[str, Any]:
    row = rows.get(feature.value)
    provider = row.provider if row is not None else FeatureProvider.UNASSIGNED.value
    model = row.self_hosted_model if row is not None else None
    effective_row, effective_feature = row, feature
    parent = main_feature(feature)
    if parent is not None and provider == FeatureProvider.UNASSIGNED:
        effective_row, effective_feature = rows.get(parent.value), parent
    effective_provider = (
        effective_row.provider if effective_row is not None else FeatureProvider.UNASSIGNED.value
    )
    effective_model = effective_row.self_hosted_model if effective_row is not None else None
    gateway, gateway_url = serving_gateway(effective_provider, gateways)
    return {
        "feature": feature.value,
        "title": FEATURE_TITLES[feature],
        "main_feature": parent.value if parent is not None else None,
        "release_state": FEATURE_RELEASE_STATES[feature].value,
        "unit_primitive": FEATURE_UNIT_PRIMITIVES[feature],
        "provider": provider,
        "provider_title": PROVIDER_TITLES[provider],
        "self_hosted_model": _model_brief(model),
        "fallback_model": _model_brief(row.fallback_model if row is not None else None),
        "effective_provider": effective_provider,
        "effective_self_hosted_model": _model_brief(effective_model),
        "effective_fallback_model": _model_brief(
            effective_row.fallback_model if effective_row is not None else None
        ),
        "inherited_from": effective_feature.value if effective_feature is not feature else None,
        "gateway": gateway,
        "gateway_url": gateway_url,
        "compatible_llms": sorted(COMPATIBLE_FAMILIES[feature]),
        "updated_at": row.updated_at if row is not None else None,
    }


def list_feature_settings(
    session: Session, gateways: EffectiveAiSettings | None = None
) -> list[dict[str, Any]]:
    rows = _rows(session)
    return [feature_view(feature, rows, gateways) for feature in Feature]


def get_feature_setting(
    session: Session, feature: Feature, gateways: EffectiveAiSettings | None = None
) -> dict[str, Any]:
    return feature_view(feature, _rows(session), gateways)


class Keep:
    """The type of :data:`KEEP`: leave a feature's fallback model as it is."""


KEEP = Keep()


def _fallback(
    session: Session,
    features: list[Feature],
    provider: FeatureProvider,
    model: SelfHostedModel | None,
    ref: int | str | Keep | None,
) -> SelfHostedModel | None:
    """The fallback model ``ref`` names, checked; None to clear (or for :data:`KEEP`)."""
    if isinstance(ref, Keep) or ref is None or ref == "":
        return None
    if provider != FeatureProvider.SELF_HOSTED or model is None:
        raise InvalidInputError(
            f"fallback_model_id is only allowed with provider self_hosted (got provider "
            f"{provider.value})",
            field="fallback_model_id",
        )
    try:
        fallback = find_model(session, ref)
    except NotFoundError as exc:
        raise InvalidInputError(str(exc), field="fallback_model_id") from None
    if fallback.id == model.id:
        raise InvalidInputError(
            f"fallback_model_id names the primary model {model.name!r} itself; choose another "
            "self-hosted model as the fallback",
            field="fallback_model_id",
        )
    problems = [p for p in (incompatibility(f, fallback.family) for f in features) if p]
    if problems:
        raise InvalidInputError("fallback model: " + "; ".join(problems), field="fallback_model_id")
    return fallback


def set_features(
    session: Session,
    features: Iterable[Feature],
    provider: FeatureProvider,
    model_ref: int | str | None,
    actor: Actor,
    fallback_ref: int | str | Keep | None = KEEP,
    gateways: EffectiveAiSettings | None = None,
) -> list[dict[str, Any]]:
    """Set every feature in ``features`` to ``provider`` (and the model), all or nothing.

    ``fallback_ref``: the fallback model (id or name), None to clear it, :data:`KEEP` (the
    default) to keep each feature's current one where it still fits. A fallback needs provider
    self_hosted, must differ from the primary model and suit every feature. ``gateways``: the
    AI settings in effect; vendored is only accepted when they name a vendored AI gateway.
    """
    wanted = list(dict.fromkeys(features))
    if not wanted:
        raise InvalidInputError("features is empty: name at least one feature", field="features")
    if provider == FeatureProvider.VENDORED and (
        gateways is None or gateways.vendored_ai_gateway_url is None
    ):
        raise InvalidInputError(
            "provider vendored needs a vendored AI gateway: set vendored_ai_gateway_url in the "
            "AI settings (or ENCLAVE_INSTANCE__VENDORED_GATEWAY_URL) first",
            field="provider",
        )
    model: SelfHostedModel | None = None
    if provider == FeatureProvider.SELF_HOSTED:
        if model_ref is None or model_ref == "":
            raise InvalidInputError(
                "self_hosted_model_id is missing: provider self_hosted needs the model to use",
                field="self_hosted_model_id",
            )
        try:
            model = find_model(session, model_ref)
        except NotFoundError as exc:  # an input problem here, not a missing resource
            raise InvalidInputError(str(exc), field="self_hosted_model_id") from None
        problems = [p for p in (incompatibility(f, model.family) for f in wanted) if p]
        if problems:
            raise InvalidInputError("; ".join(problems), field="self_hosted_model_id")
    elif model_ref not in (None, ""):
        raise InvalidInputError(
            f"self_hosted_model_id is only allowed with provider self_hosted (got provider "
            f"{provider.value})",
            field="self_hosted_model_id",
        )
    fallback = _fallback(session, wanted, provider, model, fallback_ref)
    rows = _rows(session)
    for feature in wanted:
        row = rows.get(feature.value)
        if row is None:
            row = FeatureSetting(feature=feature.value)
            session.add(row)
            rows[feature.value] = row
        old = (row.provider, row.self_hosted_model_id, row.fallback_model_id)
        row_fallback = fallback
        if isinstance(fallback_ref, Keep):
            row_fallback = row.fallback_model if model is not None else None
            if (
                row_fallback is not None
                and model is not None
                and (row_fallback.id == model.id or incompatibility(feature, row_fallback.family))
            ):
                row_fallback = None  # no longer fits the new primary: dropped (audited)
        row.provider = provider.value
        row.self_hosted_model_id = model.id if model is not None else None
        row.self_hosted_model = model
        row.fallback_model_id = row_fallback.id if row_fallback is not None else None
        row.fallback_model = row_fallback
        if (
            old == (row.provider, row.self_hosted_model_id, row.fallback_model_id)
            and row.id is not None
        ):
            continue
        label = PROVIDER_TITLES[provider.value] + (f" ({model.name})" if model else "")
        if row_fallback is not None:
            label += f", fallback {row_fallback.name}"
        audit.record(
            session,
            audit.SELF_HOSTED_MODEL_FEATURE_CHANGED,
            f"ai_feature_setting/{feature.value}",
            {
                "feature": feature.value,
                "provider": provider.value,
                "model": model.name if model else None,
                "fallback_model": row_fallback.name if row_fallback else None,
                "message": f"Feature {feature.value} changed to {label}",
            },
            actor=actor,
        )
    session.flush()
    return [feature_view(feature, rows, gateways) for feature in wanted]
