"""Personal access tokens: create, read from request headers, authenticate.

A token is ``glpat-`` + 20 random bytes (URL-safe base64, 27 characters): GitLab's format, and
33 characters in all, because GitLab's editor clients (the Language Server) take a token of 42
characters or more for an OAuth token and check it at ``/oauth/token/info`` instead of
``/api/v4/personal_access_tokens/self``. 160 random bits, of which the 6 characters shown as the
token's prefix reveal 36: 124 stay secret. Tokens made before (``enclpat-`` + 32 random bytes,
51 characters) keep working until they expire or are revoked. Only its SHA-256 digest is stored:
the token is high-entropy random, so a fast hash is enough (no salt, no slow KDF — there is
nothing to brute-force), and it allows an indexed lookup by digest. GitLab stores its tokens
the same way. The plaintext exists once, in the hands of whoever created it.

Authentication checks, in order: token present and well-formed, known, not revoked, not expired,
user not blocked, and one of the scopes the endpoint accepts. ``last_used_at`` is written at
most once a minute per token, in its own short transaction, so the hot path is read-only;
uses served from the instance's token cache are written in the background (``caches.py``).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from enclave.common.logging import get_logger
from enclave.instance.db.base import utcnow
from enclave.instance.db.engine import transaction
from enclave.instance.db.models import PersonalAccessToken, User

log = get_logger(__name__)

TOKEN_PREFIX = "glpat-"  # noqa: S105 - the public prefix (GitLab's)
TOKEN_RANDOM_BYTES = 20
LEGACY_TOKEN_PREFIX = "enclpat-"  # noqa: S105 - tokens made before; still accepted
TOKEN_PREFIXES = (TOKEN_PREFIX, LEGACY_TOKEN_PREFIX)
# GitLab's clients treat a token of this length or more as OAuth (see the module docstring).
OAUTH_TOKEN_MIN_LENGTH = 42
_MAX_TOKEN_LENGTH = 256  # anything longer is not ours; refuse before hashing or querying
DISPLAY_PREFIX_CHARS = 12

# Scopes (GitLab's names). AI endpoints accept ``api`` or ``ai_features``.
SCOPE_API = "api"
SCOPE_READ_API = "read_api"
SCOPE_READ_USER = "read_user"
SCOPE_AI_FEATURES = "ai_features"
KNOWN_SCOPES = frozenset({SCOPE_API, SCOPE_READ_API, SCOPE_READ_USER, SCOPE_AI_FEATURES})
AI_SCOPES = frozenset({SCOPE_API, SCOPE_AI_FEATURES})
READ_USER_SCOPES = frozenset({SCOPE_API, SCOPE_READ_API, SCOPE_READ_USER})

LAST_USED_RESOLUTION = timedelta(minutes=1)

AuthFailure = Literal["missing", "malformed", "unknown", "revoked", "expired", "blocked"]


class AuthError(Exception):
    """The request is not authenticated (HTTP 401); ``reason`` is for logs only."""

    def __init__(self, reason: AuthFailure) -> None:
        super().__init__(reason)
        self.reason: AuthFailure = reason


class InsufficientScopeError(Exception):
    """The token is valid but lacks every scope the endpoint accepts (HTTP 403)."""

    def __init__(self, accepted: Iterable[str]) -> None:
        self.accepted = tuple(sorted(accepted))
        super().__init__(f"token needs one of the scopes: {', '.join(self.accepted)}")


@dataclass(frozen=True)
class CreatedToken:
    """A new token: ``plaintext`` is shown once and never stored."""

    id: int
    name: str
    prefix: str
    scopes: tuple[str, ...]
    expires_at: datetime | None
    plaintext: str = field(repr=False)


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: the user and the token they used."""

    user_id: int
    username: str
    name: str
    email: str
    is_admin: bool
    created_at: datetime
    token_id: int
    scopes: tuple[str, ...]
    # Whether last_used_at is older than LAST_USED_RESOLUTION (the caller then touches it).
    stale_last_used: bool = False
    # When the token expires (None: never): a cached principal is checked against it on use.
    token_expires_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.token_expires_at is not None and self.token_expires_at <= now


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_RANDOM_BYTES)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session,
    user: User,
    *,
    name: str,
    scopes: Iterable[str],
    expires_at: datetime | None = None,
) -> CreatedToken:
    """Add a token for ``user`` to ``session`` and return its plaintext (once)."""
    wanted = tuple(sorted(set(scopes)))
    unknown = set(wanted) - KNOWN_SCOPES
    if not wanted or unknown:
        raise ValueError(
            f"scopes must be a non-empty subset of {sorted(KNOWN_SCOPES)}; got {list(wanted)}"
        )
    plaintext = generate_token()
    record = PersonalAccessToken(
        user_id=user.id,
        name=name,
        token_digest=token_digest(plaintext),
        token_prefix=plaintext[:DISPLAY_PREFIX_CHARS],
        scopes=list(wanted),
        expires_at=expires_at,
        revoked=False,
    )
    session.add(record)
    session.flush()
    return CreatedToken(
        record.id, name, record.token_prefix, wanted, expires_at, plaintext=plaintext
    )


