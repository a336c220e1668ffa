"""``GET /api/v4/internal/ai/gateway_routes``: the feature→model table the AI gateway serves from.

The gateway has no database, so for its OpenAI-compatible API (``/v1/chat/completions`` ...)
it keeps this table in memory and re-reads it in the background (control plane → data plane,
like the JWKS). Internal: not in the OpenAPI document, and only for the caller that presents the
secret of ``instance.gateway_routes_secret_file`` as ``Authorization: Bearer <secret>``
(compared in constant time). No secret configured, or the file unreadable → 404 (the endpoint
does not exist here); a missing or wrong secret → 401.

The answer carries decrypted model API keys (the gateway needs them to call the models), so it
is ``no-store`` and never logged. Per feature (chat sub-features fall back to ``duo_chat`` as
everywhere)::

    {"version": 1, "issuer": ..., "routes": [
        {"feature": "duo_chat", "unit_primitive": "duo_chat", "available": true,
         "model": {"name", "family", "provider", "endpoint", "identifier", "api_key"}},
        {"feature": "summarize_review", "unit_primitive": "summarize_review",
         "available": false, "reason": "disabled" | "vendored" | "unassigned" | "misconfigured",
         "message": "..."}],
     "revoked": {"personal_access_tokens": [<PAT id>, ...], "users": [<global user id>, ...],
                 "editor_keys": [<editor key id>, ...]}}

``revoked`` lists the revoked PATs and the blocked users (by the pseudonymous global id the
tokens carry as ``sub``) whose tokens may still be valid: those whose PAT was last used — tokens
are only made from a PAT while it is used — within ``instance.revocation_window_s``, or who hold
an unexpired editor key, newest first, at most :data:`MAX_REVOKED` each; and the revoked
personal editor keys that have not expired yet (``instance/editor_keys.py``). The gateway
refuses tokens they cover (see ``enclave.gateway.routes_table``), so a revocation reaches it
within its refresh interval.
"""

from __future__ import annotations

import hmac
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from enclave.common.logging import get_logger
from enclave.common.routes_secret import RoutesSecretError, read_routes_secret
from enclave.instance import editor_keys
from enclave.instance.api.deps import context_of
from enclave.instance.api.errors import InstanceAPIError
from enclave.instance.api.routing import InstanceRoute
from enclave.instance.context import InstanceContext
from enclave.instance.db import utcnow
from enclave.instance.db.models import DeletedUser, FeatureProvider, PersonalAccessToken, User
from enclave.instance.features import (
    FEATURE_UNIT_PRIMITIVES,
    Feature,
    FeatureMisconfiguredError,
    FeatureUnavailableError,
    effective_setting,
    resolve_feature,
)
from enclave.instance.gateway_client import pseudonymous_user_id

log = get_logger(__name__)

router = APIRouter(route_class=InstanceRoute)

PATH: Final = "/api/v4/internal/ai/gateway_routes"
ROUTES_VERSION: Final = 1
# The gateway's bound (enclave.gateway.routes_table.MAX_REVOKED) is the same.
MAX_REVOKED: Final = 10_000


def read_secret(path: Path | None) -> str | None:
    """The shared secret in ``path``; None when unset, unreadable, too short or too long."""
    if path is None:
        return None
    try:
        return read_routes_secret(path)
    except RoutesSecretError:
        return None


def _presented(request: Request) -> str | None:
    scheme, _, value = (request.headers.get("authorization") or "").strip().partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


async def require_gateway_secret(request: Request, logger: Any, refused_event: str) -> None:
    """The gateway's shared secret as the bearer token: 404 without a configured secret (the
    endpoint is not there), 401 (logged as ``refused_event`` on ``logger``) for a wrong one."""
    path = context_of(request).settings.instance.gateway_routes_secret_file
    # Read per request (a small file): a rotated secret takes effect without a restart.
    secret = await run_in_threadpool(read_secret, path)
    if secret is None:
        # Deny when unsure: no (usable) secret means the endpoint is not there at all.
        raise InstanceAPIError(404)
    presented = _presented(request)
    if presented is None or not hmac.compare_digest(
        presented.encode("utf-8", "replace"), secret.encode("utf-8")
    ):
        logger.warning(refused_event)
        raise InstanceAPIError(401)


