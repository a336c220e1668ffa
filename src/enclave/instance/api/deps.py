"""Dependencies shared by routes: the runtime context and PAT authentication."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar, cast

from fastapi import Request
from sqlalchemy.orm import Session

from enclave.common.logging import get_logger
from enclave.instance.actor import Actor
from enclave.instance.api.errors import InstanceAPIError, unauthorized
from enclave.instance.context import InstanceContext
from enclave.instance.db.engine import transaction
from enclave.instance.pats import (
    AuthError,
    InsufficientScopeError,
    Principal,
    authenticate_request,
    token_from_headers,
)

log = get_logger(__name__)

T = TypeVar("T")


def context_of(request: Request) -> InstanceContext:
    return cast(InstanceContext, request.app.state.ctx)


def in_transaction(ctx: InstanceContext, work: Callable[[Session], T], *, write: bool = False) -> T:
    """Run ``work`` in one transaction; ``write=True`` whenever it may write (on SQLite the
    transaction then takes the write lock up front and queues for it, see db/engine.py)."""
    with transaction(ctx.sessions, write=write) as session:
        return work(session)


def authenticated(accepted_scopes: Iterable[str]) -> Callable[[Request], Principal]:
    """A dependency that authenticates the caller's PAT and checks its scopes.

    It is a plain (sync) function on purpose: FastAPI runs it in the thread pool, so the
    database lookup never blocks the event loop.
    """
    scopes = frozenset(accepted_scopes)

    def dependency(request: Request) -> Principal:
        ctx = context_of(request)
        # The address ClientAddressMiddleware settled on (X-Forwarded-For only from a trusted
        # proxy); a banned one is refused before its token is even looked at.
        address = request.client.host if request.client else None
        ctx.limits.check_address(address)
        token = token_from_headers(
            request.headers.get("private-token"), request.headers.get("authorization")
        )
        try:
            principal = authenticate_request(ctx.sessions, token, accepted_scopes=scopes)
        except AuthError as exc:
            log.info("authentication_failed", reason=exc.reason)
            ctx.limits.auth_failed(address, exc.reason)
            raise unauthorized() from None
        except InsufficientScopeError as exc:
            log.info("insufficient_scope", accepted=list(exc.accepted))
            raise InstanceAPIError(
                403,
                "insufficient_scope: the personal access token needs one of the scopes "
                f"{', '.join(exc.accepted)}; create a token with one of them",
            ) from None
        request.state.user_id = principal.user_id
        return principal

    return dependency


ADMIN_SCOPES = frozenset({"api"})


def admin_user(request: Request) -> Principal:
    """A dependency for admin endpoints: a PAT with scope ``api`` of an administrator.

    401 without a valid token, 403 for a non-admin (or a token without ``api``)."""
    principal = authenticated(ADMIN_SCOPES)(request)
    if not principal.is_admin:
        log.info("admin_required", user_id=principal.user_id)
        raise InstanceAPIError(
            403, "this endpoint is for administrators; ask an administrator to do it for you"
        )
    return principal


def actor_of(request: Request, principal: Principal) -> Actor:
    client = request.client.host if request.client else None
    return Actor(principal.user_id, principal.username, client)
