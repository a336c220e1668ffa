"""The instance's side of the OpenAI-compatible API: the gateway's routes and the user tokens.

``GET /api/v4/internal/ai/gateway_routes`` (shared secret) and
``POST /api/v4/ai/openai/direct_access`` (PAT → instance-signed JWT for the gateway's /v1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import structlog
from sqlalchemy import select

from enclave.common.features import FEATURE_UNIT_PRIMITIVES, Feature
from enclave.common.net import free_port
from enclave.instance import limits
from enclave.instance.db import utcnow
from enclave.instance.db.models import PersonalAccessToken
from enclave.instance.pats import token_digest
from tests.unit.instance.conftest import (
    EMBEDDED_ENDPOINT,
    MODEL_API_KEY,
    Backend,
    FakeGateway,
    LiveInstance,
    make_settings,
    start_instance,
    write_model_api_key,
)

ROUTES = "/api/v4/internal/ai/gateway_routes"
ACCESS = "/api/v4/ai/openai/direct_access"
SECRET = "enclkey-routes-unit-test-secret-0123456789"


def _start(data_dir: Path, gateway_url: str) -> LiveInstance:
    write_model_api_key(data_dir)
    (data_dir / "keys").mkdir(parents=True, exist_ok=True)
    secret_file = data_dir / "keys" / "gateway-routes.secret"
    secret_file.write_text(SECRET + "\n")
    port = free_port()
    return start_instance(
        make_settings(
            data_dir,
            external_url=f"http://127.0.0.1:{port}",
            gateway_url=gateway_url,
            embedded_model_endpoint=EMBEDDED_ENDPOINT,
            gateway_routes_secret_file=secret_file,
        ),
        port,
    )


@pytest.fixture(scope="module")
def live(
    gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory, db_backend: Backend
) -> Iterator[LiveInstance]:
    """An instance with the routes secret and the embedded model on every feature."""
    instance = _start(tmp_path_factory.mktemp("openai") / "data", gateway.url)
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture()
def fresh(
    gateway: FakeGateway, tmp_path: Path, db_backend: Backend
) -> Iterator[Callable[[], LiveInstance]]:
    """Instances whose feature settings a test may change."""
    started: list[LiveInstance] = []

    def factory() -> LiveInstance:
        instance = _start(tmp_path / f"data{len(started)}", gateway.url)
        started.append(instance)
        return instance

    yield factory
    for instance in started:
        instance.stop()


def routes(instance: LiveInstance, secret: str | None = SECRET) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    return httpx.get(instance.url + ROUTES, headers=headers, timeout=20)


def by_feature(response: httpx.Response) -> dict[str, dict[str, Any]]:
    assert response.status_code == 200, response.text
    return {entry["feature"]: entry for entry in response.json()["routes"]}


def access(instance: LiveInstance, token: str | None, body: Any = None) -> httpx.Response:
    headers = {"PRIVATE-TOKEN": token} if token else {}
    return httpx.post(instance.url + ACCESS, headers=headers, json=body, timeout=20)


def verified_claims(instance: LiveInstance, token: str) -> dict[str, Any]:
    """The token's claims, verified with the instance's published keys (as the gateway does)."""
    jwks = httpx.get(instance.url + "/oauth/discovery/keys", timeout=20).json()
    kid = jwt.get_unverified_header(token)["kid"]
    [jwk] = [key for key in jwks["keys"] if key["kid"] == kid]
    key = jwt.PyJWK(jwk).key
    return dict(jwt.decode(token, key, algorithms=["RS256"], audience="gitlab-ai-gateway"))


# -- GET /api/v4/internal/ai/gateway_routes ---------------------------------------------------


def test_routes_do_not_exist_without_a_secret(instance: LiveInstance) -> None:
    assert routes(instance).status_code == 404
    assert routes(instance, None).status_code == 404


def test_routes_need_the_secret(live: LiveInstance) -> None:
    for secret in (None, "wrong-secret-of-some-length", SECRET + "x", SECRET[:-1]):
        response = routes(live, secret)
        assert response.status_code == 401, secret
        assert SECRET not in response.text
    basic = httpx.get(live.url + ROUTES, headers={"Authorization": f"Basic {SECRET}"}, timeout=20)
    assert basic.status_code == 401


def test_routes_resolve_every_feature(live: LiveInstance) -> None:
    response = routes(live)
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["issuer"] == live.settings.instance.issuer()
    table = by_feature(response)
    assert set(table) == {feature.value for feature in Feature}
    completions = table["code_completions"]
    assert completions["available"] is True
    assert completions["unit_primitive"] == "complete_code"
    model = completions["model"]
    assert (model["endpoint"], model["api_key"], model["family"], model["provider"]) == (
        EMBEDDED_ENDPOINT,
        MODEL_API_KEY,
        "general",
        "api",
    )
    assert model["identifier"] == "custom_openai/smollm2"
    for feature, entry in table.items():
        assert entry["unit_primitive"] == FEATURE_UNIT_PRIMITIVES[Feature(feature)]


def test_routes_are_not_in_the_openapi_document(live: LiveInstance) -> None:
    paths = httpx.get(live.url + "/openapi.json", timeout=20).json()["paths"]
    assert ROUTES not in paths
    assert ACCESS in paths


def test_routes_say_why_a_feature_is_unavailable(fresh: Callable[[], LiveInstance]) -> None:
    instance = fresh()
    instance.set_feature("summarize_review", "disabled")
    instance.set_feature("generate_commit_message", "vendored")
    instance.set_feature("glab_ask_git_command", "unassigned")
    instance.set_feature("duo_chat", "disabled")
    instance.set_feature("duo_chat_explain_code", "unassigned")  # follows duo_chat
    table = by_feature(routes(instance))
    for feature, reason in (
        ("summarize_review", "disabled"),
        ("generate_commit_message", "vendored"),
        ("glab_ask_git_command", "unassigned"),
        ("duo_chat", "disabled"),
        ("duo_chat_explain_code", "disabled"),
    ):
        entry = table[feature]
        assert (entry["available"], entry["reason"]) == (False, reason), feature
        assert entry["message"] and "model" not in entry
    assert "uses the duo_chat setting" in table["duo_chat_explain_code"]["message"]
    assert table["code_completions"]["available"] is True


# -- POST /api/v4/ai/openai/direct_access -----------------------------------------------------


def test_access_needs_a_personal_access_token(live: LiveInstance) -> None:
    assert access(live, None).status_code == 401
    assert access(live, "enclpat-not-a-real-token-000").status_code == 401


def test_access_answers_a_token_for_every_served_feature(
    live: LiveInstance, gateway: FakeGateway
) -> None:
    response = access(live, live.new_token(("ai_features",)))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["base_url"] == f"{gateway.url}/v1"
    assert body["models"] == sorted(feature.value for feature in Feature)
    assert body["unavailable"] == {}
    claims = verified_claims(live, body["token"])
    assert claims["iss"] == live.settings.instance.issuer()
    assert claims["enclave_surface"] == "openai"
    assert claims["exp"] == body["expires_at"]
    assert set(claims["scopes"]) == set(FEATURE_UNIT_PRIMITIVES.values())
    headers = body["headers"]
    assert claims["sub"] == headers["X-Gitlab-Global-User-Id"]
    assert claims["gitlab_instance_id"] == headers["X-Gitlab-Instance-Id"]
    assert claims["gitlab_realm"] == headers["X-Gitlab-Realm"] == "self-managed"
    assert gateway.requests == [] or all(r.path != ACCESS for r in gateway.requests)


def test_access_for_chosen_features(live: LiveInstance) -> None:
    token = live.new_token(("api",))
    body = access(live, token, {"features": ["duo_chat", "code_completions"]}).json()
    assert body["models"] == ["code_completions", "duo_chat"]
    assert sorted(verified_claims(live, body["token"])["scopes"]) == ["complete_code", "duo_chat"]


@pytest.mark.parametrize(
    "body",
    [
        {"features": ["not_a_feature"]},
        {"features": "duo_chat"},
        {"features": []},
        {"features": ["duo_chat"], "scopes": ["everything"]},
        ["duo_chat"],
    ],
)
def test_access_refuses_bad_bodies(live: LiveInstance, body: Any) -> None:
    response = access(live, live.new_token(("ai_features",)), body)
    assert response.status_code == 400, response.text


def test_access_leaves_out_what_is_not_served(fresh: Callable[[], LiveInstance]) -> None:
    instance = fresh()
    instance.set_feature("code_generations", "disabled")
    token = instance.new_token(("ai_features",))
    body = access(instance, token, {"features": ["duo_chat", "code_generations"]}).json()
    assert body["models"] == ["duo_chat"]
    assert "disabled" in body["unavailable"]["code_generations"]
    assert verified_claims(instance, body["token"])["scopes"] == ["duo_chat"]
    only_disabled = access(instance, token, {"features": ["code_generations"]})
    assert only_disabled.status_code == 403
    assert "disabled" in only_disabled.json()["message"]


def test_access_is_rate_limited_per_user(live: LiveInstance) -> None:
    limiter = live.ctx.limits.limiter(limits.OPENAI_DIRECT_ACCESS)
    assert limiter is not None and limiter.limit == 50  # GitLab's direct access limit
    limiter.limit = 2
    try:
        token, other = live.new_token(("ai_features",)), live.new_token(("ai_features",))
        statuses = [access(live, token).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        limited = access(live, token)
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert "too many times" in limited.json()["message"]
        assert access(live, other).status_code == 200
    finally:
        limiter.limit = 50


def test_no_secret_reaches_the_logs(live: LiveInstance) -> None:
    pat = live.new_token(("ai_features",))
    with structlog.testing.capture_logs() as logs:
        table = routes(live)
        denied = routes(live, "wrong-secret-of-some-length")
        token = access(live, pat).json()["token"]
    assert (table.status_code, denied.status_code) == (200, 401)
    text = repr(logs)
    for secret in (SECRET, MODEL_API_KEY, token, pat):
        assert secret not in text
    assert any(entry["event"] == "gateway_routes_served" for entry in logs)
    assert any(entry["event"] == "gateway_routes_unauthorized" for entry in logs)


# -- revocations in the routes document -------------------------------------------------------


def _admin(instance: LiveInstance, method: str, path: str) -> httpx.Response:
    headers = {"PRIVATE-TOKEN": instance.admin_token}
    return httpx.request(method, instance.url + path, headers=headers, timeout=20)


def _token_id(instance: LiveInstance, plaintext: str) -> tuple[int, int]:
    with instance.ctx.sessions() as session, session.begin():
        row = session.scalar(
            select(PersonalAccessToken).where(
                PersonalAccessToken.token_digest == token_digest(plaintext)
            )
        )
        assert row is not None
        return row.id, row.user_id


def _age_last_use(instance: LiveInstance, token_id: int, seconds: float) -> None:
    with instance.ctx.sessions() as session, session.begin():
        row = session.get(PersonalAccessToken, token_id)
        assert row is not None
        row.last_used_at = utcnow() - timedelta(seconds=seconds)


def test_openai_tokens_name_their_pat_and_revocations_reach_the_routes(
    live: LiveInstance,
) -> None:
    plaintext = live.new_token(("ai_features",))
    body = access(live, plaintext).json()
    pat_id, user_id = _token_id(live, plaintext)
    assert verified_claims(live, body["token"])["enclave_pat_id"] == pat_id
    assert pat_id not in routes(live).json()["revoked"]["personal_access_tokens"]

    assert _admin(live, "DELETE", f"/api/v4/personal_access_tokens/{pat_id}").status_code == 204
    revoked = routes(live).json()["revoked"]
    assert pat_id in revoked["personal_access_tokens"]
    assert body["headers"]["X-Gitlab-Global-User-Id"] not in revoked["users"]

    assert _admin(live, "POST", f"/api/v4/users/{user_id}/block").status_code == 201
    assert body["headers"]["X-Gitlab-Global-User-Id"] in routes(live).json()["revoked"]["users"]
    assert _admin(live, "POST", f"/api/v4/users/{user_id}/unblock").status_code == 201
    assert body["headers"]["X-Gitlab-Global-User-Id"] not in routes(live).json()["revoked"]["users"]


def test_revocations_leave_out_what_can_no_longer_be_used(live: LiveInstance) -> None:
    """Bounded: a PAT last used before the window made no token that is still valid."""
    plaintext = live.new_token(("ai_features",), username=f"old{id(live)}")
    assert access(live, plaintext).status_code == 200
    pat_id, user_id = _token_id(live, plaintext)
    assert _admin(live, "DELETE", f"/api/v4/personal_access_tokens/{pat_id}").status_code == 204
    assert _admin(live, "POST", f"/api/v4/users/{user_id}/block").status_code == 201
    assert pat_id in routes(live).json()["revoked"]["personal_access_tokens"]
    _age_last_use(live, pat_id, live.settings.instance.revocation_window_s + 60)
    revoked = routes(live).json()["revoked"]
    assert pat_id not in revoked["personal_access_tokens"]
    assert len(revoked["users"]) == len(set(revoked["users"]))
    never_used = live.new_token(("ai_features",), revoked=True)  # never used: no token from it
    assert _token_id(live, never_used)[0] not in revoked["personal_access_tokens"]