def token_from_headers(private_token: str | None, authorization: str | None) -> str | None:
    """The token from ``PRIVATE-TOKEN`` or ``Authorization: Bearer`` (GitLab's order)."""
    if private_token and private_token.strip():
        return private_token.strip()
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return None


def authenticate(
    session: Session,
    token: str | None,
    *,
    accepted_scopes: Iterable[str],
    now: datetime | None = None,
) -> Principal:
    """Check ``token``; raise :class:`AuthError` or :class:`InsufficientScopeError`."""
    principal = verify(session, token, now=now)
    check_scopes(principal, accepted_scopes)
    return principal


def well_formed(token: str | None) -> bool:
    """Whether ``token`` could be one of ours (checked before hashing or querying)."""
    return (
        token is not None and token.startswith(TOKEN_PREFIXES) and len(token) <= _MAX_TOKEN_LENGTH
    )


def verify(session: Session, token: str | None, *, now: datetime | None = None) -> Principal:
    """The caller ``token`` belongs to, whatever its scopes; raise :class:`AuthError`."""
    if not token:
        raise AuthError("missing")
    if not well_formed(token):
        raise AuthError("malformed")
    row = session.execute(
        select(PersonalAccessToken, User)
        .join(User, PersonalAccessToken.user_id == User.id)
        .where(PersonalAccessToken.token_digest == token_digest(token))
    ).one_or_none()
    if row is None:
        raise AuthError("unknown")
    pat, user = row
    now = now or utcnow()
    if pat.revoked:
        raise AuthError("revoked")
    if pat.expires_at is not None and pat.expires_at <= now:
        raise AuthError("expired")
    if user.blocked:
        raise AuthError("blocked")
    stale = pat.last_used_at is None or now - pat.last_used_at >= LAST_USED_RESOLUTION
    return Principal(
        user_id=user.id,
        username=user.username,
        name=user.name,
        email=user.email,
        is_admin=user.is_admin,
        created_at=user.created_at,
        token_id=pat.id,
        scopes=tuple(pat.scopes),
        stale_last_used=stale,
        token_expires_at=pat.expires_at,
    )


def check_scopes(principal: Principal, accepted_scopes: Iterable[str]) -> None:
    """Raise :class:`InsufficientScopeError` unless the token has one of ``accepted_scopes``."""
    accepted = frozenset(accepted_scopes)
    if not accepted.intersection(principal.scopes):
        raise InsufficientScopeError(accepted)


def touch_last_used(session: Session, token_id: int, now: datetime | None = None) -> bool:
    """Set ``last_used_at`` unless another request did within the last minute."""
    now = now or utcnow()
    result = session.execute(
        update(PersonalAccessToken)
        .where(PersonalAccessToken.id == token_id)
        .where(
            or_(
                PersonalAccessToken.last_used_at.is_(None),
                PersonalAccessToken.last_used_at <= now - LAST_USED_RESOLUTION,
            )
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def touch_many(sessions: sessionmaker[Session], token_ids: Iterable[int]) -> None:
    """Touch ``last_used_at`` of every token in ``token_ids`` in one write transaction: the
    uses that cached authentications recorded in memory (``caches.LastUsedBatch``).

    Blocking: call it from a thread pool (the caches' background task does).
    """
    now = utcnow()
    with transaction(sessions, write=True) as session:
        for token_id in sorted(token_ids):
            touch_last_used(session, token_id, now)


def record_token_minting(sessions: sessionmaker[Session], token_id: int) -> None:
    """Make sure ``last_used_at`` covers a token being made from this PAT now.

    The revocation list the gateway reads (api/gateway_routes.py) keeps a revoked PAT or a
    blocked user only while a PAT was used recently, so a token must never be minted without
    its use recorded: unlike :func:`authenticate_request`'s best-effort touch, a database error
    here propagates (503) and no token is made. Blocking: call it from a thread pool.
    """
    with sessions() as session, session.begin():
        touch_last_used(session, token_id)


def authenticate_request(
    sessions: sessionmaker[Session],
    token: str | None,
    *,
    accepted_scopes: Iterable[str],
    now: datetime | None = None,
) -> Principal:
    """:func:`verify_request`, then the scope check.

    Blocking (database I/O): call it from a thread pool, not the event loop.
    """
    principal = verify_request(sessions, token, now=now)
    check_scopes(principal, accepted_scopes)
    return principal


def verify_request(
    sessions: sessionmaker[Session], token: str | None, *, now: datetime | None = None
) -> Principal:
    """Verify in a read-only transaction, then touch ``last_used_at`` if it is stale.

    Blocking (database I/O): call it from a thread pool, not the event loop.
    """
    now = now or utcnow()
    with transaction(sessions) as session:
        principal = verify(session, token, now=now)
    if principal.stale_last_used:
        try:
            with transaction(sessions, write=True) as session:
                touch_last_used(session, principal.token_id, now)
        except OperationalError as exc:
            # Best effort: a busy database must not turn a valid request into an error.
            log.warning(
                "pat_last_used_not_updated",
                token_id=principal.token_id,
                error=type(exc).__name__,
            )
    return principal
