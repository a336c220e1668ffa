"""Errors in the GitLab REST dialect: ``{"message": "..."}`` with GitLab's status codes.

Every error the instance raises itself carries ``X-GitLab-Error-Origin: monolith`` so IDEs can
tell instance failures from gateway failures (which are relayed untouched). Messages say what
to do next and never carry tokens, keys or stack traces.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from enclave.common import wire
from enclave.common.logging import get_logger
from enclave.instance.admin_errors import AdminError, ModelInUseError

log = get_logger(__name__)

ERROR_ORIGIN_MONOLITH = "monolith"

# GitLab's reason phrases in its API messages ("401 Unauthorized", "400 Bad request").
_REASONS = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def status_message(status: int, detail: str | None = None) -> str:
    reason = _REASONS.get(status, "Error")
    return f"{status} {reason}" + (f" - {detail}" if detail else "")


class InstanceAPIError(Exception):
    """Raise in a route to answer ``{"message": ...}`` with ``status``.

    ``extra`` adds fields next to ``message`` (field errors, a chat error code); ``message``
    replaces the GitLab-style "<status> <reason> - <detail>" text where a client expects its
    own wording (Duo Chat's "... Error code: A1001").
    """

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> None:
        self.status = status
        self.message = message if message is not None else status_message(status, detail)
        self.headers = headers or {}
        self.extra = extra or {}
        super().__init__(self.message)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        {"message": message, **extra},
        status_code=status,
        headers={**(headers or {}), wire.H_ERROR_ORIGIN: ERROR_ORIGIN_MONOLITH},
    )


def unauthorized() -> InstanceAPIError:
    # Deliberately the same body for every cause (missing, unknown, revoked, expired,
    # blocked): the cause goes to the log, not to whoever holds the token.
    return InstanceAPIError(401)


async def _instance_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InstanceAPIError)
    return error_response(exc.status, exc.message, exc.headers, **exc.extra)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, status_message(exc.status_code), dict(exc.headers or {}))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    location = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    if first.get("type") == "int_parsing_size" and tuple(first.get("loc", ()))[:1] == ("path",):
        # An id of thousands of digits names nothing: 404, like any other id that does not exist.
        return error_response(404, status_message(404, f"{location} is too large to be an id"))
    detail = f"{location or 'request'} is invalid: {first.get('msg', 'bad value')}"
    return error_response(400, status_message(400, detail))


# SQLSTATEs of PostgreSQL's "try again" errors: lock not available, serialization failure,
# deadlock detected. The server is up; another transaction was in the way.
_PG_BUSY_SQLSTATES = frozenset({"55P03", "40001", "40P01"})
DATABASE_BUSY_RETRY_AFTER_S = 1


def database_busy(exc: OperationalError) -> bool:
    """Whether ``exc`` means "another writer holds the lock" rather than "database down"."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _PG_BUSY_SQLSTATES:
        return True
    # sqlite3 has no error codes before Python 3.11's sqlite_errorcode; its texts are stable:
    # "database is locked" (SQLITE_BUSY) and "database table is locked" (SQLITE_LOCKED).
    return type(orig).__module__ == "sqlite3" and "is locked" in str(orig)


async def _database_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OperationalError)
    if database_busy(exc):
        # Not an outage: writes queued past the busy timeout. The client may simply retry.
        log.warning("database_busy", error=type(exc.orig).__name__)
        return error_response(
            503,
            status_message(
                503,
                "the instance database is busy with other writes; retry after the number of "
                "seconds in Retry-After (if this persists, look for a long-running write such "
                "as a backup or a migration holding the database lock)",
            ),
            {"Retry-After": str(DATABASE_BUSY_RETRY_AFTER_S)},
        )
    log.error("database_unavailable", error=type(exc).__name__)
    return error_response(
        503,
        status_message(
            503, "the instance database is unavailable; check /-/readiness and the database server"
        ),
    )


async def _admin_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AdminError)
    extra: dict[str, Any] = {}
    if exc.field:
        extra["errors"] = {exc.field: [exc.message]}
    if isinstance(exc, ModelInUseError):
        extra["features"] = exc.features
    return error_response(exc.status, status_message(exc.status, exc.message), **extra)


def field_errors(exc: RequestValidationError) -> InstanceAPIError:
    """422 naming every invalid body field: ``{"message", "errors": {field: [why, ...]}}``.

    For endpoints whose clients show per-field messages (the AI feature endpoints); the rest
    of the API keeps GitLab's 400 with the first problem.
    """
    errors: dict[str, list[str]] = {}
    for error in exc.errors():
        if error.get("type") == "json_invalid":  # its loc is a byte offset, not a field
            errors.setdefault("body", []).append("the body is not valid JSON")
            continue
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        errors.setdefault(location or "body", []).append(str(error.get("msg", "bad value")))
    summary = "; ".join(f"{name}: {', '.join(why)}" for name, why in errors.items())
    return InstanceAPIError(422, summary or "the body is invalid", extra={"errors": errors})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(InstanceAPIError, _instance_error)
    app.add_exception_handler(AdminError, _admin_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_error)
