"""``POST /api/v4/ai/openai/direct_access``: a token for the gateway's OpenAI-compatible API.

For tools that speak the OpenAI API (the ``openai`` Python client, Continue, ...): a PAT
(``api`` or ``ai_features``) gets a short-lived instance-signed JWT that the gateway accepts at
``<gateway>/v1/models``, ``/v1/chat/completions`` and ``/v1/completions``. Body, optional::

    {"features": ["duo_chat", "code_completions"]}   # default: every feature served now

Answer::

    {"base_url": "<gateway>/v1", "token": <JWT>, "expires_at": <Unix s>,
     "models": ["code_completions", "duo_chat", ...],        # the model ids to use
     "headers": {X-Gitlab-Instance-Id, X-Gitlab-Realm, X-Gitlab-Global-User-Id},
     "unavailable": {"<feature>": "<why>"}}                   # requested but not served

Deny by default: the token's ``scopes`` are the unit primitives of the requested features that
a self-hosted model serves right now (disabled, vendored or unassigned ones are left out; none
left → 403). Its claims name the instance (``gitlab_instance_id``, ``gitlab_realm``), the user's
pseudonymous id (``sub``, the same HMAC pseudonym as ``X-Gitlab-Global-User-Id`` elsewhere) and
``enclave_surface: openai`` and the PAT's id (``enclave_pat_id``): once that PAT is revoked or the
user blocked, the gateway refuses the token within its routes refresh interval (30 s by default;
see ``api/gateway_routes.py``). The gateway accepts only such tokens there, from its one trusted
instance, with or without the ``headers`` (an OpenAI client sends only ``Authorization``; when
a client sends them they must match). Rate limited like GitLab's direct access: 50 a minute per
user (429 with ``Retry-After``).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Final

import jwt
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from enclave.common import wire
from enclave.common.logging import get_logger
from enclave.instance import ai_settings, limits
from enclave.instance.api.deps import authenticated, context_of
from enclave.instance.api.errors import InstanceAPIError
from enclave.instance.api.middleware import annotate
from enclave.instance.api.routing import InstanceRoute
from enclave.instance.context import InstanceContext
from enclave.instance.features import (
    FEATURE_UNIT_PRIMITIVES,
    Feature,
    FeatureMisconfiguredError,
    FeatureUnavailableError,
    resolve_feature,
)
from enclave.instance.gateway_client import pseudonymous_user_id
from enclave.instance.pats import AI_SCOPES, Principal, record_token_minting

log = get_logger(__name__)


class OpenAIAccessRoute(InstanceRoute):
    """The body is at most a list of feature names: 16 KiB is plenty."""

    fixed_limit = 16 * 1024


router = APIRouter(route_class=OpenAIAccessRoute)

PATH: Final = "/api/v4/ai/openai/direct_access"
# The claim that marks a token for the OpenAI-compatible API (the gateway requires it there).
SURFACE_CLAIM: Final = wire.CLAIM_SURFACE
SURFACE_OPENAI: Final = wire.SURFACE_OPENAI
MAX_FEATURES: Final = len(Feature)


def _requested(raw: bytes) -> list[Feature]:
    """The features asked for (default: all); 400 for anything but ``{"features": [...]}``."""
    if not raw.strip():
        return list(Feature)
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InstanceAPIError(400, "the body is not JSON") from None
    if not isinstance(body, dict) or set(body) - {"features"}:
        raise InstanceAPIError(400, 'the body must be {"features": [<feature>, ...]} or empty')
    names = body.get("features")
    if names is None:
        return list(Feature)
    if not isinstance(names, list) or not names or len(names) > MAX_FEATURES:
        raise InstanceAPIError(400, "features must be a non-empty list of feature names")
    features: list[Feature] = []
    for name in names:
        try:
            feature = Feature(name) if isinstance(name, str) else None
        except ValueError:
            feature = None
        if feature is None:
            raise InstanceAPIError(
                400,
                f"feature {name!r} is unknown; use one of: {', '.join(f.value for f in Feature)}",
            )
        if feature not in features:
            features.append(feature)
    return features


def _served(
    ctx: InstanceContext, features: list[Feature]
) -> tuple[list[Feature], dict[str, str], ai_settings.EffectiveAiSettings]:
    """Which of ``features`` a self-hosted model serves now, why the others are not, and the AI
    settings; blocking (database), call it from a thread pool."""
    served: list[Feature] = []
    unavailable: dict[str, str] = {}
    with ctx.sessions() as session, session.begin():
        for feature in features:
            try:
                resolve_feature(session, ctx.secret_box, feature)
            except (FeatureUnavailableError, FeatureMisconfiguredError) as exc:
                unavailable[feature.value] = str(exc)
            else:
                served.append(feature)
        return served, unavailable, ai_settings.effective(session, ctx.settings)


def mint_openai_token(
    ctx: InstanceContext,
    global_user_id: str,
    scopes: list[str],
    *,
    pat_id: int | None = None,
    now: float | None = None,
) -> tuple[str, int]:
    """An instance-signed JWT for one user of the OpenAI-compatible API, and its ``exp``."""
    issued_at = int(time.time() if now is None else now)
    expires_at = issued_at + ctx.settings.instance.token_lifetime_s
    instance_id = str(ctx.instance_id)
    claims: dict[str, Any] = {
        "iss": ctx.issuer,
        "sub": global_user_id,
        "gitlab_instance_id": instance_id,
        "aud": wire.AUDIENCE,
        "gitlab_realm": wire.REALM_SELF_MANAGED,
        "scopes": sorted(set(scopes)),
        SURFACE_CLAIM: SURFACE_OPENAI,
        "iat": issued_at,
        "nbf": issued_at - wire.NOT_BEFORE_SKEW_S,
        "exp": expires_at,
        "jti": str(uuid.uuid4()),
    }
    if pat_id is not None:
        # Revocable: the gateway refuses the token once this PAT is revoked.
        claims[wire.CLAIM_PAT_ID] = pat_id
    key = ctx.keys.active
    token = jwt.encode(
        claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "JWT"}
    )
    return token, expires_at


@router.post(PATH)
async def openai_direct_access(
    request: Request, principal: Annotated[Principal, Depends(authenticated(AI_SCOPES))]
) -> JSONResponse:
    ctx = context_of(request)
    annotate(request, feature="openai")
    features = _requested(await request.body())

    await ctx.limits.check(limits.OPENAI_DIRECT_ACCESS, principal.user_id)

    served, unavailable, settings = await run_in_threadpool(_served, ctx, features)
    if served:  # revocable only if the PAT's use is on record (see record_token_minting)
        await run_in_threadpool(record_token_minting, ctx.sessions, principal.token_id)
    if not served:
        reasons = " ".join(unavailable.values())
        raise InstanceAPIError(403, f"none of the requested AI features is available: {reasons}")

    global_user_id = pseudonymous_user_id(ctx.user_id_salt, principal.user_id)
    scopes = [FEATURE_UNIT_PRIMITIVES[feature] for feature in served]
    token, expires_at = mint_openai_token(ctx, global_user_id, scopes, pat_id=principal.token_id)
    log.info(
        "openai_token_issued",
        user_id=principal.user_id,
        features=[feature.value for feature in served],
    )
    return JSONResponse(
        {
            "base_url": f"{settings.ai_gateway_url.rstrip('/')}/v1",
            "token": token,
            "expires_at": expires_at,
            "models": sorted(feature.value for feature in served),
            "headers": {
                "X-Gitlab-Instance-Id": str(ctx.instance_id),
                "X-Gitlab-Realm": wire.REALM_SELF_MANAGED,
                "X-Gitlab-Global-User-Id": global_user_id,
            },
            "unavailable": unavailable,
        },
        headers={"Cache-Control": "no-store"},
    )
