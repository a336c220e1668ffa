"""Self-service for every signed-in user, under ``/-/user_settings/`` as on GitLab: their own
personal access tokens and personal editor keys (created with the chosen features and expiry,
shown once with ready-to-paste configuration for the ``openai`` client and Continue; listed;
revocable)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from enclave.instance import accounts, editor_keys
from enclave.instance.admin_errors import AdminError
from enclave.instance.api.deps import context_of, in_transaction
from enclave.instance.api.editor_keys import openai_base_url, signer_of
from enclave.instance.db import utcnow
from enclave.instance.features import FEATURE_TITLES, Feature
from enclave.instance.pats import KNOWN_SCOPES
from enclave.instance.usage import usage_report
from enclave.instance.web import writes
from enclave.instance.web.render import page, redirect
from enclave.instance.web.routing import WebRoute
from enclave.instance.web.session_auth import actor_of, first, form_list, form_of, signed_in_user
from enclave.instance.web_sessions import SignedIn

router = APIRouter(route_class=WebRoute, include_in_schema=False)
User = Annotated[SignedIn, Depends(signed_in_user)]
TOKENS = "/-/user_settings/personal_access_tokens"
KEYS = "/-/user_settings/editor_keys"
USAGE = "/-/user_settings/usage"
USAGE_DAYS = 30
# The features an editor tool uses most: pre-checked on the form.
EDITOR_DEFAULTS = (Feature.DUO_CHAT.value, Feature.CODE_COMPLETIONS.value)


# --- personal access tokens -----------------------------------------------------------------


async def _tokens_page(
    request: Request,
    user: SignedIn,
    *,
    status: int = 200,
    error: str | None = None,
    new_token: str | None = None,
) -> Response:
    ctx = context_of(request)
    tokens = await run_in_threadpool(
        in_transaction,
        ctx,
        lambda s: [
            accounts.token_view(t) for t in accounts.list_tokens(s, user_id=user.user_id)[0]
        ],
    )
    return page(
        request,
        "profile_tokens.html",
        status=status,
        tokens=tokens,
        scopes=sorted(KNOWN_SCOPES),
        error=error,
        new_token=new_token,
    )


@router.get(TOKENS)
async def tokens_page(request: Request, user: User) -> Response:
    return await _tokens_page(request, user)


@router.post(TOKENS)
async def create_token(request: Request, user: User) -> Response:
    try:
        plaintext = await writes.create_token(request, user, user.user_id)
    except AdminError as exc:
        return await _tokens_page(request, user, status=400, error=exc.message)
    return await _tokens_page(request, user, new_token=plaintext)


@router.post(f"{TOKENS}/{{token_id}}/revoke")
async def revoke_token(request: Request, token_id: int, user: User) -> Response:
    await writes.revoke_token(request, user, user.user_id, token_id)
    return redirect(f"{TOKENS}?notice=token_revoked")


# --- editor keys ----------------------------------------------------------------------------


async def _keys_page(
    request: Request,
    user: SignedIn,
    *,
    status: int = 200,
    error: str | None = None,
    created: dict[str, Any] | None = None,
    chosen: list[str] | None = None,
) -> Response:
    ctx = context_of(request)

    def work(session: Session) -> tuple[list[dict[str, Any]], str]:
        keys = [editor_keys.key_view(k) for k in editor_keys.list_keys(session, user.user_id)]
        return keys, openai_base_url(ctx, session)

    keys, base_url = await run_in_threadpool(in_transaction, ctx, work)
    return page(
        request,
        "editor_keys.html",
        status=status,
        keys=keys,
        base_url=base_url,
        features=[(f.value, FEATURE_TITLES[f]) for f in Feature],
        chosen=chosen if chosen is not None else list(EDITOR_DEFAULTS),
        max_days=ctx.settings.instance.editor_key_max_days,
        error=error,
        created=created,
    )


@router.get(KEYS)
async def keys_page(request: Request, user: User) -> Response:
    return await _keys_page(request, user)


@router.post(KEYS)
async def create_key(request: Request, user: User) -> Response:
    raw = await request.body()
    form = await form_of(request, user)
    ctx = context_of(request)
    features = form_list(raw, "features")

    def work(session: Session) -> dict[str, Any]:
        made = editor_keys.create_key(
            session,
            signer_of(ctx),
            user.user_id,
            name=form.get("name"),
            features=features,
            expires_in_days=first(form, "expires_in_days"),
            max_days=ctx.settings.instance.editor_key_max_days,
            actor=actor_of(request, user),
        )
        return {**editor_keys.key_view(made.row), "key": made.key}

    try:
        created = await writes.write(ctx, work)
    except AdminError as exc:
        return await _keys_page(request, user, status=400, error=exc.message, chosen=features)
    return await _keys_page(request, user, created=created)


@router.post(f"{KEYS}/{{key_id}}/revoke")
async def revoke_key(request: Request, key_id: int, user: User) -> Response:
    await form_of(request, user)
    ctx = context_of(request)
    await writes.write_or_404(
        ctx, lambda s: editor_keys.revoke_key(s, user.user_id, key_id, actor_of(request, user))
    )
    return redirect(f"{KEYS}?notice=key_revoked")


# --- own usage ------------------------------------------------------------------------------


@router.get(USAGE)
async def usage_page(request: Request, user: User) -> Response:
    """The signed-in user's own usage of the last 30 days, per feature and model."""
    ctx = context_of(request)
    since = utcnow() - timedelta(days=USAGE_DAYS)
    rows = await run_in_threadpool(
        in_transaction,
        ctx,
        lambda s: usage_report(s, since=since, group_by=("feature", "model"), user_id=user.user_id),
    )
    return page(request, "profile_usage.html", rows=rows, days=USAGE_DAYS)
