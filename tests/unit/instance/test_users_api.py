"""Users and personal access tokens over the GitLab-shaped REST API, and two replicas."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import date, timedelta

import pytest
from sqlalchemy import update

from enclave.instance.db import PersonalAccessToken, utcnow
from tests.unit.instance.admin_helpers import Api
from tests.unit.instance.conftest import LiveInstance

USERS = "/api/v4/users"
TOKENS = "/api/v4/personal_access_tokens"
TOMORROW = (date.today() + timedelta(days=2)).isoformat()


@pytest.fixture()
def api(instance: LiveInstance) -> Api:
    return Api(instance)


def new_user(api: Api, username: str, **fields: object) -> dict[str, object]:
    response = api.post(USERS, {"username": username, "email": f"{username}@example.com", **fields})
    assert response.status_code == 201, response.text
    return dict(response.json())


def new_token(api: Api, user_id: object, **fields: object) -> dict[str, object]:
    body = {"name": "ide", "scopes": ["api", "ai_features"], **fields}
    response = api.post(f"{USERS}/{user_id}/personal_access_tokens", body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_create_user_and_token_then_use_it(api: Api, instance: LiveInstance) -> None:
    user = new_user(api, "alice", name="Alice Liddell")
    assert {k: user[k] for k in ("username", "name", "state", "is_admin", "email")} == {
        "username": "alice",
        "name": "Alice Liddell",
        "state": "active",
        "is_admin": False,
        "email": "alice@example.com",
    }
    created = new_token(api, user["id"], expires_at=TOMORROW)
    plaintext = str(created["token"])
    assert plaintext.startswith("glpat-")
    assert created["expires_at"] == TOMORROW
    assert created["active"] is True and created["revoked"] is False
    assert created["scopes"] == ["ai_features", "api"]
    # Stored hashed; shown once.
    with instance.ctx.sessions() as session:
        row = session.get(PersonalAccessToken, created["id"])
        assert row is not None
        assert row.token_digest == hashlib.sha256(plaintext.encode()).hexdigest()
    listed = api.get(TOKENS, params={"user_id": user["id"]})
    assert plaintext not in listed.text and "token" not in listed.json()[0]
    # The caller is who the token says, by either header.
    for headers in ({"PRIVATE-TOKEN": plaintext}, {"Authorization": f"Bearer {plaintext}"}):
        me = Api(instance, "").get("/api/v4/user", headers=headers)
        assert me.status_code == 200
        assert me.json()["username"] == "alice"
    shown = Api(instance, plaintext).get(f"{TOKENS}/self").json()
    assert shown["last_used_at"] is not None


INVALID_USERS = [
    ({"username": "bad name", "email": "b@example.com"}, 400, "username 'bad name' is invalid"),
    ({"username": "bob", "email": "not-an-email"}, 400, "email 'not-an-email' is not a valid"),
    ({"email": "c@example.com"}, 400, "username is missing"),
    ({"username": "root", "email": "r2@example.com"}, 409, "Username has already been taken"),
    ({"username": "root2", "email": "admin@example.com"}, 409, "Email has already been taken"),
]


@pytest.mark.parametrize(("body", "status", "message"), INVALID_USERS)
def test_invalid_users(api: Api, body: dict[str, str], status: int, message: str) -> None:
    response = api.post(USERS, body)
    assert response.status_code == status
    reason = "Bad request" if status == 400 else "Conflict"
    assert response.json()["message"].startswith(f"{status} {reason} - {message}")


def test_invalid_tokens(api: Api) -> None:
    user = new_user(api, "carol")
    cases = [
        ({"scopes": ["api"]}, "name is missing"),
        ({"name": "x", "scopes": ["sudo"]}, "scopes sudo are unknown; use ai_features, api"),
        ({"name": "x", "scopes": []}, "scopes is missing"),
        (
            {"name": "x", "scopes": ["api"], "expires_at": "2001-01-01"},
            "expires_at 2001-01-01 is not in the future",
        ),
        (
            {"name": "x", "scopes": ["api"], "expires_at": "31/12/2030"},
            "expires_at '31/12/2030' is not a date",
        ),
    ]
    for body, message in cases:
        response = api.post(f"{USERS}/{user['id']}/personal_access_tokens", body)
        assert response.status_code == 400, body
        assert response.json()["message"].startswith(f"400 Bad request - {message}")
    missing = api.post(f"{USERS}/99999/personal_access_tokens", {"name": "x", "scopes": ["api"]})
    assert missing.status_code == 404
    assert missing.json()["message"] == "404 Not Found - user 99999 does not exist"


def test_non_admins_cannot_manage_users_or_others_tokens(api: Api, instance: LiveInstance) -> None:
    dave = new_user(api, "dave")
    erin = new_user(api, "erin")
    dave_token = str(new_token(api, dave["id"])["token"])
    erin_token = new_token(api, erin["id"])
    as_dave = Api(instance, dave_token)
    assert as_dave.post(USERS, {"username": "x", "email": "x@example.com"}).status_code == 403
    assert as_dave.post(f"{USERS}/{dave['id']}/personal_access_tokens", {}).status_code == 403
    assert as_dave.delete(f"{TOKENS}/{erin_token['id']}").status_code == 404
    own = as_dave.get(TOKENS)
    assert own.status_code == 200
    assert {t["user_id"] for t in own.json()} == {dave["id"]}
    assert as_dave.get(TOKENS, params={"user_id": erin["id"]}).status_code == 403
    # Everyone may list users, but only admins see e-mail addresses.
    users = as_dave.get(USERS, params={"username": "erin"}).json()
    assert users[0]["username"] == "erin" and "email" not in users[0]


def _status_within(replica: LiveInstance, token: str, status: int, seconds: float) -> int:
    """GET /api/v4/user with ``token`` until it answers ``status`` or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        answer = Api(replica, token).get("/api/v4/user").status_code
        if answer == status or time.monotonic() >= deadline:
            return answer
        time.sleep(0.1)


