"""``GET /v1/models/definitions``: which model families can serve which feature.

GitLab's gateway publishes this list (no token needed) so the instance's model selection knows
the models and, per feature, which of them may be selected. Enclave answers in the same shape,
from the shared feature catalogue: the models are the self-hosted model families, and each
feature lists the families GitLab's compatibility matrix allows for it, with those not yet GA
under ``beta_models``. Self-hosted installs pick their model per feature, so there is no
default model. The body never changes while the process runs, so it is built once.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response

from enclave.common.features import (
    CHAT_SUB_FEATURES,
    COMPATIBLE_FAMILIES,
    FAMILY_DISPLAY_NAMES,
    FEATURE_UNIT_PRIMITIVES,
    Feature,
    ReleaseState,
    family_release_state,
)
from enclave.common.wire import UP_DUO_CHAT

PROVIDER: Final = "self_hosted"


def _model(family: str) -> dict[str, Any]:
    return {
        "name": FAMILY_DISPLAY_NAMES[family],
        "identifier": family,
        "provider": PROVIDER,
        "deprecation": None,
        "description": f"Self-hosted {FAMILY_DISPLAY_NAMES[family]} model "
        f"({family_release_state(family).value})",
        "cost_indicator": None,
    }


def _unit_primitive(feature: Feature) -> dict[str, Any]:
    families = sorted(COMPATIBLE_FAMILIES[feature])
    scopes = [FEATURE_UNIT_PRIMITIVES[feature]]
    if feature in CHAT_SUB_FEATURES:
        scopes.append(UP_DUO_CHAT)  # the instance grants chat sub-features with duo_chat
    return {
        "feature_setting": feature.value,
        "default_model": "",
        "default_models": [],
        "models_for_tags": {},
        "models_for_size_preference": {},
        "selectable_models": families,
        "beta_models": [f for f in families if family_release_state(f) is not ReleaseState.GA],
        "deprecated_models": [],
        "dev": None,
        "unit_primitives": scopes,
    }


def definitions_document() -> dict[str, Any]:
    """The whole answer: every family that serves some feature, and every feature."""
    served = sorted(set().union(*COMPATIBLE_FAMILIES.values()))
    return {
        "models": [_model(family) for family in served],
        "unit_primitives": [_unit_primitive(feature) for feature in Feature],
    }


_BODY: Final = orjson.dumps(definitions_document())


async def definitions(request: Request) -> Response:
    return Response(_BODY, media_type="application/json")
