"""Direct access: POST /v1/code/user_access_token and the user tokens it signs."""

from __future__ import annotations

import asyncio
import errno
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from gateway_fakes import (
    INSTANCE_ID,
    MODEL_API_KEY,
    ROUTE_IDENTIFIER,
    ROUTE_MODEL_KEY,
    Harness,
    HarnessFactory,
    Keys,
    pem_of,
)
from starlette.datastructures import Headers

from enclave.config import EnclaveSettings, GatewaySettings
from enclave.gateway.app import create_app
from enclave.gateway.auth import self_signed
from enclave.gateway.auth.self_signed import SigningKeyError, load_or_create_signing_key

pytestmark = pytest.mark.anyio

PATH = "/v1/code/user_access_token"


async def test_mints_a_user_token(gw: Harness, keys: Keys) -> None:
    before = int(time.time())
    headers = gw.headers(**{"X-Gitlab-Global-User-Id": "gid://user/42"})
    response = await gw.client.post(PATH, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"token", "expires_at"}
    token, expires_at = body["token"], body["expires_at"]
    assert isinstance(expires_at, int) and before + 3600 <= expires_at <= int(time.time()) + 3600
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and header["typ"] == "JWT"
    assert header["kid"] == gw.app.state.gateway.user_tokens.kid
    claims = jwt.decode(
        token, keys.gateway.public_key(), algorithms=["RS256"], audience="gitlab-ai-gateway"
    )
    assert claims["iss"] == claims["aud"] == "gitlab-ai-gateway"
    assert claims["sub"] == "gid://user/42"
    assert claims["gitlab_realm"] == "self-managed"
    assert claims["gitlab_instance_id"] == INSTANCE_ID
    assert claims["scopes"] == ["complete_code"]
    assert claims["exp"] == expires_at
    assert claims["nbf"] == claims["iat"] - 5
    assert len(claims["jti"]) == 32
    assert gw.model.requests == []


async def test_user_token_serves_completions_with_the_administrators_model(gw: Harness) -> None:
    token = await gw.user_token("user-7")
    response = await gw.complete(gw.user_body(), headers=gw.user_headers(token, "user-7"))
    assert response.status_code == 200, response.text
    [call] = gw.model.requests
    assert call.headers["Authorization"] == f"Bearer {ROUTE_MODEL_KEY}"
    assert call.json["model"] == ROUTE_IDENTIFIER.removeprefix("custom_openai/")
    assert response.json()["model"]["name"] == "codestral"  # the route's family


async def test_user_token_may_echo_the_administrators_model(gw: Harness) -> None:
    # An IDE that repeats what it was told (the same endpoint and identifier) is not refused.
    token = await gw.user_token()
    body = gw.user_body(
        model_provider="litellm",
        model_endpoint=gw.model.endpoint + "/",
        model_identifier=ROUTE_IDENTIFIER,
    )
    response = await gw.complete(body, headers=gw.user_headers(token))
    assert response.status_code == 200, response.text
    [call] = gw.model.requests
    assert call.headers["Authorization"] == f"Bearer {ROUTE_MODEL_KEY}"


