"""The REST endpoints GitLab's editor extensions call at start-up, in GitLab's shapes.

GitLab's Language Server (VS Code, JetBrains, Neovim) checks the token, then the version,
before it offers anything:

* ``GET /oauth/token/info`` — Doorkeeper's token introspection. The clients send a token of 42
  characters or more here (they take it for OAuth) and need ``scope`` to contain ``api``. A
  valid personal access token answers in Doorkeeper's shape; anything else is 401 with
  Doorkeeper's ``invalid_token`` error. (Shorter tokens go to
  ``GET /api/v4/personal_access_tokens/self``, in ``users.py``.)
* ``GET /api/v4/version`` and ``GET /api/v4/metadata`` — the GitLab API generation Enclave
  implements (:data:`~enclave.common.wire.INSTANCE_VERSION`, 17.9: past every gate the clients
  apply: chat 16.8, direct connection 17.2, chat features 17.6) and Enclave's own version as the
  revision. Any valid token, as GitLab (``read_user``, ``api``, ``read_api``, ``ai_features``).
* ``POST /api/v4/usage_data/track_event`` (and the batch ``track_events``) — accepted and
  counted in a metric; nothing about the user or the event is stored.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from enclave import __version__
from enclave.common import wire
from enclave.common.logging import get_logger
from enclave.instance import accounts
from enclave.instance.api.code_suggestions import read_json_body
from enclave.instance.api.deps import authenticated, context_of, in_transaction
from enclave.instance.api.errors import InstanceAPIError
from enclave.instance.api.routing import InstanceRoute
from enclave.instance.db.base import utcnow
from enclave.instance.pats import AI_SCOPES, KNOWN_SCOPES, Principal

log = get_logger(__name__)

# Bodies (usage events) are small: the admin/account limit (max_body_bytes, 64 KiB).
router = APIRouter(tags=["editors"], route_class=InstanceRoute)

# Enclave's own version, where GitLab reports its git revision.
REVISION: Final = f"enclave-{__version__}"
MAX_BATCH_EVENTS: Final = 50

AnyTokenUser = Annotated[Principal, Depends(authenticated(KNOWN_SCOPES))]
AiUser = Annotated[Principal, Depends(authenticated(AI_SCOPES))]

_INVALID_TOKEN: Final = "The access token is invalid"  # noqa: S105 - a message


def _doorkeeper_unauthorized() -> JSONResponse:
    # Doorkeeper's answer for a bad token, body and header, so OAuth clients read it as such.
    return JSONResponse(
        {"error": "invalid_token", "error_description": _INVALID_TOKEN, "state": "unauthorized"},
        status_code=401,
        headers={
            "WWW-Authenticate": (
                f'Bearer realm="Doorkeeper", error="invalid_token", '
                f'error_description="{_INVALID_TOKEN}"'
            ),
            wire.H_ERROR_ORIGIN: "monolith",
        },
    )


@router.get("/oauth/token/info", summary="Token introspection (Doorkeeper's shape)")
async def token_info(request: Request) -> Any:
    try:
        # The shared dependency: same checks, same failed-authentication counting and ban.
        principal = await authenticated(KNOWN_SCOPES)(request)
    except InstanceAPIError as exc:
        if exc.status == 401:
            return _doorkeeper_unauthorized()
        raise
    ctx = context_of(request)

    def work(session: Session) -> dict[str, Any]:
        token = accounts.get_token(session, principal.token_id)
        now = utcnow()
        expires_in = (
            max(0, int((token.expires_at - now).total_seconds()))
            if token.expires_at is not None
            else None
        )
        scopes = list(token.scopes)
        return {
            "resource_owner_id": token.user_id,
            "scope": scopes,
            "expires_in": expires_in,
            # A personal access token belongs to no OAuth application.
            "application": {"uid": None},
            "created_at": int(token.created_at.timestamp()),
            # GitLab's additions to Doorkeeper's answer.
            "scopes": scopes,
            "expires_in_seconds": expires_in,
        }

    return await run_in_threadpool(in_transaction, ctx, work)


def version_view() -> dict[str, str]:
    return {"version": wire.INSTANCE_VERSION, "revision": REVISION}


@router.get("/api/v4/version", summary="The GitLab API version Enclave implements")
def version(principal: AnyTokenUser) -> dict[str, str]:
    return version_view()


def metadata_view() -> dict[str, Any]:
    return {
        **version_view(),
        # No Kubernetes agent server: GitLab's shape when KAS is off.
        "kas": {
            "enabled": False,
            "externalUrl": None,
            "externalK8sProxyUrl": None,
            "version": None,
        },
        "enterprise": True,
        "enclave": {"version": __version__},
    }


@router.get("/api/v4/metadata", summary="Instance metadata (GitLab's shape)")
def metadata(principal: AnyTokenUser) -> dict[str, Any]:
    return metadata_view()


def _valid_event(item: Any) -> bool:
    event = item.get("event") if isinstance(item, dict) else None
    return isinstance(event, str) and 0 < len(event) <= 255


@router.post("/api/v4/usage_data/track_event", summary="Accept an editor's usage event")
async def track_event(request: Request, principal: AiUser) -> dict[str, Any]:
    body = await read_json_body(request, empty_hint='send {"event": ...}')
    if not _valid_event(body):
        raise InstanceAPIError(400, "event is missing")
    context_of(request).limits.metrics.usage_events.inc()
    return {}


@router.post("/api/v4/usage_data/track_events", summary="Accept a batch of usage events")
async def track_events(request: Request, principal: AiUser) -> dict[str, Any]:
    body = await read_json_body(request, empty_hint='send {"events": [{"event": ...}]}')
    events = body.get("events")
    if not isinstance(events, list) or not events:
        raise InstanceAPIError(400, "events is missing")
    if len(events) > MAX_BATCH_EVENTS:
        raise InstanceAPIError(400, f"events: at most {MAX_BATCH_EVENTS} in one request")
    if not all(_valid_event(item) for item in events):
        raise InstanceAPIError(400, "events: every item needs an event name")
    context_of(request).limits.metrics.usage_events.inc(len(events))
    return {}
