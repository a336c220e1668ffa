"""The instance over real HTTP (uvicorn on loopback): discovery, keys, user, health, auth."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
import structlog
from sqlalchemy import create_engine

from enclave.common.model_probe import ModelProbe
from enclave.common.net import free_port
from enclave.instance.api import health
from enclave.instance.db import utcnow
from tests.unit.instance.conftest import LiveInstance, request_lines

USER_URL = "/api/v4/user"
UNAUTHORIZED = {"message": "401 Unauthorized"}


def get(instance: LiveInstance, path: str, **kwargs: object) -> httpx.Response:
    return httpx.get(instance.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]


def test_openid_configuration_points_at_the_jwks(instance: LiveInstance) -> None:
    response = get(instance, "/.well-known/openid-configuration")
    assert response.status_code == 200
    document = response.json()
    assert document["issuer"] == instance.url
    assert document["jwks_uri"] == f"{instance.url}/oauth/discovery/keys"
    assert document["response_types_supported"] == ["code"]
    assert document["subject_types_supported"] == ["public"]
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    assert "gitlab_instance_id" in document["claims_supported"]
    assert response.headers["cache-control"] == "public, max-age=3600"


def test_jwks_is_gitlab_shaped_and_cacheable(instance: LiveInstance) -> None:
    response = get(instance, "/oauth/discovery/keys")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "public, max-age=300"
    [key] = response.json()["keys"]
    assert set(key) == {"kty", "kid", "e", "n", "use", "alg"}
    assert (key["kty"], key["use"], key["alg"]) == ("RSA", "sig", "RS256")
    assert key["kid"] == instance.ctx.keys.active.kid


def test_minted_token_verifies_through_discovery_like_a_gateway(instance: LiveInstance) -> None:
    """What a gateway does: discovery → jwks_uri → key by kid → verify claims."""
    jwks_uri = get(instance, "/.well-known/openid-configuration").json()["jwks_uri"]
    token = instance.ctx.minter.token(["complete_code"]).token
    signing_key = jwt.PyJWKClient(jwks_uri).get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        signing_key.key,
        algorithms=["RS256"],
        audience="gitlab-ai-gateway",
        issuer=instance.url,
        options={"require": ["iss", "aud", "exp", "iat", "nbf", "sub", "jti"]},
    )
    assert claims["sub"] == claims["gitlab_instance_id"] == str(instance.ctx.instance_id)
    assert claims["gitlab_realm"] == "self-managed"
    assert claims["scopes"] == ["complete_code"]
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["iat"] - claims["nbf"] == 5


def test_liveness_and_readiness(instance: LiveInstance) -> None:
    assert get(instance, "/-/liveness").json() == {"status": "ok"}
    response = get(instance, "/-/readiness")
    # The module's embedded model endpoint (port 1) has no server: degraded, not 503.
    assert response.status_code == 200
    assert response.json() == {
        "status": "degraded",
        "master_check": [{"status": "ok"}],
        "db_check": [{"status": "ok"}],
        "signing_key_check": [{"status": "ok"}],
        "model_check": [
            {
                "model": "embedded-smollm2",
                "status": "down",
                "detail": "unreachable (connection refused or no route)",
            }
        ],
    }


class _ModelServer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # like llama.cpp without the key: alive
        self.send_response(401)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_readiness_follows_the_model_down_and_up(
    live_instance_factory: Callable[..., LiveInstance], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "_model_probe", ModelProbe(ttl_s=0))
    port = free_port()
    live = live_instance_factory(embedded_model_endpoint=f"http://127.0.0.1:{port}/v1")

    def model_check() -> tuple[str, list[dict[str, str]]]:
        response = get(live, "/-/readiness")
        assert response.status_code == 200  # a model alone never makes it 503
        return response.json()["status"], response.json()["model_check"]

    assert model_check()[0] == "degraded"
    server = http.server.HTTPServer(("127.0.0.1", port), _ModelServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        status, models = model_check()
        assert status == "ok"
        assert models == [{"model": "embedded-smollm2", "status": "ok", "detail": "ok"}]
    finally:
        server.shutdown()
        server.server_close()
    status, models = model_check()
    assert status == "degraded" and models[0]["status"] == "down"


def test_readiness_fails_with_503_when_the_database_is_gone(
    live_instance_factory: Callable[..., LiveInstance],
) -> None:
    live = live_instance_factory()
    live.ctx.engine = create_engine("sqlite:////nonexistent-dir/instance.db")
    response = get(live, "/-/readiness")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "failed"
    assert body["master_check"] == [{"status": "failed", "message": "failed checks: db_check"}]
    assert body["db_check"][0]["status"] == "failed"
    assert "database unreachable" in body["db_check"][0]["message"]
    assert body["signing_key_check"] == [{"status": "ok"}]


@pytest.mark.parametrize("header", ["PRIVATE-TOKEN", "Authorization"])
def test_current_user_with_either_header(instance: LiveInstance, header: str) -> None:
    value = instance.admin_token if header == "PRIVATE-TOKEN" else f"Bearer {instance.admin_token}"
    response = get(instance, USER_URL, headers={header: value})
    assert response.status_code == 200
    user = response.json()
    assert {k: user[k] for k in ("id", "username", "name", "state", "is_admin", "email")} == {
        "id": 1,
        "username": "root",
        "name": "Administrator",
        "state": "active",
        "is_admin": True,
        "email": "admin@example.com",
    }
    assert user["web_url"] == f"{instance.url}/root"
    assert user["created_at"].endswith("Z")


def _bad_headers(instance: LiveInstance) -> dict[str, dict[str, str]]:
    return {
        "missing": {},
        "wrong": {"PRIVATE-TOKEN": "enclpat-this-is-not-a-real-token-000000"},
        "wrong bearer": {"Authorization": "Bearer enclpat-this-is-not-a-real-token-000000"},
        "basic": {"Authorization": "Basic cm9vdDpwYXNzd29yZA=="},
        "revoked": {"PRIVATE-TOKEN": instance.new_token(revoked=True)},
        "expired": {
            "PRIVATE-TOKEN": instance.new_token(expires_at=utcnow() - timedelta(minutes=1))
        },
        "blocked user": {"PRIVATE-TOKEN": instance.new_token(blocked=True)},
    }


@pytest.mark.parametrize(
    "case", ["missing", "wrong", "wrong bearer", "basic", "revoked", "expired", "blocked user"]
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", USER_URL), ("POST", "/api/v4/code_suggestions/completions")],
)
def test_401_for_every_bad_token(instance: LiveInstance, case: str, method: str, path: str) -> None:
    headers = _bad_headers(instance)[case]
    response = httpx.request(
        method,
        instance.url + path,
        headers=headers,
        json={"current_file": {"file_name": "a.py", "content_above_cursor": ""}},
        timeout=10,
    )
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED
    assert response.headers["x-gitlab-error-origin"] == "monolith"


def test_403_for_a_token_without_the_scope(instance: LiveInstance) -> None:
    token = instance.new_token(scopes=("read_user",))
    assert get(instance, USER_URL, headers={"PRIVATE-TOKEN": token}).status_code == 200
    response = httpx.post(
        f"{instance.url}/api/v4/code_suggestions/completions",
        headers={"PRIVATE-TOKEN": token},
        json={"current_file": {"file_name": "a.py", "content_above_cursor": ""}},
        timeout=10,
    )
    assert response.status_code == 403
    assert "ai_features, api" in response.json()["message"]
    assert response.headers["x-gitlab-error-origin"] == "monolith"


def test_ai_features_scope_alone_is_enough_for_completions_not_for_user(
    instance: LiveInstance,
) -> None:
    token = instance.new_token(scopes=("ai_features",))
    assert get(instance, USER_URL, headers={"PRIVATE-TOKEN": token}).status_code == 403


def test_unknown_routes_answer_gitlab_style(instance: LiveInstance) -> None:
    response = get(instance, "/api/v4/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"message": "404 Not Found"}
    assert response.headers["x-gitlab-error-origin"] == "monolith"


def test_request_id_is_echoed_or_made(instance: LiveInstance) -> None:
    echoed = get(instance, "/-/liveness", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    made = get(instance, "/-/liveness", headers={"X-Request-ID": "bad id\twith spaces"})
    assert len(made.headers["x-request-id"]) == 32


def test_one_structured_log_line_per_request(instance: LiveInstance) -> None:
    with structlog.testing.capture_logs() as logs:
        get(
            instance,
            USER_URL,
            headers={"PRIVATE-TOKEN": instance.admin_token, "X-Request-ID": "req-log-1"},
        )
        lines = request_lines(logs, "req-log-1")
    assert len(lines) == 1
    line = lines[0]
    assert line["method"] == "GET"
    assert line["route"] == USER_URL
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float)
    assert instance.admin_token not in repr(logs)