def _unavailable_reason(provider: str | None) -> str:
    if provider == FeatureProvider.DISABLED:
        return "disabled"
    if provider == FeatureProvider.VENDORED:
        return "vendored"
    return "unassigned"


def revocations(session: Session, salt: bytes, window_s: int) -> dict[str, list[Any]]:
    """Revoked PATs and blocked users whose tokens may not have expired yet (bounded)."""
    recent = PersonalAccessToken.last_used_at >= utcnow() - timedelta(seconds=window_s)
    pat_ids = session.scalars(
        select(PersonalAccessToken.id)
        .where(PersonalAccessToken.revoked.is_(True), recent)
        .order_by(PersonalAccessToken.last_used_at.desc())
        .limit(MAX_REVOKED)
    ).all()
    user_ids = session.scalars(
        select(User.id)
        .where(User.blocked.is_(True))
        .where(
            User.id.in_(select(PersonalAccessToken.user_id).where(recent))
            | User.id.in_(editor_keys.users_with_live_keys())
        )
        .order_by(User.id.desc())
        .limit(MAX_REVOKED)
    ).all()
    # Deleted users: their rows are gone, their tokens may live on until they expire.
    deleted = session.scalars(
        select(DeletedUser)
        .where(DeletedUser.deleted_at >= utcnow() - timedelta(seconds=window_s))
        .order_by(DeletedUser.deleted_at.desc())
        .limit(MAX_REVOKED)
    ).all()
    key_ids = editor_keys.revoked_ids(session, MAX_REVOKED)
    if MAX_REVOKED in (len(pat_ids), len(user_ids), len(deleted), len(key_ids)):
        log.error("gateway_revocations_truncated", limit=MAX_REVOKED)
    users = [pseudonymous_user_id(salt, user_id) for user_id in user_ids]
    users += [row.global_user_id for row in deleted]
    pats = list(pat_ids) + [pat for row in deleted for pat in row.pat_ids]
    return {
        "personal_access_tokens": pats[:MAX_REVOKED],
        "users": list(dict.fromkeys(users))[:MAX_REVOKED],
        "editor_keys": key_ids,
    }


def routes_document(ctx: InstanceContext) -> dict[str, Any]:
    """Every feature's route; blocking (database, decryption), call it from a thread pool."""
    routes: list[dict[str, Any]] = []
    with ctx.sessions() as session, session.begin():
        for feature in Feature:
            entry: dict[str, Any] = {
                "feature": feature.value,
                "unit_primitive": FEATURE_UNIT_PRIMITIVES[feature],
            }
            try:
                model = resolve_feature(session, ctx.secret_box, feature)
            except FeatureUnavailableError as exc:
                setting, _ = effective_setting(session, feature)
                provider = setting.provider if setting is not None else None
                entry.update(
                    available=False, reason=_unavailable_reason(provider), message=str(exc)
                )
            except FeatureMisconfiguredError as exc:
                entry.update(available=False, reason="misconfigured", message=str(exc))
            else:
                entry.update(
                    available=True,
                    model={
                        "name": model.name,
                        "family": model.family,
                        "provider": model.provider,
                        "endpoint": model.endpoint,
                        "identifier": model.identifier,
                        "api_key": model.api_key,
                    },
                )
            routes.append(entry)
        revoked = revocations(session, ctx.user_id_salt, ctx.settings.instance.revocation_window_s)
    return {"version": ROUTES_VERSION, "issuer": ctx.issuer, "routes": routes, "revoked": revoked}


@router.get(PATH, include_in_schema=False)
async def gateway_routes(request: Request) -> JSONResponse:
    await require_gateway_secret(request, log, "gateway_routes_unauthorized")
    ctx = context_of(request)
    document = await run_in_threadpool(routes_document, ctx)
    log.info(
        "gateway_routes_served",
        available=[r["feature"] for r in document["routes"] if r["available"]],
    )
    return JSONResponse(document, headers={"Cache-Control": "no-store"})
