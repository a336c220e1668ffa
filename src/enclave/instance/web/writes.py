"""Page actions that write: run off the event loop in a write transaction, a missing object
shown as the 404 page; and the personal access token actions that the user's own settings and
the admin's user page share (the same form, for a different owner)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from enclave.instance import accounts
from enclave.instance.admin_errors import NotFoundError
from enclave.instance.api.deps import context_of, in_transaction
from enclave.instance.context import InstanceContext
from enclave.instance.web.errors import WebError
from enclave.instance.web.session_auth import actor_of, first, form_list, form_of
from enclave.instance.web_sessions import SignedIn

T = TypeVar("T")


async def write(ctx: InstanceContext, work: Callable[[Session], T]) -> T:
    """``work`` in a write transaction; its other AdminErrors go to the caller (a form error)."""
    return await run_in_threadpool(in_transaction, ctx, work, write=True)


async def write_or_404(ctx: InstanceContext, work: Callable[[Session], T]) -> T:
    """``work`` in a write transaction; an object that does not exist is the 404 page."""
    try:
        return await write(ctx, work)
    except NotFoundError as exc:
        raise WebError(404, exc.message) from None


async def create_token(request: Request, user: SignedIn, owner_id: int) -> str:
    """A token for ``owner_id`` from the posted form; its plaintext (shown once).

    Raises AdminError when the form is refused (the caller shows the form again).
    """
    raw = await request.body()  # form_list reads repeated fields (scopes) from the body
    form = await form_of(request, user)

    def work(session: Session) -> str:
        _, created = accounts.create_personal_access_token(
            session,
            owner_id,
            name=first(form, "name"),
            scopes=form_list(raw, "scopes"),
            expires_at=first(form, "expires_at") or None,
            actor=actor_of(request, user),
        )
        return created.plaintext

    return await write(context_of(request), work)


async def revoke_token(request: Request, user: SignedIn, owner_id: int, token_id: int) -> None:
    """Revoke ``owner_id``'s token; someone else's token is as if it did not exist (404)."""
    await form_of(request, user)

    def work(session: Session) -> None:
        token = accounts.get_token(session, token_id)
        if token.user_id != owner_id:
            raise NotFoundError(f"personal access token {token_id} does not exist", field="id")
        accounts.revoke_token(session, token_id, actor_of(request, user))

    await write_or_404(context_of(request), work)
