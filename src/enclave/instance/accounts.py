"""Users and personal access tokens: the administration side (GitLab's Users and PAT APIs).

Authentication itself lives in :mod:`enclave.instance.pats`; it reads the token row on every
request, so a revocation or an expiry takes effect at once on every replica (there is no cache
to go stale).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from sqlalchemy import Select, delete, func, or_, select
from sqlalchemy.orm import Session, joinedload

from enclave.instance import audit
from enclave.instance.actor import Actor
from enclave.instance.admin_errors import ConflictError, InvalidInputError, NotFoundError
from enclave.instance.db.base import utcnow
from enclave.instance.db.models import (
    MAX_ID,
    AiUsage,
    DeletedUser,
    PersonalAccessToken,
    User,
    id_can_exist,
)
from enclave.instance.gateway_client import pseudonymous_user_id
from enclave.instance.pats import KNOWN_SCOPES, CreatedToken, create_token

# GitLab's username rule, simplified: letters, digits, _ . -; not starting with - or .
_USERNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# GitLab's default maximum lifetime of a PAT, and the expiry a token gets when none is given
# (instance.pat_max_lifetime_days changes it).
DEFAULT_MAX_TOKEN_LIFETIME_DAYS = 365
TokenState = Literal["active", "inactive"]


# --- users ----------------------------------------------------------------------------------


def gitlab_time(moment: datetime | None) -> str | None:
    """GitLab's API format: UTC, milliseconds, Z."""
    if moment is None:
        return None
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def user_view(user: User, issuer: str, *, full: bool = True) -> dict[str, Any]:
    """GitLab's user entity; ``full`` adds what only admins (and the user) see."""
    view: dict[str, Any] = {
        "id": user.id,
        "username": user.username,
        "name": user.name,
        "state": user.state,
        "locked": False,
        "avatar_url": None,
        "web_url": f"{issuer}/{user.username}",
    }
    if full:
        view.update(
            {
                "created_at": gitlab_time(user.created_at),
                "bio": "",
                "public_email": None,
                "email": user.email,
                "is_admin": user.is_admin,
                "bot": False,
                "external": False,
                "two_factor_enabled": False,
                "private_profile": False,
            }
        )
    return view


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id) if id_can_exist(user_id) else None
    if user is None:
        raise NotFoundError(f"user {user_id} does not exist", field="id")
    return user


def find_user(session: Session, ref: int | str) -> User:
    """A user by id or username."""
    if isinstance(ref, int) or (str(ref).isdigit() and len(str(ref)) <= len(str(MAX_ID))):
        user = session.get(User, int(ref)) if id_can_exist(int(ref)) else None
        if user is not None:
            return user
    user = session.scalar(select(User).where(User.username == str(ref)))
    if user is None:
        raise NotFoundError(f"no user has the username or id {ref!r}", field="username")
    return user


def create_user(
    session: Session,
    *,
    username: Any,
    name: Any,
    email: Any,
    is_admin: Any = False,
    actor: Actor,
) -> User:
    if not isinstance(username, str) or not username.strip():
        raise InvalidInputError("username is missing", field="username")
    username = username.strip()
    if not _USERNAME.match(username):
        raise InvalidInputError(
            f"username {username!r} is invalid: use letters, digits, '_', '.' and '-', start "
            "with a letter, digit or '_', at most 255 characters",
            field="username",
        )
    if name is None or (isinstance(name, str) and not name.strip()):
        name = username
    if not isinstance(name, str) or len(name) > 255:
        raise InvalidInputError("name must be text of at most 255 characters", field="name")
    if email is None or (isinstance(email, str) and not email.strip()):
        raise InvalidInputError(
            "email is missing: give the user's e-mail address (name@domain.tld)", field="email"
        )
    if not isinstance(email, str) or not _EMAIL.match(email.strip()) or len(email) > 255:
        raise InvalidInputError(
            f"email {email!r} is not a valid e-mail address (name@domain.tld)", field="email"
        )
    email = email.strip()
    if not isinstance(is_admin, bool):
        raise InvalidInputError("admin must be true or false", field="admin")
    if session.scalar(select(User.id).where(func.lower(User.username) == username.lower())):
        raise ConflictError("Username has already been taken", field="username")
    if session.scalar(select(User.id).where(func.lower(User.email) == email.lower())):
        raise ConflictError("Email has already been taken", field="email")
    user = User(username=username, name=name.strip(), email=email, is_admin=is_admin)
    session.add(user)
    session.flush()
    audit.record(
        session,
        audit.USER_CREATED,
        f"user/{user.id}",
        {"username": user.username, "is_admin": user.is_admin},
        actor=actor,
    )
    return user


