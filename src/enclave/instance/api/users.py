"""``GET /api/v4/user``: the authenticated user, in GitLab's shape (clients use it to check a
token and show who is signed in)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from enclave.instance.api.deps import authenticated, context_of
from enclave.instance.pats import READ_USER_SCOPES, Principal

router = APIRouter()


def _iso(principal: Principal) -> str:
    # GitLab's API format: UTC with milliseconds and a Z.
    return principal.created_at.strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{principal.created_at.microsecond // 1000:03d}Z"
    )


@router.get("/api/v4/user")
async def current_user(
    request: Request, principal: Annotated[Principal, Depends(authenticated(READ_USER_SCOPES))]
) -> dict[str, Any]:
    issuer = context_of(request).issuer
    return {
        "id": principal.user_id,
        "username": principal.username,
        "name": principal.name,
        "state": "active",  # blocked users never authenticate
        "locked": False,
        "avatar_url": None,
        "web_url": f"{issuer}/{principal.username}",
        "created_at": _iso(principal),
        "bio": "",
        "public_email": None,
        "email": principal.email,
        "is_admin": principal.is_admin,
        "bot": False,
        "external": False,
        "two_factor_enabled": False,
        "private_profile": False,
    }
