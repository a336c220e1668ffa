"""Personal editor keys: ``/api/v4/user/ai/editor_keys`` and their revocation in the routes.

The key is an instance-signed JWT the gateway's OpenAI-compatible API accepts (verified here
with the instance's published keys, as the gateway does); the gateway side of revocation is in
tests/unit/gateway/test_openai_editor_keys.py and the whole path in tests/browser/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from enclave.common.features import FEATURE_UNIT_PRIMITIVES, Feature
from enclave.instance.db.models import EditorKey, User
from tests.unit.instance.conftest import Backend, FakeGateway, LiveInstance
from tests.unit.instance.test_openai_access import _start, routes, verified_claims

KEYS = "/api/v4/user/ai/editor_keys"
CHAT = {"name": "a", "features": ["duo_chat"]}


@pytest.fixture(scope="module")
def live(
    gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory, db_backend: Backend
) -> Iterator[LiveInstance]:
    instance = _start(tmp_path_factory.mktemp("editor-keys") / "data", gateway.url)
    try:
        yield instance
    finally:
        instance.stop()


def call(
    live: LiveInstance, method: str, path: str, token: str | None, json: object = None
) -> httpx.Response:
    headers = {"PRIVATE-TOKEN": token} if token else {}
    return httpx.request(method, live.url + path, headers=headers, json=json, timeout=30)


def test_editor_keys_need_a_pat_with_scope_api(live: LiveInstance) -> None:
    assert call(live, "GET", KEYS, None).status_code == 401
    ai_only = live.new_token(("ai_features",))
    response = call(live, "POST", KEYS, ai_only, {"name": "x", "features": ["duo_chat"]})
    assert response.status_code == 403
    assert "api" in response.json()["message"]


def test_a_key_is_a_long_lived_token_for_the_chosen_features(live: LiveInstance) -> None:
    token = live.new_token()
    before = time.time()
    response = call(
        live,
        "POST",
        KEYS,
        token,
        {
            "name": "laptop vscode",
            "features": ["duo_chat", "code_completions"],
            "expires_in_days": 60,
        },
    )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["name"] == "laptop vscode" and body["active"] is True
    assert body["base_url"].endswith("/v1")
    claims = verified_claims(live, body["key"])
    assert claims["enclave_surface"] == "openai"
    assert claims["enclave_editor_key_id"] == body["id"]
    assert sorted(claims["scopes"]) == sorted(
        {
            FEATURE_UNIT_PRIMITIVES[Feature.DUO_CHAT],
            FEATURE_UNIT_PRIMITIVES[Feature.CODE_COMPLETIONS],
        }
    )
    assert 59 * 86400 < claims["exp"] - before <= 60 * 86400 + 5
    # Listed without the key; only the owner sees it.
    listed = call(live, "GET", KEYS, token).json()
    assert [k["id"] for k in listed] == [body["id"]]
    assert "key" not in listed[0] and body["key"] not in call(live, "GET", KEYS, token).text
    assert call(live, "GET", KEYS, live.new_token()).json() == []


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"features": ["duo_chat"]}, "name", "name is missing"),
        ({"name": "a", "features": []}, "features", "features is missing"),
        ({"name": "a", "features": ["teleport"]}, "features", "'teleport' is unknown"),
        (
            {"name": "a", "features": ["duo_chat"], "expires_in_days": 0},
            "expires_in_days",
            "between 1 and 90",
        ),
        (
            {"name": "a", "features": ["duo_chat"], "expires_in_days": 91},
            "expires_in_days",
            "EDITOR_KEY_MAX_DAYS",
        ),
        (
            {"name": "a", "features": ["duo_chat"], "expires_in_days": "soon"},
            "expires_in_days",
            "not a number",
        ),
    ],
)
def test_bad_requests_say_what_to_fix(
    live: LiveInstance, body: dict[str, object], field: str, words: str
) -> None:
    response = call(live, "POST", KEYS, live.new_token(), body)
    assert response.status_code == 400, response.text
    assert words in response.json()["message"]
    assert field in response.json()["errors"]


def test_revocation_reaches_the_routes_until_the_key_expires(live: LiveInstance) -> None:
    token = live.new_token()
    created = call(live, "POST", KEYS, token, {"name": "ci", "features": ["duo_chat"]}).json()
    assert created["id"] not in routes(live).json()["revoked"]["editor_keys"]
    # Someone else's key is not found, and stays valid.
    assert call(live, "DELETE", f"{KEYS}/{created['id']}", live.new_token()).status_code == 404
    assert call(live, "DELETE", f"{KEYS}/{created['id']}", token).status_code == 204
    assert call(live, "DELETE", f"{KEYS}/{created['id']}", token).status_code == 204  # idempotent
    assert created["id"] in routes(live).json()["revoked"]["editor_keys"]
    [listed] = call(live, "GET", KEYS, token).json()
    assert listed["revoked"] is True and listed["active"] is False
    assert call(live, "DELETE", f"{KEYS}/99999999999", token).status_code == 404


def test_a_blocked_user_with_a_live_key_is_in_the_revocations(live: LiveInstance) -> None:
    token = live.new_token()
    created = call(live, "POST", KEYS, token, {"name": "ci", "features": ["duo_chat"]}).json()
    subject = verified_claims(live, created["key"])["sub"]
    assert subject not in routes(live).json()["revoked"]["users"]
    [me] = [call(live, "GET", "/api/v4/user", token).json()]
    blocked = httpx.post(
        f"{live.url}/api/v4/users/{me['id']}/block",
        headers={"PRIVATE-TOKEN": live.admin_token},
        timeout=30,
    )
    assert blocked.status_code == 201
    assert subject in routes(live).json()["revoked"]["users"]


def test_a_deleted_users_keys_stay_refused_until_they_expire(live: LiveInstance) -> None:
    token = live.new_token()
    created = call(live, "POST", KEYS, token, {"name": "gone", "features": ["duo_chat"]}).json()
    me = call(live, "GET", "/api/v4/user", token).json()
    with live.ctx.sessions() as session, session.begin():
        user = session.get(User, me["id"])
        assert user is not None
        session.delete(user)
    with live.ctx.sessions() as session:
        row = session.get(EditorKey, created["id"])
        assert row is not None and row.user_id is None  # kept on record
    assert created["id"] in routes(live).json()["revoked"]["editor_keys"]
