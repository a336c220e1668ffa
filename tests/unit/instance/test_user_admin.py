"""Issue 13, finding 8: deleting users (GitLab's DELETE /api/v4/users/:id and the CLI), block /
unblock and the audit log from the CLI, PATs that expire by default, "already revoked", and a
missing e-mail address told as missing."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from enclave.instance import accounts
from enclave.instance.actor import Actor
from enclave.instance.admin_errors import ConflictError
from enclave.instance.api.gateway_routes import routes_document
from enclave.instance.db import DeletedUser, PersonalAccessToken, User
from enclave.instance.db.models import AiUsage
from enclave.instance.gateway_client import pseudonymous_user_id
from enclave.instance.usage import Counts
from tests.unit.instance.admin_helpers import Api
from tests.unit.instance.conftest import LiveInstance
from tests.unit.instance.test_admin_cli import Cli, cli

__all__ = ["cli"]  # fixture

USERS = "/api/v4/users"


@pytest.fixture()
def api(instance: LiveInstance) -> Api:
    return Api(instance)


def new_user(api: Api, username: str, **fields: object) -> dict[str, Any]:
    response = api.post(USERS, {"username": username, "email": f"{username}@example.com", **fields})
    assert response.status_code == 201, response.text
    return dict(response.json())


def new_token(api: Api, user_id: object, **fields: object) -> dict[str, Any]:
    body = {"name": "ide", "scopes": ["api"], **fields}
    response = api.post(f"{USERS}/{user_id}/personal_access_tokens", body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_delete_user_removes_them_and_their_tokens(api: Api, instance: LiveInstance) -> None:
    user = new_user(api, "leaving")
    token = new_token(api, user["id"])
    plaintext = token["token"]
    assert Api(instance, plaintext).get("/api/v4/user").status_code == 200
    # Usage stays (as a deleted user's) without hard_delete.
    instance.ctx.usage.record(
        feature="duo_chat", model="m", counts=Counts(1, 0, 1, 1, 1), user_id=user["id"]
    )
    instance.ctx.usage.flush(instance.ctx.sessions, instance.ctx.user_id_salt)

    response = api.delete(f"{USERS}/{user['id']}")
    assert response.status_code == 204, response.text
    assert api.get(f"{USERS}/{user['id']}").status_code == 404
    assert Api(instance, plaintext).get("/api/v4/user").status_code == 401
    with instance.ctx.sessions() as session:
        assert session.get(PersonalAccessToken, token["id"]) is None
        kept = session.scalars(select(AiUsage).where(AiUsage.feature == "duo_chat")).all()
        assert any(row.user_id is None for row in kept)
        # The gateway goes on refusing tokens made for the user and their PAT.
        document = routes_document(instance.ctx)
    pseudonym = pseudonymous_user_id(instance.ctx.user_id_salt, user["id"])
    assert pseudonym in document["revoked"]["users"]
    assert token["id"] in document["revoked"]["personal_access_tokens"]
    events = api.get("/api/v4/admin/ai/audit_events", params={"event_name": "user_deleted"})
    assert events.json()[0]["message"] == "Deleted user leaving"


def test_hard_delete_removes_their_usage(api: Api, instance: LiveInstance) -> None:
    user = new_user(api, "hard")
    instance.ctx.usage.record(
        feature="explain_vulnerability", model="m", counts=Counts(1, 0, 1, 1, 1), user_id=user["id"]
    )
    instance.ctx.usage.flush(instance.ctx.sessions, instance.ctx.user_id_salt)
    assert api.delete(f"{USERS}/{user['id']}", params={"hard_delete": "true"}).status_code == 204
    with instance.ctx.sessions() as session:
        rows = session.scalars(
            select(AiUsage).where(AiUsage.feature == "explain_vulnerability")
        ).all()
        assert rows == []


def test_delete_user_refusals(api: Api, instance: LiveInstance) -> None:
    me = api.get("/api/v4/user").json()
    own = api.delete(f"{USERS}/{me['id']}")
    assert own.status_code == 400
    assert "you cannot delete yourself" in own.json()["message"]
    assert api.delete(f"{USERS}/999999").status_code == 404
    bad = api.delete(f"{USERS}/1", params={"hard_delete": "perhaps"})
    assert bad.status_code == 400 and "hard_delete" in bad.json()["message"]
    # A non-admin may not delete anyone.
    plain = new_user(api, "plain")
    plain_token = new_token(api, plain["id"])["token"]
    assert Api(instance, plain_token).delete(f"{USERS}/{me['id']}").status_code == 403


def test_an_administrator_deletes_another_but_never_the_last(
    api: Api, instance: LiveInstance
) -> None:
    other = new_user(api, "second-admin", admin=True)
    assert api.delete(f"{USERS}/{other['id']}").status_code == 204
    me = api.get("/api/v4/user").json()
    with instance.ctx.sessions() as session, session.begin():
        admins = session.scalars(select(User).where(User.is_admin)).all()
        assert [a.id for a in admins] == [me["id"]]
    # The last administrator: refused whoever asks (here the CLI's system actor).
    with (
        instance.ctx.sessions() as session,
        session.begin(),
        pytest.raises(ConflictError, match="is the last administrator"),
    ):
        accounts.delete_user(session, me["id"], Actor.cli(), salt=b"s" * 32)


def test_tokens_expire_by_default_within_the_maximum(api: Api, instance: LiveInstance) -> None:
    user = new_user(api, "expiring")
    token = new_token(api, user["id"])
    default = date.today() + timedelta(days=365)
    assert token["expires_at"] in (default.isoformat(), (default + timedelta(days=1)).isoformat())
    too_late = (date.today() + timedelta(days=400)).isoformat()
    response = api.post(
        f"{USERS}/{user['id']}/personal_access_tokens",
        {"name": "x", "scopes": ["api"], "expires_at": too_late},
    )
    assert response.status_code == 400
    assert "expires_at must be within 365 days" in response.json()["message"]
    assert "pat_max_lifetime_days" in response.json()["message"]


def test_a_missing_email_is_called_missing(api: Api) -> None:
    response = api.post(USERS, {"username": "noemail"})
    assert response.status_code == 400
    message = response.json()["message"]
    assert "email is missing" in message and "None" not in message


# --- CLI ------------------------------------------------------------------------------------


def test_cli_blocks_unblocks_and_deletes_users(cli: Cli) -> None:
    assert cli("users", "add", "mallory", "--email", "m@example.com").exit_code == 0
    created = cli.json("tokens", "create", "mallory", "--name", "ide")
    # Default expiry: the maximum lifetime, never "never".
    expires = date.fromisoformat(created["expires_at"])
    assert 364 <= (expires - date.today()).days <= 366

    blocked = cli("users", "block", "mallory")
    assert blocked.exit_code == 0 and "Blocked mallory" in blocked.stdout
    again = cli("users", "block", "mallory")
    assert "was already blocked; nothing changed" in again.stdout
    assert cli.json("users", "unblock", "mallory")["state"] == "active"

    refused = cli("users", "delete", "mallory", input="n\n")
    assert refused.exit_code == 1
    deleted = cli("users", "delete", "mallory", "--yes")
    assert deleted.exit_code == 0 and "Deleted user mallory" in deleted.stdout
    missing = cli("users", "delete", "mallory", "--yes")
    assert missing.exit_code == 1 and "no user has the username or id 'mallory'" in missing.output

    events = cli.json("audit", "list", "--event", "user_deleted")
    assert [e["message"] for e in events] == ["Deleted user mallory"]
    blocked_events = cli.json("audit", "list", "--event", "user_blocked", "--limit", "5")
    assert len(blocked_events) == 1
    table = cli("audit", "list", "--since", datetime.now(UTC).date().isoformat())
    assert table.exit_code == 0 and "user_created" in table.stdout
    bad = cli("audit", "list", "--event", "nonsense")
    assert bad.exit_code == 2 and "is not an audit event" in bad.output
    bad_time = cli("audit", "list", "--since", "yesterday")
    assert (
        bad_time.exit_code == 1 and "since 'yesterday' is not an ISO 8601 time" in bad_time.output
    )


def test_cli_says_when_a_token_was_already_revoked(cli: Cli) -> None:
    assert cli("users", "add", "trent", "--email", "t@example.com").exit_code == 0
    created = cli.json("tokens", "create", "trent", "--name", "ide")
    first = cli("tokens", "revoke", str(created["id"]))
    assert first.exit_code == 0 and f"Revoked personal access token {created['id']}" in first.stdout
    second = cli("tokens", "revoke", str(created["id"]))
    assert second.exit_code == 0
    assert "was already revoked; nothing changed" in second.stdout
    assert json.loads(cli("tokens", "revoke", str(created["id"]), "--json").stdout)[
        "already_revoked"
    ]


def test_cli_refuses_to_delete_the_last_admin(cli: Cli) -> None:
    users = cli.json("users", "list")
    [admin] = [u for u in users if u["is_admin"]]
    result = cli("users", "delete", admin["username"], "--yes")
    assert result.exit_code == 1
    assert "is the last administrator" in result.output


def test_deleted_users_tombstone_has_pseudonym(instance: LiveInstance, api: Api) -> None:
    user = new_user(api, "tomb")
    new_token(api, user["id"])
    assert api.delete(f"{USERS}/{user['id']}").status_code == 204
    with instance.ctx.sessions() as session:
        rows = session.scalars(select(DeletedUser)).all()
    pseudonym = pseudonymous_user_id(instance.ctx.user_id_salt, user["id"])
    assert any(r.global_user_id == pseudonym and len(r.pat_ids) == 1 for r in rows)
    assert httpx.get(instance.url + "/-/liveness", timeout=5).status_code == 200
