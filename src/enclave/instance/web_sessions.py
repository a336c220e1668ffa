"""Server-side web UI sessions.

The cookie holds 32 random bytes; the database holds only their SHA-256, so a copy of the
database signs no one in. A session ends after ``web_session_idle_s`` without use, at
``web_session_max_s`` after sign-in, at sign-out, or when its user is blocked or deleted.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from enclave.config import InstanceSettings
from enclave.instance.db import utcnow
from enclave.instance.db.models import User, WebSession

COOKIE_NAME = "enclave_session"
# Session ids are 43 characters of base64url; anything much longer is not ours.
MAX_COOKIE_CHARS = 128
# Refresh last_seen_at at most this often: one write per minute, not per page view.
TOUCH_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class SignedIn:
    """Who a valid session belongs to, and its form token."""

    session_id: int
    user_id: int
    username: str
    name: str
    is_admin: bool
    csrf_token: str = field(repr=False)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()


def start(session: Session, user: User, settings: InstanceSettings) -> str:
    """A new session for ``user``; returns the cookie value (shown to no one else)."""
    value = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        WebSession(
            session_digest=_digest(value),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(seconds=settings.web_session_max_s),
        )
    )
    # Old, expired sessions of anyone go at each sign-in: the table stays small.
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    session.flush()
    return value


def resume(
    session: Session, cookie: str | None, settings: InstanceSettings, now: datetime | None = None
) -> SignedIn | None:
    """The session behind ``cookie`` if it is still valid (and touches it), else None."""
    if not cookie or len(cookie) > MAX_COOKIE_CHARS:
        return None
    now = now or utcnow()
    row = session.scalar(select(WebSession).where(WebSession.session_digest == _digest(cookie)))
    if row is None:
        return None
    user = session.get(User, row.user_id)
    idle_limit = row.last_seen_at + timedelta(seconds=settings.web_session_idle_s)
    if user is None or user.blocked or now >= row.expires_at or now >= idle_limit:
        session.delete(row)
        return None
    if now - row.last_seen_at >= TOUCH_RESOLUTION:
        row.last_seen_at = now
    return SignedIn(row.id, user.id, user.username, user.name, user.is_admin, row.csrf_token)


def end(session: Session, cookie: str | None) -> None:
    """Sign out: the session behind ``cookie`` is deleted (nothing if there is none)."""
    if cookie and len(cookie) <= MAX_COOKIE_CHARS:
        session.execute(delete(WebSession).where(WebSession.session_digest == _digest(cookie)))


def csrf_matches(expected: str, presented: str | None) -> bool:
    """Constant-time comparison of the session's form token with the one a form sent."""
    if not presented:
        return False
    return secrets.compare_digest(expected.encode(), presented.encode("utf-8", "replace"))
