"""``/admin/users``: users (create, block, unblock, set a password) and their personal access
tokens (create — the token is shown once, on the answer page — and revoke)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from enclave.instance import accounts, passwords
from enclave.instance.admin_errors import AdminError, NotFoundError
from enclave.instance.api.deps import context_of, in_transaction
from enclave.instance.context import InstanceContext
from enclave.instance.pats import KNOWN_SCOPES
from enclave.instance.web import writes
from enclave.instance.web.errors import WebError
from enclave.instance.web.render import page, redirect
from enclave.instance.web.routing import WebRoute
from enclave.instance.web.session_auth import actor_of, first, form_of, signed_in_admin
from enclave.instance.web_sessions import SignedIn

router = APIRouter(route_class=WebRoute, include_in_schema=False)
Admin = Annotated[SignedIn, Depends(signed_in_admin)]
BASE = "/admin/users"
USERS_PAGE_SIZE = 100


async def _users_page(
    request: Request,
    *,
    status: int = 200,
    error: str | None = None,
    values: dict[str, str] | None = None,
) -> Response:
    ctx = context_of(request)
    search = request.query_params.get("search") or None
    users = await run_in_threadpool(
        in_transaction,
        ctx,
        lambda s: [
            accounts.user_view(u, ctx.issuer)
            for u in accounts.list_users(
                s, search=search, search_emails=True, limit=USERS_PAGE_SIZE
            )[0]
        ],
    )
    return page(
        request,
        "users.html",
        status=status,
        users=users,
        search=search or "",
        error=error,
        values=values or {},
    )


@router.get(BASE)
async def users_page(request: Request, user: Admin) -> Response:
    return await _users_page(request)


@router.post(BASE)
async def create_user(request: Request, user: Admin) -> Response:
    form = await form_of(request, user)
    ctx = context_of(request)
    values = {name: first(form, name) for name in ("username", "name", "email")}
    password = form.get("password", "")

    def work(session: Session) -> int:
        created = accounts.create_user(
            session,
            username=values["username"],
            name=values["name"] or None,
            email=values["email"],
            is_admin=form.get("admin") == "on",
            actor=actor_of(request, user),
        )
        if password:
            passwords.set_password(session, created, password, actor_of(request, user))
        return created.id

    try:
        user_id = await writes.write(ctx, work)
    except AdminError as exc:
        return await _users_page(request, status=400, error=exc.message, values=values)
    return redirect(f"{BASE}/{user_id}?notice=user_created")


def _user(ctx: InstanceContext, user_id: int) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    def work(session: Session) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
        found = accounts.get_user(session, user_id)
        tokens = accounts.list_tokens(session, user_id=user_id)[0]
        return (
            accounts.user_view(found, ctx.issuer),
            [accounts.token_view(t) for t in tokens],
            found.password_hash is not None,
        )

    try:
        return in_transaction(ctx, work)
    except NotFoundError as exc:
        raise WebError(404, exc.message) from None


async def _user_page(
    request: Request,
    user_id: int,
    *,
    status: int = 200,
    error: str | None = None,
    new_token: str | None = None,
) -> Response:
    view, tokens, has_password = await run_in_threadpool(_user, context_of(request), user_id)
    return page(
        request,
        "user.html",
        status=status,
        user=view,
        tokens=tokens,
        has_password=has_password,
        scopes=sorted(KNOWN_SCOPES),
        error=error,
        new_token=new_token,
    )


@router.get(f"{BASE}/{{user_id}}")
async def user_page(request: Request, user_id: int, user: Admin) -> Response:
    return await _user_page(request, user_id)


@router.post(f"{BASE}/{{user_id}}/tokens")
async def create_token(request: Request, user_id: int, user: Admin) -> Response:
    try:
        plaintext = await writes.create_token(request, user, user_id)
    except NotFoundError as exc:
        raise WebError(404, exc.message) from None
    except AdminError as exc:
        return await _user_page(request, user_id, status=400, error=exc.message)
    return await _user_page(request, user_id, new_token=plaintext)


@router.post(f"{BASE}/{{user_id}}/tokens/{{token_id}}/revoke")
async def revoke_token(request: Request, user_id: int, token_id: int, user: Admin) -> Response:
    await writes.revoke_token(request, user, user_id, token_id)
    return redirect(f"{BASE}/{user_id}?notice=token_revoked")


@router.post(f"{BASE}/{{user_id}}/block")
async def block_user(request: Request, user_id: int, user: Admin) -> Response:
    form = await form_of(request, user)
    blocked = form.get("blocked") == "true"
    if user_id == user.user_id and blocked:
        return await _user_page(
            request,
            user_id,
            status=400,
            error="You cannot block yourself; sign in as another administrator.",
        )
    ctx = context_of(request)
    await writes.write_or_404(
        ctx, lambda s: accounts.set_blocked(s, user_id, blocked, actor_of(request, user))
    )
    notice = "user_blocked" if blocked else "user_unblocked"
    return redirect(f"{BASE}/{user_id}?notice={notice}")


@router.post(f"{BASE}/{{user_id}}/password")
async def set_password(request: Request, user_id: int, user: Admin) -> Response:
    form = await form_of(request, user)
    ctx = context_of(request)

    def work(session: Session) -> None:
        target = accounts.get_user(session, user_id)
        passwords.set_password(session, target, form.get("password", ""), actor_of(request, user))

    try:
        await writes.write_or_404(ctx, work)
    except AdminError as exc:
        return await _user_page(request, user_id, status=400, error=exc.message)
    return redirect(f"{BASE}/{user_id}?notice=password_set")
