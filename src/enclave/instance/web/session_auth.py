"""Web sign-in state: the session cookie, the admin check, CSRF protection and forms.

* :class:`SessionAuth` is an early check (run before the body is read, like PAT checks): no
  valid session → :class:`SignInRequired` (a redirect to the sign-in page); ``admin`` and not
  an administrator → 403 page. For unsafe methods it first checks that the request comes from
  this site (``Origin``, else ``Referer``, must name the host the request was sent to; neither
  → refused): a cross-site form post never reaches a handler.
* :func:`form_of` parses a form body and checks its ``csrf_token`` against the session's
  synchronizer token in constant time (403 page otherwise). Every POST handler reads its form
  through it.
* Cookies: ``HttpOnly``, ``SameSite=Lax``, path ``/``, ``Secure`` when the instance's external
  URL (or the request, or a trusted proxy's ``X-Forwarded-Proto``) is https.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from enclave.common.client_address import VIA_TRUSTED_PROXY
from enclave.instance import web_sessions
from enclave.instance.actor import Actor
from enclave.instance.api.deps import EarlyAuth, context_of, in_transaction
from enclave.instance.web.errors import SignInRequired, WebError
from enclave.instance.web_sessions import COOKIE_NAME, SignedIn, csrf_matches

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_FORM_FIELDS = 200
CROSS_SITE = (
    "This form was sent from another site (or without an Origin header), so it was refused. "
    "Open the page on this instance and send the form from there."
)
STALE_FORM = (
    "The form's security token is missing or out of date (the page was open across a "
    "sign-out). Reload the page and send the form again."
)


def _same_site(request: HTTPConnection) -> bool:
    host = request.headers.get("host")
    if not host:
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        referer = request.headers.get("referer")
        if not referer:
            return False
        origin = referer
    parts = urlsplit(origin)
    return bool(parts.scheme in ("http", "https") and parts.netloc == host)


def check_same_site(request: HTTPConnection) -> None:
    if request.scope.get("method", "GET") not in SAFE_METHODS and not _same_site(request):
        raise WebError(403, CROSS_SITE)


async def resume_session(request: HTTPConnection) -> SignedIn | None:
    """The valid session of the request's cookie, or None (a write: it records the visit)."""
    ctx = context_of(request)
    cookie = request.cookies.get(COOKIE_NAME)
    return await run_in_threadpool(
        in_transaction,
        ctx,
        lambda s: web_sessions.resume(s, cookie, ctx.settings.instance),
        write=True,
    )


class SessionAuth(EarlyAuth):
    """The signed-in user of a web page (``admin``: an administrator)."""

    def __init__(self, *, admin: bool) -> None:
        self.admin = admin

    async def __call__(self, request: HTTPConnection) -> SignedIn:
        cached = getattr(request.state, "web_user", None)
        if cached is None:
            check_same_site(request)
            cached = await resume_session(request)
            if cached is None:
                raise SignInRequired()
            request.state.web_user = cached
            request.state.user_id = cached.user_id  # for the request log
        if self.admin and not cached.is_admin:
            raise WebError(
                403,
                "This page is for administrators. Your own tokens and editor keys are under "
                "Profile; ask an administrator for anything else.",
            )
        return cached


signed_in_user = SessionAuth(admin=False)
signed_in_admin = SessionAuth(admin=True)


def parse_form(raw: bytes) -> dict[str, str]:
    """A urlencoded form's fields (the first value of each); 400 page if unreadable."""
    try:
        text = raw.decode("utf-8")
        fields = parse_qs(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise WebError(400, "The form could not be read (not UTF-8, or too many fields).") from None
    return {name: values[0] for name, values in fields.items()}


def form_list(raw: bytes, name: str) -> list[str]:
    """Every value of a repeated field (check boxes)."""
    try:
        fields = parse_qs(raw.decode("utf-8"), max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise WebError(400, "The form could not be read (not UTF-8, or too many fields).") from None
    return fields.get(name, [])


async def form_of(request: Request, user: SignedIn) -> dict[str, str]:
    """The form of a signed-in user's POST, after its CSRF token matched."""
    form = parse_form(await request.body())
    if not csrf_matches(user.csrf_token, form.get("csrf_token")):
        raise WebError(403, STALE_FORM)
    return form


def is_secure(request: HTTPConnection) -> bool:
    """https: the instance's external URL, the connection, or a trusted proxy's word for it."""
    if context_of(request).issuer.startswith("https://") or request.url.scheme == "https":
        return True
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return bool(request.scope.get(VIA_TRUSTED_PROXY)) and forwarded == "https"


def set_cookie(
    response: Response, request: HTTPConnection, name: str, value: str, **extra: Any
) -> None:
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="lax",
        secure=is_secure(request),
        path="/",
        **extra,
    )


def clear_cookie(response: Response, request: HTTPConnection, name: str) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="lax", secure=is_secure(request))


def actor_of(request: HTTPConnection, user: SignedIn) -> Actor:
    """The author of a change made from a page, for the audit log."""
    return Actor(user.user_id, user.username, request.client.host if request.client else None)


def first(form: Mapping[str, str], name: str) -> str:
    return form.get(name, "").strip()
