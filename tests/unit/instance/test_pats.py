"""Personal access tokens: creation, storage as digests, header parsing, every refusal."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from enclave.instance.db import (
    PersonalAccessToken,
    User,
    make_engine,
    make_session_factory,
    upgrade,
    utcnow,
)
from enclave.instance.pats import (
    AI_SCOPES,
    AuthError,
    CreatedToken,
    InsufficientScopeError,
    Principal,
    authenticate,
    authenticate_request,
    create_token,
    token_from_headers,
)
from tests.unit.instance.conftest import Backend


@pytest.fixture()
def sessions(tmp_path: Path, db_backend: Backend) -> Iterator[sessionmaker[Session]]:
    url = db_backend.new_database_url(tmp_path)
    upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


def new_token(
    sessions: sessionmaker[Session],
    *,
    scopes: tuple[str, ...] = ("ai_features",),
    extra: dict[str, object] | None = None,
) -> CreatedToken:
    with sessions() as session, session.begin():
        user = User(username="alice", name="Alice", email="alice@example.com")
        session.add(user)
        session.flush()
        created = create_token(session, user, name="ide", scopes=scopes)
        record = session.get(PersonalAccessToken, created.id)
        assert record is not None
        for attribute, value in (extra or {}).items():
            if attribute == "blocked":
                user.blocked = bool(value)
            else:
                setattr(record, attribute, value)
        return created


def auth(sessions: sessionmaker[Session], token: str | None) -> Principal:
    with sessions() as session, session.begin():
        return authenticate(session, token, accepted_scopes=AI_SCOPES)


def test_token_format_and_storage(sessions: sessionmaker[Session]) -> None:
    created = new_token(sessions)
    # GitLab's format, short enough that editors check it as a PAT (< 42 characters).
    assert created.plaintext.startswith("glpat-")
    assert len(created.plaintext) == len("glpat-") + 27 < 42  # 20 random bytes, base64url
    assert created.plaintext not in repr(created)
    with sessions() as session:
        record = session.scalars(select(PersonalAccessToken)).one()
        assert record.token_digest == hashlib.sha256(created.plaintext.encode()).hexdigest()
        assert record.token_prefix == created.plaintext[:12]
        assert record.scopes == ["ai_features"]
        assert created.plaintext not in {record.token_digest, record.token_prefix, record.name}


def test_unknown_scopes_are_refused(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(ValueError, match="scopes"):
        new_token(sessions, scopes=("sudo",))


@pytest.mark.parametrize(
    ("private_token", "authorization", "expected"),
    [
        ("enclpat-a", None, "enclpat-a"),
        (None, "Bearer enclpat-b", "enclpat-b"),
        (None, "bearer   enclpat-c ", "enclpat-c"),
        ("enclpat-a", "Bearer enclpat-b", "enclpat-a"),  # GitLab checks PRIVATE-TOKEN first
        (None, "Basic cm9vdDpwYXNzd29yZA==", None),
        (None, "Bearer ", None),
        ("  ", None, None),
        (None, None, None),
    ],
)
def test_token_from_headers(
    private_token: str | None, authorization: str | None, expected: str | None
) -> None:
    assert token_from_headers(private_token, authorization) == expected


def test_valid_token_authenticates(sessions: sessionmaker[Session]) -> None:
    created = new_token(sessions)
    principal = auth(sessions, created.plaintext)
    assert principal.username == "alice"
    assert principal.token_id == created.id


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"revoked": True}, "revoked"),
        ({"expires_at": utcnow() - timedelta(seconds=1)}, "expired"),
        ({"blocked": True}, "blocked"),
    ],
)
def test_refusals(sessions: sessionmaker[Session], extra: dict[str, object], reason: str) -> None:
    created = new_token(sessions, extra=extra)
    with pytest.raises(AuthError) as caught:
        auth(sessions, created.plaintext)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing"),
        ("ghp_not-ours", "malformed"),
        ("glpat-" + "x" * 300, "malformed"),
        ("glpat-unknown-unknown-unknown", "unknown"),
        ("enclpat-unknown-unknown-unknown", "unknown"),
    ],
)
def test_missing_or_wrong_tokens(
    sessions: sessionmaker[Session], token: str | None, reason: str
) -> None:
    new_token(sessions)
    with pytest.raises(AuthError) as caught:
        auth(sessions, token)
    assert caught.value.reason == reason


def test_tokens_made_before_in_the_long_format_keep_working(
    sessions: sessionmaker[Session],
) -> None:
    created = new_token(sessions)
    legacy = "enclpat-" + "L" * 43  # the 51-character format issued before glpat-
    with sessions() as session, session.begin():
        record = session.get(PersonalAccessToken, created.id)
        assert record is not None
        record.token_digest = hashlib.sha256(legacy.encode()).hexdigest()
    assert auth(sessions, legacy).token_id == created.id
    with sessions() as session, session.begin():
        record = session.get(PersonalAccessToken, created.id)
        assert record is not None
        record.revoked = True
    with pytest.raises(AuthError) as caught:
        auth(sessions, legacy)
    assert caught.value.reason == "revoked"


def test_token_valid_until_its_expiry(sessions: sessionmaker[Session]) -> None:
    created = new_token(sessions, extra={"expires_at": utcnow() + timedelta(minutes=5)})
    assert auth(sessions, created.plaintext)


def test_scope_must_match(sessions: sessionmaker[Session]) -> None:
    created = new_token(sessions, scopes=("read_user",))
    with pytest.raises(InsufficientScopeError) as caught:
        auth(sessions, created.plaintext)
    assert caught.value.accepted == ("ai_features", "api")
    for scopes in (("api",), ("ai_features",)):
        with sessions() as session, session.begin():
            session.execute(delete(PersonalAccessToken))
            session.execute(delete(User))
        assert auth(sessions, new_token(sessions, scopes=scopes).plaintext)


def test_last_used_is_written_at_most_once_a_minute(sessions: sessionmaker[Session]) -> None:
    created = new_token(sessions)

    def last_used() -> object:
        with sessions() as session:
            return session.get(PersonalAccessToken, created.id).last_used_at  # type: ignore[union-attr]

    start = utcnow()
    authenticate_request(sessions, created.plaintext, accepted_scopes=AI_SCOPES, now=start)
    assert last_used() == start
    later = start + timedelta(seconds=59)
    principal = authenticate_request(
        sessions, created.plaintext, accepted_scopes=AI_SCOPES, now=later
    )
    assert not principal.stale_last_used
    assert last_used() == start  # no write within the minute
    much_later = start + timedelta(seconds=61)
    authenticate_request(sessions, created.plaintext, accepted_scopes=AI_SCOPES, now=much_later)
    assert last_used() == much_later