def set_blocked(session: Session, user_id: int, blocked: bool, actor: Actor) -> User:
    user = get_user(session, user_id)
    if user.blocked != blocked:
        if blocked and user.is_admin and actor.user_id == user.id:
            raise InvalidInputError("administrators cannot block themselves", field="id")
        user.blocked = blocked
        audit.record(
            session,
            audit.USER_BLOCKED if blocked else audit.USER_UNBLOCKED,
            f"user/{user.id}",
            {"username": user.username},
            actor=actor,
        )
        session.flush()
    return user


def delete_user(
    session: Session, user_id: int, actor: Actor, *, salt: bytes, hard_delete: bool = False
) -> User:
    """Delete a user and their tokens (GitLab's ``DELETE /users/:id``).

    Refused for oneself and for the last administrator. Audit events stay (their author name
    is kept); the user's usage stays as a deleted user's unless ``hard_delete``, which removes
    it too (GitLab's "contributions" of the user). The gateway keeps refusing the tokens made
    for the user (see :class:`DeletedUser`).
    """
    user = get_user(session, user_id)
    if actor.user_id == user.id:
        raise InvalidInputError(
            "you cannot delete yourself; ask another administrator to do it", field="id"
        )
    if user.is_admin:
        admins = session.scalar(select(func.count()).select_from(User).where(User.is_admin))
        if (admins or 0) <= 1:
            raise ConflictError(
                f"{user.username} is the last administrator; make another user an "
                "administrator first",
                field="id",
            )
    pat_ids = list(
        session.scalars(
            select(PersonalAccessToken.id).where(PersonalAccessToken.user_id == user.id)
        )
    )
    session.add(DeletedUser(global_user_id=pseudonymous_user_id(salt, user.id), pat_ids=pat_ids))
    if hard_delete:
        session.execute(delete(AiUsage).where(AiUsage.user_id == user.id))
    audit.record(
        session,
        audit.USER_DELETED,
        f"user/{user.id}",
        {"username": user.username, "hard_delete": hard_delete, "tokens": len(pat_ids)},
        actor=actor,
    )
    session.delete(user)
    session.flush()
    return user


def list_users(
    session: Session,
    *,
    offset: int = 0,
    limit: int | None = None,
    search: str | None = None,
    username: str | None = None,
    search_emails: bool = False,
) -> tuple[list[User], int]:
    """Users by id; ``search`` matches part of the username or name, and of the e-mail address
    only with ``search_emails`` (for administrators)."""
    query: Select[tuple[User]] = select(User)
    if username:
        query = query.where(func.lower(User.username) == username.lower())
    if search:
        pattern = f"%{search.lower()}%"
        fields = [User.username, User.name, *([User.email] if search_emails else [])]
        query = query.where(or_(*(func.lower(field).like(pattern) for field in fields)))
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    query = query.order_by(User.id).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query)), total


# --- personal access tokens -----------------------------------------------------------------


def parse_expiry(
    value: Any,
    *,
    now: datetime | None = None,
    max_days: int = DEFAULT_MAX_TOKEN_LIFETIME_DAYS,
) -> datetime:
    """GitLab's ``expires_at`` (a date, YYYY-MM-DD): the token stops working at 00:00 UTC.

    None (not given) is the longest lifetime allowed, ``max_days``, as GitLab: no token lives
    for ever unless someone chose it.
    """
    now = now or utcnow()
    if value is None or value == "":
        day = (now + timedelta(days=max_days)).date()
        return datetime.combine(day, time(0), tzinfo=UTC)
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        try:
            day = value if isinstance(value, date) else date.fromisoformat(str(value))
        except ValueError:
            raise InvalidInputError(
                f"expires_at {value!r} is not a date; use YYYY-MM-DD", field="expires_at"
            ) from None
        moment = datetime.combine(day, time(0), tzinfo=UTC)
    if moment <= now:
        raise InvalidInputError(
            f"expires_at {moment.date().isoformat()} is not in the future", field="expires_at"
        )
    if moment > now + timedelta(days=max_days):
        raise InvalidInputError(
            f"expires_at must be within {max_days} days from today (the instance's maximum "
            "lifetime of a personal access token, instance.pat_max_lifetime_days)",
            field="expires_at",
        )
    return moment


