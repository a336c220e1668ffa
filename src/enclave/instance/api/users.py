"""Users and personal access tokens, in GitLab's REST shapes.

* ``GET /api/v4/user`` — the caller (clients use it to check a token).
* ``GET /api/v4/users`` (everyone: public fields; admins: all), ``POST /api/v4/users`` (admin),
  ``GET /api/v4/users/:id``, ``POST /api/v4/users/:id/block`` / ``unblock`` (admin),
  ``DELETE /api/v4/users/:id[?hard_delete=true]`` (admin; 204; not oneself, not the last
  administrator).
* ``POST /api/v4/users/:id/personal_access_tokens`` (admin): the token is in the answer, once.
* ``GET /api/v4/personal_access_tokens`` (admins: all, ``user_id`` filter; others: their own),
  ``GET/DELETE /api/v4/personal_access_tokens/:id`` and ``…/self``: DELETE revokes (204).

Authentication reads the token row on every request, so a revoked or expired token stops
working at once on every replica.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from enclave.instance import accounts
from enclave.instance.api.deps import (
    actor_of,
    admin_user,
    authenticated,
    context_of,
    in_transaction,
)
from enclave.instance.api.errors import InstanceAPIError
from enclave.instance.api.pagination import Page, page_params, set_headers
from enclave.instance.api.routing import InstanceRoute
from enclave.instance.db.models import MAX_ID
from enclave.instance.pats import READ_USER_SCOPES, SCOPE_API, SCOPE_READ_API, Principal

router = APIRouter(tags=["users and tokens"], route_class=InstanceRoute)

Admin = Annotated[Principal, Depends(admin_user)]
Reader = Annotated[Principal, Depends(authenticated(READ_USER_SCOPES))]
ApiUser = Annotated[Principal, Depends(authenticated({SCOPE_API}))]
ApiReader = Annotated[Principal, Depends(authenticated({SCOPE_API, SCOPE_READ_API}))]
Paging = Annotated[Page, Depends(page_params)]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")  # GitLab clients send password etc.; not used

    username: str | None = Field(None, description="Login name: letters, digits, _ . -")
    name: str | None = Field(None, description="Display name (default: the username).")
    email: str | None = Field(None, description="E-mail address, unique.")
    admin: bool = Field(False, description="Make the user an administrator.")


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="Where the token is used, e.g. 'vscode'.")
    scopes: list[str] | str | None = Field(
        None, description="api, read_api, read_user and/or ai_features."
    )
    expires_at: str | None = Field(
        None,
        description="YYYY-MM-DD; the token stops working at 00:00 UTC that day. Default: the "
        "instance's maximum lifetime (365 days unless instance.pat_max_lifetime_days says).",
    )
    description: str | None = Field(None, description="Accepted for GitLab compatibility.")


@router.get("/api/v4/user", summary="The authenticated user")
def current_user(request: Request, principal: Reader) -> dict[str, Any]:
    ctx = context_of(request)
    return in_transaction(
        ctx, lambda s: accounts.user_view(accounts.get_user(s, principal.user_id), ctx.issuer)
    )


@router.get("/api/v4/users", summary="List users")
def list_users(
    request: Request,
    response: Response,
    principal: ApiReader,
    page: Paging,
    search: Annotated[
        str | None,
        Query(description="Part of username or name (admins: or e-mail address)."),
    ] = None,
    username: Annotated[str | None, Query(description="Exactly this username.")] = None,
) -> list[dict[str, Any]]:
    ctx = context_of(request)

    def work(session: Session) -> list[dict[str, Any]]:
        rows, total = accounts.list_users(
            session,
            offset=page.offset,
            limit=page.per_page,
            search=search,
            username=username,
            # As GitLab: only admins may find users by e-mail, so nobody else can probe
            # whether an address belongs to someone.
            search_emails=principal.is_admin,
        )
        set_headers(request, response, page, total)
        return [
            accounts.user_view(
                user, ctx.issuer, full=principal.is_admin or user.id == principal.user_id
            )
            for user in rows
        ]

    return in_transaction(ctx, work)


@router.post("/api/v4/users", status_code=201, summary="Create a user (admin)")
def create_user(request: Request, body: UserCreate, principal: Admin) -> dict[str, Any]:
    ctx = context_of(request)
    actor = actor_of(request, principal)
    return in_transaction(
        ctx,
        lambda s: accounts.user_view(
            accounts.create_user(
                s,
                username=body.username,
                name=body.name,
                email=body.email,
                is_admin=body.admin,
                actor=actor,
            ),
            ctx.issuer,
        ),
        write=True,
    )


@router.get("/api/v4/users/{user_id}", summary="Show a user")
def show_user(request: Request, user_id: int, principal: ApiReader) -> dict[str, Any]:
    ctx = context_of(request)
    full = principal.is_admin or principal.user_id == user_id
    return in_transaction(
        ctx, lambda s: accounts.user_view(accounts.get_user(s, user_id), ctx.issuer, full=full)
    )


@router.post("/api/v4/users/{user_id}/block", status_code=201, summary="Block a user (admin)")
def block_user(request: Request, user_id: int, principal: Admin) -> bool:
    ctx = context_of(request)
    actor = actor_of(request, principal)
    in_transaction(ctx, lambda s: accounts.set_blocked(s, user_id, True, actor), write=True)
    return True


@router.post("/api/v4/users/{user_id}/unblock", status_code=201, summary="Unblock (admin)")
def unblock_user(request: Request, user_id: int, principal: Admin) -> bool:
    ctx = context_of(request)
    actor = actor_of(request, principal)
    in_transaction(ctx, lambda s: accounts.set_blocked(s, user_id, False, actor), write=True)
    return True


@router.delete(
    "/api/v4/users/{user_id}", status_code=204, summary="Delete a user and their tokens (admin)"
)
def delete_user(
    request: Request,
    user_id: int,
    principal: Admin,
    hard_delete: Annotated[
        bool,
        Query(description="Also delete the user's usage records (else kept, as a deleted user)."),
    ] = False,
) -> Response:
    ctx = context_of(request)
    actor = actor_of(request, principal)
    in_transaction(
        ctx,
        lambda s: accounts.delete_user(
            s, user_id, actor, salt=ctx.user_id_salt, hard_delete=hard_delete
        ),
        write=True,
    )
    return Response(status_code=204)


@router.post(
    "/api/v4/users/{user_id}/personal_access_tokens",
    status_code=201,
    summary="Create a personal access token for a user (admin); the token is shown once",
)
def create_token(
    request: Request, user_id: int, body: TokenCreate, principal: Admin
) -> dict[str, Any]:
    ctx = context_of(request)
    actor = actor_of(request, principal)

    def work(session: Session) -> dict[str, Any]:
        row, created = accounts.create_personal_access_token(
            session,
            user_id,
            name=body.name,
            scopes=body.scopes,
            expires_at=body.expires_at,
            actor=actor,
            max_lifetime_days=ctx.settings.instance.pat_max_lifetime_days,
        )
        return {**accounts.token_view(row), "token": created.plaintext}

    response: dict[str, Any] = in_transaction(ctx, work, write=True)
    return response


@router.get("/api/v4/personal_access_tokens", summary="List personal access tokens")
def list_tokens(
    request: Request,
    response: Response,
    principal: ApiReader,
    page: Paging,
    user_id: Annotated[int | None, Query(description="Admins: only this user's tokens.")] = None,
    state: Annotated[
        Literal["active", "inactive"] | None, Query(description="active or inactive.")
    ] = None,
    revoked: Annotated[bool | None, Query(description="Only (not) revoked tokens.")] = None,
) -> list[dict[str, Any]]:
    ctx = context_of(request)
    if not principal.is_admin:
        if user_id is not None and user_id != principal.user_id:
            raise InstanceAPIError(403, "only administrators may list other users' tokens")
        user_id = principal.user_id

    def work(session: Session) -> list[dict[str, Any]]:
        rows, total = accounts.list_tokens(
            session,
            user_id=user_id,
            state=state,
            revoked=revoked,
            offset=page.offset,
            limit=page.per_page,
        )
        set_headers(request, response, page, total)
        return [accounts.token_view(row) for row in rows]

    return in_transaction(ctx, work)


def _token_id(principal: Principal, token_ref: str) -> int:
    if token_ref == "self":  # noqa: S105 - GitLab's alias for the caller's token
        return principal.token_id
    # A number too long to be an id (int() refuses over 4300 digits) names no token either.
    if not token_ref.isdigit() or len(token_ref) > len(str(MAX_ID)):
        raise InstanceAPIError(404, f"personal access token {token_ref[:64]!r} does not exist")
    return int(token_ref)


def _own_or_admin(principal: Principal, owner_id: int, token_id: int) -> None:
    if not principal.is_admin and owner_id != principal.user_id:
        # Like GitLab: someone else's token is "not found", not "forbidden".
        raise InstanceAPIError(404, f"personal access token {token_id} does not exist")


@router.get("/api/v4/personal_access_tokens/{token_ref}", summary="Show a token (or 'self')")
def show_token(request: Request, token_ref: str, principal: ApiReader) -> dict[str, Any]:
    ctx = context_of(request)
    token_id = _token_id(principal, token_ref)

    def work(session: Session) -> dict[str, Any]:
        token = accounts.get_token(session, token_id)
        _own_or_admin(principal, token.user_id, token_id)
        return accounts.token_view(token)

    return in_transaction(ctx, work)


@router.delete(
    "/api/v4/personal_access_tokens/{token_ref}",
    status_code=204,
    summary="Revoke a token (or 'self'); effective at once on every replica",
)
def revoke_token(request: Request, token_ref: str, principal: ApiUser) -> Response:
    ctx = context_of(request)
    token_id = _token_id(principal, token_ref)
    actor = actor_of(request, principal)

    def work(session: Session) -> None:
        token = accounts.get_token(session, token_id)
        _own_or_admin(principal, token.user_id, token_id)
        accounts.revoke_token(session, token_id, actor)

    in_transaction(ctx, work, write=True)
    return Response(status_code=204)
