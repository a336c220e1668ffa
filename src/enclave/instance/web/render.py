"""Rendering pages: the Jinja2 environment (autoescaped) and the headers every page carries."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, select_autoescape

# No script, no frame, no form posting elsewhere, nothing loaded from outside the instance.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Pages may show a new token once, and always show account data: never cached.
    "Cache-Control": "no-store",
}

# Short success notices, chosen by key from a redirect's ?notice= (never free text from a URL).
NOTICES = {
    "model_created": "Model added.",
    "model_updated": "Model saved.",
    "model_deleted": "Model deleted.",
    "feature_updated": "Feature setting saved.",
    "settings_updated": "AI settings saved.",
    "key_rotated": "A new signing key is published; it signs after its activation time.",
    "user_created": "User created.",
    "user_blocked": "User blocked: their sessions, tokens and keys stop working.",
    "user_unblocked": "User unblocked.",
    "password_set": "Password set.",
    "token_revoked": "Token revoked.",
    "key_revoked": "Editor key revoked; the gateway refuses it within its routes refresh.",
    "signed_out": "You are signed out.",
}


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return "" if value is None else str(value)


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("enclave.instance.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    return env


def page(request: Request, template: str, *, status: int = 200, **values: Any) -> HTMLResponse:
    """``template`` rendered with ``values`` (plus the signed-in user and form token)."""
    signed_in = getattr(request.state, "web_user", None)
    notice = NOTICES.get(request.query_params.get("notice", ""))
    html = (
        environment()
        .get_template(template)
        .render(
            me=signed_in,
            csrf=signed_in.csrf_token if signed_in is not None else "",
            notice=notice,
            path=request.url.path,
            **values,
        )
    )
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def redirect(target: str) -> RedirectResponse:
    """303 after a form post (the browser GETs ``target``), with the same headers as pages."""
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)


@cache
def stylesheet() -> bytes:
    return resources.files("enclave.instance.web").joinpath("static/app.css").read_bytes()
