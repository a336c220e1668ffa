"""``POST /api/v4/code_suggestions/direct_access``: a user token for calling the gateway directly.

GitLab's flow (``shared/reference/gitlab-instance.md`` §2.5, DESIGN.md §3): authenticate the PAT
(``api`` or ``ai_features``) → the code completions feature must be served (here: self-hosted;
disabled or vendored → 403) → 50 requests a minute per user (429 with ``Retry-After``) → ask
the gateway's ``POST /v1/code/user_access_token`` with an instance token (scope
``complete_code``) and the user's pseudonymous ``X-Gitlab-Global-User-Id`` → answer::

    {"base_url": <gateway URL>, "token": <user token>, "expires_at": <Unix s>,
     "headers": {X-Gitlab-Instance-Id, X-Gitlab-Realm, X-Gitlab-Global-User-Id,
                 X-Gitlab-Host-Name, X-Gitlab-Version, X-Gitlab-Authentication-Type: oidc},
     "model_details": {}}

The IDE then sends ``Authorization: Bearer <token>`` plus those headers to
``<base_url>/v2/completions`` (GitLab's Language Server) or ``/v2/code/completions`` until
``expires_at``. The token grants ``complete_code``
only (no generations, and it cannot mint another token).

``model_details`` stays ``{}`` as in GitLab for self-hosted models: GitLab's Language Server
spreads it into its ``/v2/completions`` body, and a user's token never names the model — the
gateway serves it with the model the administrator routed code completions to (the instance's
feature→model routes, :mod:`enclave.gateway.user_access`). A body that echoes exactly that
model (``model_provider: litellm``, its family as ``model_name``) is served as well.

Gateway errors come back GitLab-style, ``{"message": ...}`` with the gateway's status (503 when
the gateway's answer is not an error status it can pass on); an unreachable gateway is 502/504
as for completions.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from enclave.common import wire
from enclave.common.logging import get_logger
from enclave.instance import limits
from enclave.instance.api.deps import authenticated, context_of
from enclave.instance.api.errors import InstanceAPIError
from enclave.instance.api.forwarding import forward_identity, resolve_for_request
from enclave.instance.api.middleware import annotate
from enclave.instance.api.routing import InstanceRoute
from enclave.instance.features import (
    Feature,
)
from enclave.instance.gateway_client import (
    GatewayUnavailableError,
    gateway_headers,
)
from enclave.instance.pats import AI_SCOPES, Principal, record_token_minting

log = get_logger(__name__)

router = APIRouter(route_class=InstanceRoute)

PATH = "/api/v4/code_suggestions/direct_access"
GATEWAY_PATH = "/v1/code/user_access_token"
# The gateway answers from memory; a short bound keeps a hung gateway from holding the IDE.
GATEWAY_TIMEOUT_S = 30.0
DEFAULT_ERROR_STATUS = 503

# The headers of the answer that the IDE sends back to the gateway with the token.
_PUBLIC_HEADERS = (
    "X-Gitlab-Instance-Id",
    "X-Gitlab-Realm",
    "X-Gitlab-Global-User-Id",
    "X-Gitlab-Host-Name",
    "X-Gitlab-Version",
    "X-Gitlab-Authentication-Type",
)


def _gateway_message(body: bytes) -> str:
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        for name in ("message", "detail", "error_description", "error"):
            value = data.get(name)
            if isinstance(value, str) and value:
                return value
    return ""


@router.post(PATH)
async def direct_access(
    request: Request, principal: Annotated[Principal, Depends(authenticated(AI_SCOPES))]
) -> JSONResponse:
    ctx = context_of(request)
    annotate(request, feature="code_completions")
    # 403 unless code completions are served by a self-hosted model.
    model, effective = await resolve_for_request(ctx, Feature.CODE_COMPLETIONS)
    if model.vendored:
        # Direct access reads the administrator's models from the self-hosted gateway's routes;
        # a shared gateway serves instances, not their users' IDEs.
        raise InstanceAPIError(
            403,
            "Direct access is not available: code completions are vendored (served by the "
            "shared AI gateway through this instance). Use /api/v4/code_suggestions/completions, "
            "or ask an administrator to assign a self-hosted model to code_completions.",
        )

    await ctx.limits.check(limits.DIRECT_ACCESS, principal.user_id)

    # The gateway's user token is revocable (blocked user) only if this use is on record.
    await run_in_threadpool(record_token_minting, ctx.sessions, principal.token_id)
    minted = ctx.minter.token([wire.UP_COMPLETE_CODE])
    identity = forward_identity(ctx, request, principal)
    headers = gateway_headers(minted.token, identity)
    base_url = effective.ai_gateway_url.rstrip("/")
    try:
        upstream = await ctx.gateway.post(
            GATEWAY_PATH,
            b"{}",
            headers,
            base_url=base_url,
            timeout_s=min(GATEWAY_TIMEOUT_S, effective.ai_gateway_timeout_seconds),
        )
    except GatewayUnavailableError as exc:
        # Not a model failure: the gateway's own state, which the IDE's user can report as is.
        raise InstanceAPIError(exc.status, exc.message) from None
    try:
        status = upstream.status
        body = await upstream.read()
    finally:
        upstream.release()

    data: Any = None
    if status == 200:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("token"), str)
        or not isinstance(data.get("expires_at"), int)
    ):
        error_status = status if 400 <= status < 600 else DEFAULT_ERROR_STATUS
        message = _gateway_message(body) if status != 200 else "unexpected answer"
        log.warning("direct_access_gateway_error", status=status)
        raise InstanceAPIError(
            error_status, f"the AI gateway refused a direct access token: {message or status}"
        )
    log.info("direct_access_token_issued", user_id=principal.user_id)
    lowered = {name.lower(): value for name, value in headers.items()}
    return JSONResponse(
        {
            "base_url": base_url,
            "token": data["token"],
            "expires_at": data["expires_at"],
            "headers": {name: lowered[name.lower()] for name in _PUBLIC_HEADERS},
            "model_details": {},
        },
        headers={"Cache-Control": "no-store"},
    )
