"""Sign-in and sign-out (``/users/sign_in``, ``/users/sign_out``) and ``/``.

Sign-in takes a username and password (argon2id, :mod:`enclave.instance.passwords`). The form
carries a token that must equal a cookie set with the form (no session exists yet to hold
one), and the request must come from this site. A failure answers after a pause, says only
"wrong username or password", and counts toward the failed-authentication ban of the client
address (``failed_auth_max_retry``; the same limiter as PATs): once banned, sign-in answers
429 until the ban ends, even with the right password.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from enclave.common.logging import get_logger
from enclave.instance import audit, passwords, web_sessions
from enclave.instance.actor import Actor
from enclave.instance.api.deps import context_of, in_transaction
from enclave.instance.api.errors import InstanceAPIError
from enclave.instance.web.errors import SIGN_IN_PATH
from enclave.instance.web.render import page, redirect, stylesheet
from enclave.instance.web.routing import WebRoute
from enclave.instance.web.session_auth import (
    check_same_site,
    clear_cookie,
    first,
    form_of,
    parse_form,
    resume_session,
    set_cookie,
    signed_in_user,
)
from enclave.instance.web_sessions import COOKIE_NAME, SignedIn, csrf_matches

log = get_logger(__name__)

router = APIRouter(route_class=WebRoute, include_in_schema=False)

SIGN_IN_COOKIE = "enclave_sign_in"
PROFILE_PATH = "/-/user_settings/editor_keys"
# A failed sign-in answers after this pause: password guessing gets slow before the ban.
FAILURE_DELAY_S = 1.0
WRONG = "Wrong username or password."


def _safe_return(value: str | None, is_admin: bool) -> str:
    """A local path to go back to; anything else (absolute, //host, \\) goes home."""
    value = value or ""
    local = value.startswith("/") and not value.startswith(("//", "/\\"))
    if local and (is_admin or not value.startswith("/admin")):
        return value
    return "/admin" if is_admin else PROFILE_PATH


def _form(
    request: Request, *, status: int = 200, error: str | None = None, username: str = ""
) -> Response:
    token = secrets.token_urlsafe(32)
    response = page(
        request,
        "signin.html",
        status=status,
        error=error,
        username=username,
        sign_in_token=token,
        return_to=request.query_params.get("return_to", ""),
    )
    set_cookie(response, request, SIGN_IN_COOKIE, token, max_age=3600)
    return response


@router.get("/")
async def home(request: Request) -> Response:
    user = await resume_session(request)
    if user is None:
        return redirect(SIGN_IN_PATH)
    return redirect(_safe_return(None, user.is_admin))


@router.get(SIGN_IN_PATH)
async def sign_in_form(request: Request) -> Response:
    return _form(request)


@router.post(SIGN_IN_PATH)
async def sign_in(request: Request) -> Response:
    check_same_site(request)
    ctx = context_of(request)
    form = parse_form(await request.body())
    username = first(form, "username")
    if not csrf_matches(request.cookies.get(SIGN_IN_COOKIE, ""), form.get("sign_in_token")):
        return _form(
            request,
            status=403,
            error="The sign-in form expired or was not sent from this page; try again.",
            username=username,
        )
    address = request.client.host if request.client else None
    try:
        await ctx.limits.check_address(address)
    except InstanceAPIError as exc:
        return _form(request, status=429, error=exc.message, username=username)
    password = form.get("password", "")
    settings = ctx.settings.instance
    previous = request.cookies.get(COOKIE_NAME)

    def attempt(session: Session) -> tuple[str, SignedIn] | None:
        user = passwords.check_sign_in(session, username, password)
        if user is None:
            return None
        web_sessions.end(session, previous)  # a new id at every sign-in, never the old one
        cookie = web_sessions.start(session, user, settings)
        audit.record(
            session,
            audit.USER_SIGNED_IN,
            f"user/{user.id}",
            {"username": user.username},
            actor=Actor(user.id, user.username, address),
        )
        signed = web_sessions.resume(session, cookie, settings)
        assert signed is not None
        return cookie, signed

    result = await run_in_threadpool(in_transaction, ctx, attempt, write=True)
    if result is None:
        log.info("web_sign_in_failed")
        await ctx.limits.auth_failed(address, "unknown")
        await asyncio.sleep(FAILURE_DELAY_S)
        return _form(request, status=401, error=WRONG, username=username)
    cookie, signed = result
    log.info("web_signed_in", user_id=signed.user_id)
    response = redirect(_safe_return(form.get("return_to"), signed.is_admin))
    set_cookie(response, request, COOKIE_NAME, cookie)
    clear_cookie(response, request, SIGN_IN_COOKIE)
    return response


@router.post("/users/sign_out")
async def sign_out(
    request: Request, user: Annotated[SignedIn, Depends(signed_in_user)]
) -> Response:
    await form_of(request, user)
    ctx = context_of(request)
    cookie = request.cookies.get(COOKIE_NAME)
    await run_in_threadpool(in_transaction, ctx, lambda s: web_sessions.end(s, cookie), write=True)
    response = redirect(f"{SIGN_IN_PATH}?notice=signed_out")
    clear_cookie(response, request, COOKIE_NAME)
    return response


@router.get("/admin/static/app.css")
async def stylesheet_file() -> Response:
    return Response(
        stylesheet(),
        media_type="text/css",
        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
