"""Dependencies shared by routes: the runtime context and PAT authentication."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from enclave.common.logging import get_logger
from enclave.instance.actor import Actor
from enclave.instance.api.errors import InstanceAPIError, unauthorized
from enclave.instance.caches import principal_usable
from enclave.instance.context import InstanceContext
from enclave.instance.db.engine import transaction
from enclave.instance.pats import (
    AuthError,
    InsufficientScopeError,
    Principal,
    check_scopes,
    token_digest,
    token_from_headers,
    verify_request,
    well_formed,
)

log = get_logger(__name__)

T = TypeVar("T")


def context_of(request: HTTPConnection) -> InstanceContext:
    return cast(InstanceContext, request.app.state.ctx)


def in_transaction(ctx: InstanceContext, work: Callable[[Session], T], *, write: bool = False) -> T:
    """Run ``work`` in one transaction; ``write=True`` whenever it may write (on SQLite the
    transaction then takes the write lock up front and queues for it, see db/engine.py)."""
    with transaction(ctx.sessions, write=write) as session:
        return work(session)


class EarlyAuth(ABC):
    """A dependency that the route class runs before it reads the body (routing.py): PAT checks
    here, web sessions in ``instance/web/session_auth.py``. Subclasses are callables that keep
    their result on the request, so FastAPI's own later call just returns it."""

    @abstractmethod
    async def __call__(self, request: HTTPConnection) -> Any:
        """Authenticate (raising the refusal) and return who is calling."""


class PatAuth(EarlyAuth):
    """A dependency that authenticates the caller's PAT and checks its scopes (and, with
    ``admin``, that the caller is an administrator).

    The route class (:mod:`enclave.instance.api.routing`) calls it before it reads the body, so
    a caller without a valid token gets 401 before one body byte is read; the result is kept
    on the request, and FastAPI's own call of the dependency just returns it. A token verified
    in the last few seconds is answered from memory on the event loop (``caches.py``: the
    bounds after a revocation); any other goes to the database in the thread pool.
    """

    def __init__(self, accepted_scopes: Iterable[str], *, admin: bool = False) -> None:
        self.scopes = frozenset(accepted_scopes)
        self.admin = admin

    async def __call__(self, request: HTTPConnection) -> Principal:
        done: dict[PatAuth, Principal] = request.scope.setdefault(_DONE_KEY, {})
        principal = done.get(self)
        if principal is None:
            ctx = context_of(request)
            # The address ClientAddressMiddleware settled on (X-Forwarded-For only from a
            # trusted proxy); a banned one is refused before its token is even looked at.
            address = request.client.host if request.client else None
            await ctx.limits.check_address(address)
            token = token_from_headers(
                request.headers.get("private-token"), request.headers.get("authorization")
            )
            digest = token_digest(token) if token is not None and well_formed(token) else None
            principal = ctx.caches.auth.get(digest) if digest is not None else None
            if principal is not None and principal_usable(principal):
                ctx.caches.last_used.used(principal.token_id)
            else:
                try:
                    principal = await run_in_threadpool(self._verify, ctx, token, digest)
                except AuthError as exc:
                    log.info("authentication_failed", reason=exc.reason)
                    await ctx.limits.auth_failed(address, exc.reason)
                    raise unauthorized() from None
            self._check(request, principal)
            done[self] = principal
        return principal

    def _verify(self, ctx: InstanceContext, token: str | None, digest: str | None) -> Principal:
        epoch = ctx.caches.auth.epoch()
        try:
            principal = verify_request(ctx.sessions, token)
        except AuthError:
            if digest is not None:
                ctx.caches.auth.drop(digest)
            raise
        ctx.caches.last_used.noted_from_database(principal.token_id)
        if digest is not None:
            ctx.caches.auth.put(digest, principal, epoch=epoch)
        return principal

    def _check(self, request: HTTPConnection, principal: Principal) -> None:
        """The endpoint's scopes, and administrators only where ``admin``."""
        try:
            check_scopes(principal, self.scopes)
        except InsufficientScopeError as exc:
            log.info("insufficient_scope", accepted=list(exc.accepted))
            raise InstanceAPIError(
                403,
                "insufficient_scope: the personal access token needs one of the scopes "
                f"{', '.join(exc.accepted)}; create a token with one of them",
            ) from None
        request.state.user_id = principal.user_id
        if self.admin and not principal.is_admin:
            log.info("admin_required", user_id=principal.user_id)
            raise InstanceAPIError(
                403, "this endpoint is for administrators; ask an administrator to do it for you"
            )


# Where a request keeps the principals its PatAuth dependencies found (scope key).
_DONE_KEY = "enclave.principals"


def authenticated(accepted_scopes: Iterable[str]) -> PatAuth:
    """A dependency for a PAT with one of ``accepted_scopes``: 401 without a valid token, 403
    without one of the scopes."""
    return PatAuth(accepted_scopes)


ADMIN_SCOPES = frozenset({"api"})

# A dependency for admin endpoints: a PAT with scope ``api`` of an administrator. 401 without a
# valid token, 403 for a non-admin (or a token without ``api``).
admin_user = PatAuth(ADMIN_SCOPES, admin=True)


def actor_of(request: Request, principal: Principal) -> Actor:
    client = request.client.host if request.client else None
    return Actor(principal.user_id, principal.username, client)
