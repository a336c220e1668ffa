"""Web UI passwords: argon2id hashes, checks and the sign-in lookup.

Only the PHC string (``$argon2id$v=19$m=…``) is stored. Unknown users are checked against a
dummy hash, so an answer takes as long whether the username exists or not.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from enclave.instance import audit
from enclave.instance.actor import Actor
from enclave.instance.admin_errors import InvalidInputError
from enclave.instance.db.models import User, WebSession

MIN_PASSWORD_CHARS = 12
# argon2 hashes whatever it is given; a bound keeps a huge "password" from costing CPU.
MAX_PASSWORD_CHARS = 256

# argon2-cffi's defaults are RFC 9106's second recommendation (argon2id, 64 MiB, t=3).
_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("enclave: no such user, same work")


def validate_password(password: str, username: str) -> None:
    """400-style :class:`InvalidInputError` for a password too weak to set."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidInputError(
            f"the password is too short: use at least {MIN_PASSWORD_CHARS} characters",
            field="password",
        )
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidInputError(
            f"the password is too long: use at most {MAX_PASSWORD_CHARS} characters",
            field="password",
        )
    if username.lower() in password.lower():
        raise InvalidInputError("the password must not contain the username", field="password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def set_password(session: Session, user: User, password: str, actor: Actor) -> None:
    """Validate and store ``password`` for ``user`` (audited, never the password itself).

    The user's web sessions end: whoever knew the old password is signed out."""
    validate_password(password, user.username)
    user.password_hash = hash_password(password)
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))
    session.flush()
    audit.record(
        session,
        audit.USER_PASSWORD_CHANGED,
        f"user/{user.id}",
        {"username": user.username},
        actor=actor,
    )


def _matches(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def check_sign_in(session: Session, username: str, password: str) -> User | None:
    """The active user with this username and password, or None (whatever was wrong)."""
    if not username or len(username) > 255 or len(password) > MAX_PASSWORD_CHARS:
        _matches(_DUMMY_HASH, password[:MAX_PASSWORD_CHARS])
        return None
    user = session.scalar(select(User).where(User.username == username))
    if user is None or user.password_hash is None:
        _matches(_DUMMY_HASH, password)
        return None
    if not _matches(user.password_hash, password) or user.blocked:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return user
