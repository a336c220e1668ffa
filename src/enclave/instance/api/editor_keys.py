"""The caller's personal editor keys, GitLab-style JSON (see ``instance/editor_keys.py``).

* ``GET /api/v4/user/ai/editor_keys`` — the caller's keys (never the keys themselves);
* ``POST /api/v4/user/ai/editor_keys`` ``{"name", "features": [...], "expires_in_days"}`` —
  201 with the record, ``key`` (shown once) and ``base_url`` (the gateway's OpenAI API);
* ``DELETE /api/v4/user/ai/editor_keys/:id`` — revoke (204; idempotent); the gateway refuses
  the key within its routes refresh interval.

A PAT with scope ``api`` of the key's owner; another user's key is 404.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from enclave.instance import ai_settings, editor_keys
from enclave.instance.api.deps import actor_of, authenticated, context_of, in_transaction
from enclave.instance.api.routing import InstanceRoute
from enclave.instance.context import InstanceContext
from enclave.instance.pats import SCOPE_API, Principal


class EditorKeysRoute(InstanceRoute):
    """A name and a list of feature names: 16 KiB is plenty."""

    fixed_limit = 16 * 1024


router = APIRouter(tags=["editor keys"], route_class=EditorKeysRoute)

PATH = "/api/v4/user/ai/editor_keys"
Owner = Annotated[Principal, Depends(authenticated({SCOPE_API}))]


class EditorKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="The editor or machine it is for.")
    features: list[str] | str | None = Field(
        None, description="AI features the key may use (feature names, e.g. duo_chat)."
    )
    expires_in_days: int | str | None = Field(
        30, description="Days until it expires, 1 to ENCLAVE_INSTANCE__EDITOR_KEY_MAX_DAYS."
    )


def signer_of(ctx: InstanceContext) -> editor_keys.Signer:
    return editor_keys.Signer(ctx.keys, ctx.issuer, str(ctx.instance_id), ctx.user_id_salt)


def openai_base_url(ctx: InstanceContext, session: Session) -> str:
    """Where editor tools send their OpenAI requests: the gateway's ``/v1``."""
    return ai_settings.effective(session, ctx.settings).ai_gateway_url.rstrip("/") + "/v1"


@router.get(PATH, summary="List your editor keys")
def list_editor_keys(request: Request, principal: Owner) -> list[dict[str, Any]]:
    ctx = context_of(request)
    return in_transaction(
        ctx,
        lambda s: [editor_keys.key_view(k) for k in editor_keys.list_keys(s, principal.user_id)],
    )


@router.post(PATH, status_code=201, summary="Create an editor key (the key is shown once)")
def create_editor_key(request: Request, body: EditorKeyCreate, principal: Owner) -> JSONResponse:
    ctx = context_of(request)
    actor = actor_of(request, principal)

    def work(session: Session) -> dict[str, Any]:
        created = editor_keys.create_key(
            session,
            signer_of(ctx),
            principal.user_id,
            name=body.name,
            features=body.features,
            expires_in_days=body.expires_in_days,
            max_days=ctx.settings.instance.editor_key_max_days,
            actor=actor,
        )
        return {
            **editor_keys.key_view(created.row),
            "key": created.key,
            "base_url": openai_base_url(ctx, session),
        }

    view = in_transaction(ctx, work, write=True)
    return JSONResponse(view, status_code=201, headers={"Cache-Control": "no-store"})


@router.delete(f"{PATH}/{{key_id}}", status_code=204, summary="Revoke one of your editor keys")
def revoke_editor_key(request: Request, key_id: int, principal: Owner) -> Response:
    ctx = context_of(request)
    actor = actor_of(request, principal)
    in_transaction(
        ctx,
        lambda s: editor_keys.revoke_key(s, principal.user_id, key_id, actor),
        write=True,
    )
    return Response(status_code=204)
