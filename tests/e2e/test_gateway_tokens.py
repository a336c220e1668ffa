"""Tokens sent straight to the gateway: only what the trusted instance signed gets through."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave.common.net import free_port
from enclave.supervisor import Role
from tests.e2e.conftest import Stack, gateway_body, stack_env

pytestmark = pytest.mark.e2e

INSTANCE_ID = str(uuid.uuid4())


def instance_private_key(data_dir: Path) -> Any:
    """The instance's active signing key, read from its data dir (tests only: it never leaves
    it). ``keys/signing/active`` names the key id; the key is ``keys/signing/<kid>.pem``."""
    signing = data_dir / "keys" / "signing"
    kid = (signing / "active").read_text().strip()
    return serialization.load_pem_private_key((signing / f"{kid}.pem").read_bytes(), password=None)


def instance_kid(stack: Stack) -> str:
    keys = httpx.get(f"{stack.instance_url}/oauth/discovery/keys", timeout=10).json()["keys"]
    return str(keys[0]["kid"])


def claims(stack: Stack, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": stack.instance_url,
        "sub": INSTANCE_ID,
        "gitlab_instance_id": INSTANCE_ID,
        "aud": "gitlab-ai-gateway",
        "gitlab_realm": "self-managed",
        "scopes": ["complete_code"],
        "iat": now,
        "nbf": now - 5,
        "exp": now + 3600,
        "jti": str(uuid.uuid4()),
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(stack: Stack, payload: dict[str, Any], key: Any = None, kid: str | None = None) -> str:
    return jwt.encode(
        payload,
        key or instance_private_key(stack.data_dir),
        algorithm="RS256",
        headers={"kid": kid or instance_kid(stack)},
    )


def call_gateway(stack: Stack, token: str) -> httpx.Response:
    return httpx.post(
        f"{stack.gateway_url}/v2/code/completions",
        json=gateway_body(stack),
        headers={
            "Authorization": f"Bearer {token}",
            "X-Gitlab-Authentication-Type": "oidc",
            "X-Gitlab-Instance-Id": INSTANCE_ID,
            "X-Gitlab-Realm": "self-managed",
        },
        timeout=60,
    )


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_token_signed_by_the_instance_is_accepted(stack: Stack, expected_answer: str) -> None:
    response = call_gateway(stack, sign(stack, claims(stack)))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == expected_answer
    # As HTTP asks of a server with a clock; and no software banner.
    assert parsedate_to_datetime(response.headers["date"]).tzinfo is not None
    assert "server" not in response.headers


def test_tampered_payload_is_401(stack: Stack) -> None:
    header, _, signature = sign(stack, claims(stack, scopes=["complete_code"])).split(".")
    forged = b64(claims(stack, scopes=["complete_code", "duo_chat", "generate_code"]))
    response = call_gateway(stack, f"{header}.{forged}.{signature}")
    assert response.status_code == 401
    assert response.json()["error"].startswith("Forbidden by auth provider")


def test_tampered_signature_is_401(stack: Stack) -> None:
    token = sign(stack, claims(stack))
    head, payload, signature = token.split(".")
    flipped = ("A" if signature[5] != "A" else "B").join([signature[:5], signature[6:]])
    response = call_gateway(stack, f"{head}.{payload}.{flipped}")
    assert response.status_code == 401


def test_expired_token_is_401_and_says_so(stack: Stack) -> None:
    now = int(time.time())
    token = sign(stack, claims(stack, iat=now - 7200, nbf=now - 7200, exp=now - 3600))
    response = call_gateway(stack, token)
    assert response.status_code == 401
    assert "expired" in response.json()["error"]


def test_wrong_audience_is_401(stack: Stack) -> None:
    response = call_gateway(stack, sign(stack, claims(stack, aud="some-other-service")))
    assert response.status_code == 401
    assert "audience" in response.json()["error"]


def test_wrong_issuer_is_401(stack: Stack) -> None:
    response = call_gateway(stack, sign(stack, claims(stack, iss="http://evil.example")))
    assert response.status_code == 401
    assert "issuer" in response.json()["error"]


def test_alg_none_is_401(stack: Stack) -> None:
    token = (
        f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': instance_kid(stack)})}.{b64(claims(stack))}."
    )
    response = call_gateway(stack, token)
    assert response.status_code == 401


def test_same_kid_other_key_is_401(stack: Stack) -> None:
    intruder = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    response = call_gateway(stack, sign(stack, claims(stack), key=intruder))
    assert response.status_code == 401


def test_header_mismatch_is_401(stack: Stack) -> None:
    token = sign(stack, claims(stack, gitlab_instance_id=str(uuid.uuid4()), sub=str(uuid.uuid4())))
    response = call_gateway(stack, token)
    assert response.status_code == 401
    assert response.json() == {"error": "Header mismatch 'X-Gitlab-Instance-Id'"}


def test_missing_scope_is_403(stack: Stack) -> None:
    response = call_gateway(stack, sign(stack, claims(stack, scopes=["duo_chat"])))
    assert response.status_code == 403
    assert response.json() == {"detail": "Unauthorized to access code completions"}


@pytest.fixture()
def orphan_gateway(tmp_path: Path) -> Iterator[str]:
    """A gateway whose trusted instance does not exist (nothing listens on its port)."""
    dead_issuer = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    role = Role(
        "gateway",
        ["gateway", "--port", str(port)],
        f"http://127.0.0.1:{port}/monitoring/healthz",
        env={
            "ENCLAVE_GATEWAY__ISSUER_URL": dead_issuer,
            "ENCLAVE_GATEWAY__JWKS_FETCH_TIMEOUT_S": "1",
        },
    )
    role.start(tmp_path / "logs", stack_env(tmp_path))
    try:
        for _ in range(300):
            try:
                if httpx.get(role.ready_url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        role.stop()


def test_unreachable_issuer_is_a_distinct_503(stack: Stack, orphan_gateway: str) -> None:
    token = sign(stack, claims(stack))
    response = httpx.post(
        f"{orphan_gateway}/v2/code/completions",
        json=gateway_body(stack),
        headers={
            "Authorization": f"Bearer {token}",
            "X-Gitlab-Authentication-Type": "oidc",
            "X-Gitlab-Instance-Id": INSTANCE_ID,
            "X-Gitlab-Realm": "self-managed",
        },
        timeout=30,
    )
    assert response.status_code == 503
    message = response.json()["error"]
    assert "key" in message.lower()
    assert token not in response.text
    ready = httpx.get(f"{orphan_gateway}/monitoring/ready", timeout=30)
    assert ready.status_code == 503


def test_model_refuses_a_wrong_api_key(stack: Stack) -> None:
    wrong = httpx.get(
        f"{stack.model_url}/models", headers={"Authorization": "Bearer wrong-key"}, timeout=10
    )
    assert wrong.status_code == 401
    missing = httpx.get(f"{stack.model_url}/models", timeout=10)
    assert missing.status_code == 401
    right = httpx.get(
        f"{stack.model_url}/models",
        headers={"Authorization": f"Bearer {stack.model_api_key}"},
        timeout=10,
    )
    assert right.status_code == 200