def test_revocation_and_expiry_take_effect_at_once_here_and_within_the_poll_elsewhere(
    live_instance_factory: Callable[..., LiveInstance], tmp_path: object
) -> None:
    """Tokens are cached in memory (caches.py): the replica that revokes refuses the token at
    once; another replica on the same database within cache_poll_s (0.2 s here), long before
    its cache entries would expire (auth_cache_ttl_s, 60 s here)."""
    first = live_instance_factory(cache_poll_s=0.2, auth_cache_ttl_s=60)
    # A second replica on the same database and keys (same data dir).
    second = live_instance_factory(
        data_dir=first.settings.data_dir, cache_poll_s=0.2, auth_cache_ttl_s=60
    )
    api = Api(first)
    user = new_user(api, "frank")
    revoked = new_token(api, user["id"])
    expiring = new_token(api, user["id"])
    for replica in (first, second):
        for token in (revoked, expiring):
            assert Api(replica, str(token["token"])).get("/api/v4/user").status_code == 200
    assert api.delete(f"{TOKENS}/{revoked['id']}").status_code == 204
    # Time passes for the other token: its expiry is now in the past.
    with first.ctx.sessions() as session, session.begin():
        record = session.get(PersonalAccessToken, expiring["id"])
        assert record is not None
        record.expires_at = utcnow() - timedelta(seconds=1)
    for token in (revoked, expiring):
        response = Api(first, str(token["token"])).get("/api/v4/user")
        assert response.status_code == 401
        assert response.json() == {"message": "401 Unauthorized"}
    for token in (revoked, expiring):
        assert _status_within(second, str(token["token"]), 401, seconds=5.0) == 401
    listed = {t["id"]: t for t in api.get(TOKENS, params={"user_id": user["id"]}).json()}
    assert listed[revoked["id"]]["revoked"] is True
    assert listed[expiring["id"]]["active"] is False
    inactive = api.get(TOKENS, params={"user_id": user["id"], "state": "inactive"}).json()
    assert {t["id"] for t in inactive} == {revoked["id"], expiring["id"]}
    # Revoking twice is harmless; an unknown token is 404.
    assert api.delete(f"{TOKENS}/{revoked['id']}").status_code == 204
    assert api.delete(f"{TOKENS}/424242").status_code == 404


def test_a_cached_token_expires_on_its_own_expiry(
    live_instance_factory: Callable[..., LiveInstance],
) -> None:
    """A token cached before its expiry is refused once the expiry passes, even with nothing
    changed in the database and a long cache lifetime."""
    live = live_instance_factory(auth_cache_ttl_s=60)
    api = Api(live)
    user = new_user(api, "ivy")
    token = new_token(api, user["id"])
    # A bulk UPDATE is not a tracked change: the cache keeps the entry, with this expiry.
    with live.ctx.sessions() as session, session.begin():
        session.execute(
            update(PersonalAccessToken)
            .where(PersonalAccessToken.id == token["id"])
            .values(expires_at=utcnow() + timedelta(seconds=1.5))
        )
    live.ctx.caches.invalidate("auth")
    assert Api(live, str(token["token"])).get("/api/v4/user").status_code == 200
    assert len(live.ctx.caches.auth) == 1
    time.sleep(1.6)
    response = Api(live, str(token["token"])).get("/api/v4/user")
    assert response.status_code == 401
    assert response.json() == {"message": "401 Unauthorized"}


def test_a_user_revokes_their_own_token(api: Api, instance: LiveInstance) -> None:
    user = new_user(api, "gina")
    token = str(new_token(api, user["id"])["token"])
    assert Api(instance, token).delete(f"{TOKENS}/self").status_code == 204
    assert Api(instance, token).get("/api/v4/user").status_code == 401


def test_blocking_a_user_stops_their_tokens(api: Api, instance: LiveInstance) -> None:
    user = new_user(api, "hank")
    token = str(new_token(api, user["id"])["token"])
    assert api.post(f"{USERS}/{user['id']}/block").status_code == 201
    assert Api(instance, token).get("/api/v4/user").status_code == 401
    assert api.post(f"{USERS}/{user['id']}/unblock").status_code == 201
    assert Api(instance, token).get("/api/v4/user").status_code == 200


def test_users_and_tokens_are_audited(api: Api) -> None:
    user = new_user(api, "ivy")
    token = new_token(api, user["id"])
    api.delete(f"{TOKENS}/{token['id']}")
    events = api.get("/api/v4/admin/ai/audit_events", params={"per_page": 100}).json()
    names = [(e["event_name"], e["target"]) for e in events]
    assert ("user_created", f"user/{user['id']}") in names
    assert ("personal_access_token_created", f"personal_access_token/{token['id']}") in names
    assert ("personal_access_token_revoked", f"personal_access_token/{token['id']}") in names
    assert str(token["token"]) not in str(events)


def test_user_list_is_paginated(api: Api) -> None:
    for index in range(3):
        new_user(api, f"page{index}")
    response = api.get(USERS, params={"per_page": 2, "search": "page"})
    assert response.status_code == 200
    assert [u["username"] for u in response.json()] == ["page0", "page1"]
    assert response.headers["x-total"] == "3"
    assert response.headers["x-next-page"] == "2"
