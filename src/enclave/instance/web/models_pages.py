"""``/admin/models``: self-hosted models — list, add, edit, delete (refused while features use
the model), and Test connection with the check's exact message."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from enclave.common.features import FAMILY_DISPLAY_NAMES
from enclave.instance import registry
from enclave.instance.admin_errors import AdminError, NotFoundError
from enclave.instance.api.deps import context_of, in_transaction
from enclave.instance.context import InstanceContext
from enclave.instance.db.models import ModelProvider
from enclave.instance.web import writes
from enclave.instance.web.connection_tests import TestRecord, last_results, test_model
from enclave.instance.web.errors import WebError
from enclave.instance.web.render import page, redirect
from enclave.instance.web.routing import WebRoute
from enclave.instance.web.session_auth import actor_of, first, form_of, signed_in_admin
from enclave.instance.web_sessions import SignedIn

router = APIRouter(route_class=WebRoute, include_in_schema=False)
Admin = Annotated[SignedIn, Depends(signed_in_admin)]

BASE = "/admin/models"
FIELDS = ("name", "model", "provider", "endpoint", "identifier")


def _rules(ctx: InstanceContext) -> registry.EndpointRules:
    return registry.EndpointRules.from_settings(ctx.settings.instance)


def _list(ctx: InstanceContext) -> list[dict[str, Any]]:
    return in_transaction(
        ctx, lambda s: [registry.model_view(m) for m in registry.list_models(s)[0]]
    )


def _choices() -> dict[str, Any]:
    return {
        "families": sorted(FAMILY_DISPLAY_NAMES.items()),
        "providers": [(p.value, registry.PROVIDER_TITLES[p.value]) for p in ModelProvider],
    }


async def _list_page(
    request: Request,
    *,
    status: int = 200,
    error: str | None = None,
    tested: TestRecord | None = None,
) -> Response:
    ctx = context_of(request)
    models = await run_in_threadpool(_list, ctx)
    return page(
        request,
        "models.html",
        status=status,
        models=models,
        tests=last_results(),
        error=error,
        tested=tested,
    )


@router.get(BASE)
async def list_models(request: Request, user: Admin) -> Response:
    return await _list_page(request)


def _form_page(
    request: Request,
    values: dict[str, Any],
    *,
    model_id: int | None = None,
    has_api_token: bool = False,
    status: int = 200,
    error: str | None = None,
) -> Response:
    return page(
        request,
        "model_form.html",
        status=status,
        values=values,
        model_id=model_id,
        has_api_token=has_api_token,
        error=error,
        **_choices(),
    )


@router.get(f"{BASE}/new")
async def new_model(request: Request, user: Admin) -> Response:
    return _form_page(request, {"provider": ModelProvider.API.value, "model": "general"})


@router.post(BASE)
async def create_model(request: Request, user: Admin) -> Response:
    form = await form_of(request, user)
    ctx = context_of(request)
    values = {name: first(form, name) for name in FIELDS}
    data: dict[str, Any] = {**values, "api_token": form.get("api_token") or None}

    def work(session: Session) -> None:
        spec = registry.ModelSpec.parse(data)
        registry.create_model(
            session, ctx.secret_box, spec, actor_of(request, user), rules=_rules(ctx)
        )

    try:
        await writes.write(ctx, work)
    except AdminError as exc:
        return _form_page(request, values, status=400, error=exc.message)
    return redirect(f"{BASE}?notice=model_created")


def _get(ctx: InstanceContext, model_id: int) -> dict[str, Any]:
    try:
        return in_transaction(ctx, lambda s: registry.model_view(registry.get_model(s, model_id)))
    except NotFoundError as exc:
        raise WebError(404, exc.message) from None


@router.get(f"{BASE}/{{model_id}}/edit")
async def edit_model(request: Request, model_id: int, user: Admin) -> Response:
    view = await run_in_threadpool(_get, context_of(request), model_id)
    values = {name: view.get(name) or "" for name in FIELDS}
    return _form_page(request, values, model_id=model_id, has_api_token=view["has_api_token"])


@router.post(f"{BASE}/{{model_id}}")
async def update_model(request: Request, model_id: int, user: Admin) -> Response:
    form = await form_of(request, user)
    ctx = context_of(request)
    values = {name: first(form, name) for name in FIELDS}
    changes: dict[str, Any] = {**values}
    if not values["endpoint"]:
        changes["endpoint"] = None
    if form.get("remove_api_token"):
        changes["api_token"] = None
    elif form.get("api_token"):
        changes["api_token"] = form["api_token"]
    if form.get("keep_api_token"):
        changes["keep_api_token"] = True

    def work(session: Session) -> None:
        registry.update_model(
            session, ctx.secret_box, model_id, changes, actor_of(request, user), rules=_rules(ctx)
        )

    try:
        await writes.write_or_404(ctx, work)
    except AdminError as exc:
        view = await run_in_threadpool(_get, ctx, model_id)
        return _form_page(
            request,
            values,
            model_id=model_id,
            has_api_token=view["has_api_token"],
            status=400,
            error=exc.message,
        )
    return redirect(f"{BASE}?notice=model_updated")


@router.post(f"{BASE}/{{model_id}}/delete")
async def delete_model(request: Request, model_id: int, user: Admin) -> Response:
    await form_of(request, user)
    ctx = context_of(request)
    try:
        await writes.write_or_404(
            ctx, lambda s: registry.delete_model(s, model_id, actor_of(request, user))
        )
    except AdminError as exc:  # used by features: say which, and keep the model
        return await _list_page(request, status=409, error=exc.message)
    return redirect(f"{BASE}?notice=model_deleted")


@router.post(f"{BASE}/{{model_id}}/test")
async def test_connection(request: Request, model_id: int, user: Admin) -> Response:
    await form_of(request, user)
    ctx = context_of(request)
    try:
        record = await test_model(ctx, model_id, user.user_id, str(request.state.request_id))
    except NotFoundError as exc:
        raise WebError(404, exc.message) from None
    return await _list_page(request, tested=record)
