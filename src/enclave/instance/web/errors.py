"""What web pages raise instead of JSON errors, and the handlers that render them."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from enclave.instance.web.render import page

SIGN_IN_PATH = "/users/sign_in"


class SignInRequired(Exception):
    """No valid session: the browser is sent to the sign-in page (and back afterwards)."""


class WebError(Exception):
    """A refusal shown as a page: ``status`` and a message that says what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _return_path(request: Request) -> str:
    # Only the local path: never an absolute URL (no open redirect through the sign-in page).
    path = request.url.path
    return path if request.method == "GET" and path.startswith("/") else "/admin"


async def _sign_in_required(request: Request, exc: Exception) -> Response:
    target = f"{SIGN_IN_PATH}?return_to={quote(_return_path(request), safe='/')}"
    return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})


async def _web_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WebError)
    return page(request, "error.html", status=exc.status, message=exc.message)


def install_web_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SignInRequired, _sign_in_required)
    app.add_exception_handler(WebError, _web_error)
