"""``/admin/features`` (feature → model, only compatible models offered), ``/admin/settings``
(AI settings), ``/admin/keys`` (signing keys, rotate) and ``/admin/audit`` (filterable)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from enclave.common.features import COMPATIBLE_FAMILIES
from enclave.instance import ai_settings, audit, audit_views, registry
from enclave.instance.admin_errors import AdminError
from enclave.instance.api.deps import context_of, in_transaction
from enclave.instance.context import InstanceContext
from enclave.instance.db.models import FeatureProvider
from enclave.instance.feature_settings import list_feature_settings, parse_feature, set_features
from enclave.instance.keys import KeyStore, KeyStoreError, rotate
from enclave.instance.web import writes
from enclave.instance.web.errors import WebError
from enclave.instance.web.render import page, redirect
from enclave.instance.web.routing import WebRoute
from enclave.instance.web.session_auth import actor_of, first, form_of, signed_in_admin
from enclave.instance.web_sessions import SignedIn

router = APIRouter(route_class=WebRoute, include_in_schema=False)
Admin = Annotated[SignedIn, Depends(signed_in_admin)]

# What an administrator can choose here: vendored (GitLab.com's models) cannot serve.
PROVIDER_CHOICES = (
    (FeatureProvider.SELF_HOSTED.value, "Self-hosted model"),
    (FeatureProvider.DISABLED.value, "Disabled"),
    (FeatureProvider.UNASSIGNED.value, "Not set (chat features follow General chat)"),
)
AUDIT_PAGE_SIZE = 50


# --- features -------------------------------------------------------------------------------


def _features(ctx: InstanceContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def work(session: Session) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        models = [registry.model_view(m) for m in registry.list_models(session)[0]]
        return list_feature_settings(session), models

    return in_transaction(ctx, work)


async def _features_page(
    request: Request, *, status: int = 200, error: str | None = None
) -> Response:
    features, models = await run_in_threadpool(_features, context_of(request))
    for view in features:
        families = COMPATIBLE_FAMILIES[parse_feature(view["feature"])]
        view["choices"] = [m for m in models if m["model"] in families]
    return page(
        request,
        "features.html",
        status=status,
        features=features,
        providers=PROVIDER_CHOICES,
        error=error,
    )


@router.get("/admin/features")
async def features_page(request: Request, user: Admin) -> Response:
    return await _features_page(request)


@router.post("/admin/features/{feature}")
async def set_feature(request: Request, feature: str, user: Admin) -> Response:
    form = await form_of(request, user)
    ctx = context_of(request)
    provider = first(form, "provider")
    if provider not in {value for value, _ in PROVIDER_CHOICES}:
        return await _features_page(
            request,
            status=400,
            error=f"provider {provider!r} is not one of: self_hosted, disabled, unassigned",
        )
    model = first(form, "model_id") if provider == FeatureProvider.SELF_HOSTED.value else None

    def work(session: Session) -> None:
        set_features(
            session,
            [parse_feature(feature)],
            FeatureProvider(provider),
            model or None,
            actor_of(request, user),
        )

    try:
        await writes.write(ctx, work)
    except AdminError as exc:
        return await _features_page(request, status=400, error=exc.message)
    return redirect("/admin/features?notice=feature_updated")


# --- AI settings ----------------------------------------------------------------------------


async def _settings_page(
    request: Request, *, status: int = 200, error: str | None = None
) -> Response:
    ctx = context_of(request)
    view = await run_in_threadpool(
        in_transaction, ctx, lambda s: ai_settings.effective(s, ctx.settings).view()
    )
    return page(
        request,
        "settings.html",
        status=status,
        settings=view,
        error=error,
        min_timeout=ai_settings.MIN_TIMEOUT_S,
        max_timeout=ai_settings.MAX_TIMEOUT_S,
        editor_key_max_days=ctx.settings.instance.editor_key_max_days,
    )


@router.get("/admin/settings")
async def settings_page(request: Request, user: Admin) -> Response:
    return await _settings_page(request)


@router.post("/admin/settings")
async def update_settings(request: Request, user: Admin) -> Response:
    form = await form_of(request, user)
    ctx = context_of(request)
    changes: dict[str, Any] = {
        "ai_gateway_url": first(form, "ai_gateway_url") or None,
        "ai_gateway_timeout_seconds": first(form, "ai_gateway_timeout_seconds") or None,
        "enabled_instance_verbose_ai_logs": form.get("enabled_instance_verbose_ai_logs") == "on",
    }
    try:
        await writes.write(
            ctx, lambda s: ai_settings.update(s, ctx.settings, changes, actor_of(request, user))
        )
    except AdminError as exc:
        return await _settings_page(request, status=400, error=exc.message)
    return redirect("/admin/settings?notice=settings_updated")


# --- signing keys ---------------------------------------------------------------------------


def _keys_page(request: Request, *, status: int = 200, error: str | None = None) -> Response:
    ctx = context_of(request)
    try:
        keys = KeyStore.load(ctx.settings.keys_dir).describe()
    except KeyStoreError as exc:
        keys, error = [], str(exc)
    for key in keys:
        for name in ("activate_at", "retire_at"):
            value = key.get(name)
            key[name] = datetime.fromtimestamp(value, UTC) if value else None
    return page(request, "keys.html", status=status, keys=keys, error=error)


@router.get("/admin/keys")
async def keys_page(request: Request, user: Admin) -> Response:
    return _keys_page(request)


@router.post("/admin/keys/rotate")
async def rotate_key(request: Request, user: Admin) -> Response:
    form = await form_of(request, user)
    ctx = context_of(request)
    raw = first(form, "activate_after_s") or "300"
    if not raw.isdigit() or int(raw) > 86400:
        return _keys_page(
            request,
            status=400,
            error=f"activate after {raw!r}: give a number of seconds from 0 to 86400",
        )
    try:
        rotation = await run_in_threadpool(
            lambda: rotate(
                ctx.settings.keys_dir,
                activate_after_s=int(raw),
                token_lifetime_s=ctx.settings.instance.token_lifetime_s,
            )
        )
    except KeyStoreError as exc:
        return _keys_page(request, status=409, error=str(exc))
    view = {
        "old_kid": rotation.old_kid,
        "new_kid": rotation.new_kid,
        "activate_at": rotation.activate_at,
        "old_retire_at": rotation.old_retire_at,
    }
    await writes.write(
        ctx,
        lambda s: audit.record(
            s, audit.SIGNING_KEY_ROTATED, rotation.new_kid, view, actor=actor_of(request, user)
        ),
    )
    return redirect("/admin/keys?notice=key_rotated")


# --- audit log ------------------------------------------------------------------------------


@router.get("/admin/audit")
async def audit_page(request: Request, user: Admin) -> Response:
    ctx = context_of(request)
    query = request.query_params
    action = query.get("action") or None
    if action is not None and action not in audit.ACTIONS:
        raise WebError(400, f"unknown action {action!r}; choose one from the list")
    author = query.get("author_id") or None
    if author is not None and not author.isdigit():
        raise WebError(400, f"author id {author!r} is not a number")
    page_number = int(query["page"]) if query.get("page", "").isdigit() else 1
    page_number = max(1, min(page_number, 10_000))
    try:
        after = audit_views.parse_time(query.get("created_after"), "created_after")
        before = audit_views.parse_time(query.get("created_before"), "created_before")
    except AdminError as exc:
        raise WebError(400, exc.message) from None

    def work(session: Session) -> tuple[list[dict[str, Any]], int]:
        events, total = audit_views.list_events(
            session,
            action=action,
            author_id=int(author) if author else None,
            created_after=after,
            created_before=before,
            offset=(page_number - 1) * AUDIT_PAGE_SIZE,
            limit=AUDIT_PAGE_SIZE,
        )
        return [audit_views.event_view(e) for e in events], total

    events, total = await run_in_threadpool(in_transaction, ctx, work)
    return page(
        request,
        "audit.html",
        events=events,
        total=total,
        actions=sorted(audit.ACTIONS),
        filters={
            "action": action or "",
            "author_id": author or "",
            "created_after": query.get("created_after", ""),
            "created_before": query.get("created_before", ""),
        },
        page_number=page_number,
        has_next=page_number * AUDIT_PAGE_SIZE < total,
    )