def parse_scopes(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [part for part in re.split(r"[\s,]+", value) if part]
    if not isinstance(value, list | tuple) or not value:
        raise InvalidInputError(
            f"scopes is missing: give one or more of {', '.join(sorted(KNOWN_SCOPES))}",
            field="scopes",
        )
    scopes = [str(scope).strip() for scope in value]
    unknown = sorted(set(scopes) - KNOWN_SCOPES)
    if unknown:
        raise InvalidInputError(
            f"scopes {', '.join(unknown)} are unknown; use {', '.join(sorted(KNOWN_SCOPES))}",
            field="scopes",
        )
    return sorted(set(scopes))


def token_view(token: PersonalAccessToken, now: datetime | None = None) -> dict[str, Any]:
    """GitLab's personal access token entity (never the token itself)."""
    now = now or utcnow()
    expired = token.expires_at is not None and token.expires_at <= now
    return {
        "id": token.id,
        "name": token.name,
        "revoked": token.revoked,
        "created_at": gitlab_time(token.created_at),
        "description": None,
        "scopes": list(token.scopes),
        "user_id": token.user_id,
        "last_used_at": gitlab_time(token.last_used_at),
        "active": not token.revoked and not expired,
        "expires_at": token.expires_at.date().isoformat() if token.expires_at else None,
        "token_prefix": token.token_prefix,
    }


def create_personal_access_token(
    session: Session,
    user_id: int,
    *,
    name: Any,
    scopes: Any,
    expires_at: Any = None,
    actor: Actor,
    max_lifetime_days: int = DEFAULT_MAX_TOKEN_LIFETIME_DAYS,
) -> tuple[PersonalAccessToken, CreatedToken]:
    user = get_user(session, user_id)
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(
            "name is missing: name the token after where it is used", field="name"
        )
    if len(name) > 255:
        raise InvalidInputError("name is too long (at most 255 characters)", field="name")
    scope_list = parse_scopes(scopes)
    expiry = parse_expiry(expires_at, max_days=max_lifetime_days)
    created = create_token(session, user, name=name.strip(), scopes=scope_list, expires_at=expiry)
    audit.record(
        session,
        audit.PERSONAL_ACCESS_TOKEN_CREATED,
        f"personal_access_token/{created.id}",
        {
            "user": user.username,
            "name": created.name,
            "scopes": list(created.scopes),
            "expires_at": expiry.date().isoformat(),
        },
        actor=actor,
    )
    row = session.get(PersonalAccessToken, created.id)
    assert row is not None
    return row, created


def get_token(session: Session, token_id: int) -> PersonalAccessToken:
    token = (
        session.get(PersonalAccessToken, token_id, options=[joinedload(PersonalAccessToken.user)])
        if id_can_exist(token_id)
        else None
    )
    if token is None:
        raise NotFoundError(f"personal access token {token_id} does not exist", field="id")
    return token


def revoke_token(session: Session, token_id: int, actor: Actor) -> PersonalAccessToken:
    """Revoke; idempotent (revoking a revoked token changes nothing and records nothing)."""
    token = get_token(session, token_id)
    if not token.revoked:
        token.revoked = True
        audit.record(
            session,
            audit.PERSONAL_ACCESS_TOKEN_REVOKED,
            f"personal_access_token/{token.id}",
            {"user": token.user.username, "name": token.name},
            actor=actor,
        )
        session.flush()
    return token


def list_tokens(
    session: Session,
    *,
    user_id: int | None = None,
    state: TokenState | None = None,
    revoked: bool | None = None,
    offset: int = 0,
    limit: int | None = None,
    now: datetime | None = None,
) -> tuple[list[PersonalAccessToken], int]:
    now = now or utcnow()
    query: Select[tuple[PersonalAccessToken]] = select(PersonalAccessToken)
    if user_id is not None:
        if not id_can_exist(user_id):
            return [], 0  # no such user, so no tokens
        query = query.where(PersonalAccessToken.user_id == user_id)
    if revoked is not None:
        query = query.where(PersonalAccessToken.revoked.is_(revoked))
    not_expired = or_(
        PersonalAccessToken.expires_at.is_(None), PersonalAccessToken.expires_at > now
    )
    if state == "active":
        query = query.where(PersonalAccessToken.revoked.is_(False), not_expired)
    elif state == "inactive":
        query = query.where(or_(PersonalAccessToken.revoked.is_(True), ~not_expired))
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    query = query.order_by(PersonalAccessToken.id).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query)), total