async def test_user_token_on_a_gateway_without_routes_is_503(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(routes=False)
    token = await gw.user_token()
    response = await gw.complete(gw.user_body(), headers=gw.user_headers(token))
    assert response.status_code == 503
    assert response.json()["detail"].startswith("Direct access is not available on this gateway")
    assert gw.model.requests == []


async def test_user_token_while_the_routes_are_out_of_date_is_503(gw: Harness) -> None:
    gw.issuer.routes_status = 500
    gw.clock.advance(10_000)  # past the stale window: the last routes no longer serve
    token = await gw.user_token()
    response = await gw.complete(gw.user_body(), headers=gw.user_headers(token))
    # The revocation check fails closed first (it needs the same routes document).
    assert response.status_code == 503
    message = response.json()["error"]
    assert "cannot check whether this token was revoked" in message
    assert "out of date" in message and "None" not in message
    assert gw.model.requests == []


async def test_user_token_for_an_unassigned_feature_is_403(gw: Harness) -> None:
    gw.issuer.routes = {
        "version": 1,
        "routes": [
            {
                "feature": "code_completions",
                "unit_primitive": "complete_code",
                "available": False,
                "reason": "disabled",
                "message": "Code completions are disabled on this instance.",
            }
        ],
    }
    assert await gw.app.state.gateway.routes_table.refresh()
    token = await gw.user_token()
    response = await gw.complete(gw.user_body(), headers=gw.user_headers(token))
    assert response.status_code == 403
    assert response.json() == {"detail": "Code completions are disabled on this instance."}
    assert gw.model.requests == []


async def test_instance_token_still_names_the_model(gw: Harness) -> None:
    # GitLab's instance sends the administrator's model in the body: used as sent.
    response = await gw.complete()
    assert response.status_code == 200, response.text
    [call] = gw.model.requests
    assert call.headers["Authorization"] == f"Bearer {MODEL_API_KEY}"
    assert call.json["model"] == "codestral-local"


async def test_user_token_must_match_the_user_header(gw: Harness) -> None:
    token = await gw.user_token("user-7")
    for user in ("user-8", None):
        headers = gw.headers(token, **{"X-Gitlab-Global-User-Id": user})
        response = await gw.complete(headers=headers)
        assert response.status_code == 401
        assert response.json() == {"error": "Header mismatch 'X-Gitlab-Global-User-Id'"}
    wrong_instance = gw.user_headers(token, "user-7", **{"X-Gitlab-Instance-Id": "other"})
    response = await gw.complete(headers=wrong_instance)
    assert response.json() == {"error": "Header mismatch 'X-Gitlab-Instance-Id'"}
    assert gw.model.requests == []


async def test_user_token_grants_complete_code_only(gw: Harness) -> None:
    token = await gw.user_token()
    response = await gw.complete(path="/v2/code/generations", headers=gw.user_headers(token))
    assert response.status_code == 403
    assert response.json() == {"detail": "Unauthorized to access code generations"}
    authenticator = gw.app.state.gateway.authenticator
    principal = await authenticator.authenticate(Headers(gw.user_headers(token)))
    assert principal.user_token and principal.scopes == frozenset({"complete_code"})


async def test_user_token_cannot_mint_another(gw: Harness) -> None:
    token = await gw.user_token()
    response = await gw.client.post(PATH, headers=gw.user_headers(token))
    assert response.status_code == 403
    assert response.json() == {
        "detail": "Unauthorized to create user access token: a user token cannot create "
        "another token"
    }


@pytest.mark.parametrize("scopes", [["generate_code"], ["duo_chat"], []])
async def test_instance_token_needs_the_scope(gw: Harness, scopes: list[str]) -> None:
    headers = gw.headers(gw.token(scopes=scopes))
    response = await gw.client.post(PATH, headers=headers)
    assert response.status_code == 403
    assert response.json()["detail"].startswith("Unauthorized to create user access token")


async def test_legacy_scope_may_mint(gw: Harness) -> None:
    response = await gw.client.post(PATH, headers=gw.headers(gw.token(scopes=["code_suggestions"])))
    assert response.status_code == 200


@pytest.mark.parametrize("user", [None, "", "   "])
async def test_user_id_is_required(gw: Harness, user: str | None) -> None:
    response = await gw.client.post(PATH, headers=gw.headers(**{"X-Gitlab-Global-User-Id": user}))
    assert response.status_code == 400
    assert response.json()["detail"].startswith("Missing X-Gitlab-Global-User-Id header")


async def test_minting_is_authenticated(gw: Harness) -> None:
    response = await gw.client.post(PATH, headers=gw.headers(Authorization=None))
    assert response.status_code == 401
    response = await gw.client.post(PATH, headers=gw.headers(gw.token(aud="other")))
    assert response.status_code == 401
    response = await gw.client.post(
        PATH, headers=gw.headers(**{"X-Gitlab-Realm": "saas", "X-Gitlab-Global-User-Id": "u"})
    )
    assert response.json() == {"error": "Header mismatch 'X-Gitlab-Realm'"}


async def test_expired_user_token_is_refused(gw: Harness, keys: Keys) -> None:
    issuer = gw.app.state.gateway.user_tokens
    expired = self_signed.UserTokenIssuer(
        keys.gateway, 3600, wall_clock=lambda: time.time() - 7200
    ).mint(user_id="user-1", realm="self-managed", instance_id=INSTANCE_ID)
    assert jwt.get_unverified_header(expired.token)["kid"] == issuer.kid
    response = await gw.complete(headers=gw.user_headers(expired.token))
    assert response.status_code == 401
    assert "token expired" in response.json()["error"]


async def test_user_token_lifetime_setting(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(user_token_lifetime_s=120)
    token = await gw.user_token()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120


# -- the signing key ------------------------------------------------------------------------


def _settings(tmp_path: Path, **gateway: object) -> EnclaveSettings:
    return EnclaveSettings(data_dir=tmp_path / "data", gateway=GatewaySettings(**gateway))  # type: ignore[arg-type]


def test_key_is_generated_private_and_reused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    key, path = load_or_create_signing_key(settings)
    assert path == tmp_path / "data" / "keys" / "gateway-signing.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert key.key_size == 2048
    again, _ = load_or_create_signing_key(settings)
    assert again.private_numbers() == key.private_numbers()
    assert [p.name for p in path.parent.iterdir()] == ["gateway-signing.pem"]  # no temp files


async def test_workers_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    results = await asyncio.gather(
        *(asyncio.to_thread(load_or_create_signing_key, settings) for _ in range(4))
    )
    numbers = {key.private_numbers().d for key, _ in results}
    assert len(numbers) == 1


def test_configured_key_file(tmp_path: Path, keys: Keys) -> None:
    path = tmp_path / "mine.pem"
    path.write_bytes(pem_of(keys.gateway))
    key, found = load_or_create_signing_key(_settings(tmp_path, self_signing_key_file=path))
    assert found == path
    assert key.private_numbers() == keys.gateway.private_numbers()


def test_configured_key_file_must_exist(tmp_path: Path) -> None:
    settings = _settings(tmp_path, self_signing_key_file=tmp_path / "missing.pem")
    with pytest.raises(SigningKeyError, match="does not exist"):
        load_or_create_signing_key(settings)
    with pytest.raises(SigningKeyError):
        create_app(settings)  # a configured key that cannot be used stops the start


@pytest.mark.parametrize("kind", ["garbage", "ec", "small"])
def test_unusable_key_files(tmp_path: Path, keys: Keys, kind: str) -> None:
    path = tmp_path / "key.pem"
    if kind == "garbage":
        path.write_bytes(b"not a key")
    elif kind == "ec":
        path.write_bytes(pem_of(keys.ec))
    else:
        small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - must be refused
        path.write_bytes(pem_of(small))
    with pytest.raises(SigningKeyError):
        load_or_create_signing_key(_settings(tmp_path, self_signing_key_file=path))


def test_unwritable_data_dir_disables_only_direct_access(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(path: Path) -> rsa.RSAPrivateKey:
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(self_signed, "_create", read_only)
    app = create_app(_settings(tmp_path))
    gateway = app.state.gateway
    assert gateway.user_tokens is None
    assert gateway.authenticator.local is None  # nothing to verify user tokens with
    assert "cannot create the gateway signing key" in (gateway.signing_key_problem or "")
    assert "Read-only file system" in (gateway.signing_key_problem or "")


async def test_without_a_key_the_endpoint_says_why(gw: Harness) -> None:
    gateway = gw.app.state.gateway
    gateway.user_tokens = None
    gateway.signing_key_problem = "cannot create the gateway signing key /x (Read-only)"
    response = await gw.client.post(PATH, headers=gw.headers())
    assert response.status_code == 503
    assert "Direct access is unavailable" in response.json()["detail"]
    assert "Read-only" in response.json()["detail"]
