"""Request authentication: GitLab's status codes and body shapes, Enclave's clearer texts."""

from __future__ import annotations

import base64
import time
from typing import Any

import jwt
import orjson
import pytest
from gateway_fakes import Harness, HarnessFactory, jwk_of

from enclave.common import wire
from enclave.gateway.auth import verify

pytestmark = pytest.mark.anyio


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


async def _error(gw: Harness, headers: dict[str, str]) -> tuple[int, Any]:
    response = await gw.complete(headers=headers)
    assert response.headers["content-type"] == "application/json"
    return response.status_code, response.json()


async def test_valid_token_passes(gw: Harness) -> None:
    response = await gw.complete()
    assert response.status_code == 200, response.text


async def test_missing_authorization_header(gw: Harness) -> None:
    assert await _error(gw, gw.headers(Authorization=None)) == (
        401,
        {"error": "No authorization header presented"},
    )


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "token"])
async def test_not_a_bearer_header(gw: Harness, value: str) -> None:
    assert await _error(gw, gw.headers(Authorization=value)) == (
        401,
        {"error": "Invalid authorization header"},
    )


@pytest.mark.parametrize("auth_type", [None, "pat", ""])
async def test_authentication_type_must_be_oidc(gw: Harness, auth_type: str | None) -> None:
    headers = gw.headers(**{"X-Gitlab-Authentication-Type": auth_type})
    assert await _error(gw, headers) == (
        401,
        {"error": "Invalid authentication token type - only OIDC is supported"},
    )


async def test_headers_are_case_insensitive(gw: Harness) -> None:
    headers = {name.lower(): value for name, value in gw.headers().items()}
    headers["authorization"] = "bearer " + headers["authorization"].split(" ", 1)[1]
    assert (await gw.complete(headers=headers)).status_code == 200


async def test_expired_token(gw: Harness) -> None:
    token = gw.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200, nbf=None)
    assert await _error(gw, gw.headers(token)) == (401, {"error": verify.TOKEN_EXPIRED})
    assert verify.TOKEN_EXPIRED.startswith("Forbidden by auth provider: token expired")


async def test_expiry_within_leeway_is_accepted(gw: Harness) -> None:
    token = gw.token(exp=int(time.time()) - 5)  # default leeway is 30 s
    assert (await gw.complete(headers=gw.headers(token))).status_code == 200


async def test_not_yet_valid_token(gw: Harness) -> None:
    token = gw.token(nbf=int(time.time()) + 600)
    status, body = await _error(gw, gw.headers(token))
    assert (status, body) == (401, {"error": verify.TOKEN_NOT_YET_VALID})


async def test_wrong_audience(gw: Harness) -> None:
    token = gw.token(aud="gitlab-duo-workflow-service")
    assert await _error(gw, gw.headers(token)) == (401, {"error": verify.WRONG_AUDIENCE})
    assert verify.WRONG_AUDIENCE.startswith("Forbidden by auth provider: wrong audience")


@pytest.mark.parametrize("claim", ["aud", "exp"])
async def test_required_claims(gw: Harness, claim: str) -> None:
    token = gw.token(**{claim: None})
    status, body = await _error(gw, gw.headers(token))
    assert status == 401
    assert body == {"error": f"Forbidden by auth provider: the token has no '{claim}' claim"}


async def test_unknown_signing_key(gw: Harness) -> None:
    token = gw.token(kid="not-published")
    assert await _error(gw, gw.headers(token)) == (401, {"error": verify.UNKNOWN_KEY})
    assert verify.UNKNOWN_KEY.startswith("Forbidden by auth provider: unknown signing key")


async def test_invalid_signature(gw: Harness) -> None:
    # Signed by another key under the published key id.
    token = gw.token(key=gw.keys.rsa_other)
    assert await _error(gw, gw.headers(token)) == (401, {"error": verify.INVALID_SIGNATURE})


async def test_tampered_claims_fail_the_signature(gw: Harness) -> None:
    header, _, signature = gw.token().split(".")
    claims = jwt.decode(gw.token(), options={"verify_signature": False})
    claims["scopes"] = ["complete_code", "duo_chat", "admin"]
    token = f"{header}.{_b64(claims)}.{signature}"
    assert await _error(gw, gw.headers(token)) == (401, {"error": verify.INVALID_SIGNATURE})


async def test_untrusted_issuer(gw: Harness) -> None:
    token = gw.token(iss="https://evil.example.com")
    status, body = await _error(gw, gw.headers(token))
    assert status == 401
    assert body["error"].startswith("Forbidden by auth provider: untrusted issuer")
    assert gw.issuer.base in body["error"]  # says which issuer is trusted


async def test_alg_none_is_refused(gw: Harness) -> None:
    claims = jwt.decode(gw.token(), options={"verify_signature": False})
    token = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': 'key-1'})}.{_b64(claims)}."
    assert await _error(gw, gw.headers(token)) == (401, {"error": verify.ALGORITHM_NOT_ALLOWED})


async def test_hmac_with_the_public_key_is_refused(gw: Harness) -> None:
    # The classic confusion attack: HS256 keyed with the (public) RSA JWK.
    claims = jwt.decode(gw.token(), options={"verify_signature": False})
    header = {"alg": "HS256", "typ": "JWT", "kid": "key-1"}
    token = f"{_b64(header)}.{_b64(claims)}.c2lnbmF0dXJl"
    assert await _error(gw, gw.headers(token)) == (401, {"error": verify.ALGORITHM_NOT_ALLOWED})


async def test_algorithm_must_match_the_key_type(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness()
    gw.issuer.jwks = {"keys": [jwk_of(gw.keys.rsa, "key-1"), jwk_of(gw.keys.ec, "ec-1")]}
    # An ES256 token naming the RSA key's id.
    token = gw.token(key=gw.keys.ec, kid="key-1", alg="ES256")
    assert await _error(gw, gw.headers(token)) == (401, {"error": verify.ALGORITHM_MISMATCH})


async def test_es256_and_eddsa_tokens(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness()
    gw.issuer.jwks = {
        "keys": [
            jwk_of(gw.keys.rsa, "key-1"),
            jwk_of(gw.keys.ec, "ec-1", "ES256"),
            jwk_of(gw.keys.ed, "ed-1"),
        ]
    }
    es = gw.token(key=gw.keys.ec, kid="ec-1", alg="ES256")
    ed = gw.token(key=gw.keys.ed, kid="ed-1", alg="EdDSA")
    assert (await gw.complete(headers=gw.headers(es))).status_code == 200
    assert (await gw.complete(headers=gw.headers(ed))).status_code == 200


async def test_malformed_and_oversized_tokens(gw: Harness) -> None:
    for token in ("abc", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.!!!.sig"):
        assert await _error(gw, gw.headers(token)) == (401, {"error": verify.MALFORMED_TOKEN})
    big = gw.token(padding="x" * (17 * 1024))
    assert await _error(gw, gw.headers(big)) == (401, {"error": verify.TOKEN_TOO_LARGE})


async def test_instance_id_header_must_match(gw: Harness) -> None:
    headers = gw.headers(**{"X-Gitlab-Instance-Id": "another-instance"})
    assert await _error(gw, headers) == (401, {"error": "Header mismatch 'X-Gitlab-Instance-Id'"})
    headers = gw.headers(**{"X-Gitlab-Instance-Id": None})
    assert await _error(gw, headers) == (401, {"error": "Header mismatch 'X-Gitlab-Instance-Id'"})


async def test_instance_id_falls_back_to_sub(gw: Harness) -> None:
    token = gw.token(gitlab_instance_id=None)
    assert (await gw.complete(headers=gw.headers(token))).status_code == 200
    token = gw.token(gitlab_instance_id=None, sub="someone-else")
    assert await _error(gw, gw.headers(token)) == (
        401,
        {"error": "Header mismatch 'X-Gitlab-Instance-Id'"},
    )


async def test_realm_header_must_match(gw: Harness) -> None:
    headers = gw.headers(**{"X-Gitlab-Realm": wire.REALM_SAAS})
    assert await _error(gw, headers) == (401, {"error": "Header mismatch 'X-Gitlab-Realm'"})


async def test_missing_scope_is_403(gw: Harness) -> None:
    token = gw.token(scopes=["duo_chat"])
    response = await gw.complete(headers=gw.headers(token))
    assert response.status_code == 403
    assert response.json() == {"detail": "Unauthorized to access code completions"}
    generations = await gw.complete(
        path="/v2/code/generations", headers=gw.headers(gw.token(scopes=["complete_code"]))
    )
    assert generations.status_code == 403
    assert generations.json() == {"detail": "Unauthorized to access code generations"}


async def test_legacy_code_suggestions_scope(gw: Harness) -> None:
    token = gw.token(scopes=["code_suggestions"])
    assert (await gw.complete(headers=gw.headers(token))).status_code == 200
    response = await gw.complete(path="/v2/code/generations", headers=gw.headers(token))
    assert response.status_code == 200


async def test_issuer_unreachable_is_503_not_401(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(issuer_up=False)
    response = await gw.complete()
    assert response.status_code == 503
    message = response.json()["error"]
    assert message.startswith(f"The AI gateway cannot fetch the signing keys of {gw.issuer.base}")
    assert "(connection refused)" in message
    assert "ENCLAVE_GATEWAY__ISSUER_URL" in message
    # Still 503 on the next request (within the back-off no new fetch is even tried).
    assert (await gw.complete()).status_code == 503
    # Broken tokens are still told apart from an unreachable issuer where possible.
    missing = await gw.complete(headers=gw.headers(Authorization=None))
    assert missing.status_code == 401


async def test_issuer_unreachable_wins_over_an_untrusted_issuer(
    make_harness: HarnessFactory,
) -> None:
    # While the gateway can verify nothing at all, that is what every token is told.
    gw: Harness = await make_harness(issuer_up=False)
    response = await gw.complete(headers=gw.headers(gw.token(iss="http://other-instance:8080")))
    assert response.status_code == 503
    assert "cannot fetch the signing keys" in response.json()["error"]


async def test_issuer_answering_errors_is_503(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness()
    gw.issuer.fail_status = 500
    response = await gw.complete()
    assert response.status_code == 503
    assert "answered HTTP 500" in response.json()["error"]


async def test_discovery_issuer_must_match(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness()
    gw.issuer.advertised_issuer = "https://gitlab.example.com"
    response = await gw.complete()
    assert response.status_code == 503
    message = response.json()["error"]
    assert "names the issuer 'https://gitlab.example.com'" in message
    assert gw.issuer.jwks_hits == 0  # never trusted keys from a mismatching document


async def test_token_secret_never_logged(gw: Harness) -> None:
    import structlog

    token = gw.token()
    with structlog.testing.capture_logs() as logs:
        ok = await gw.complete(headers=gw.headers(token))
        bad = await gw.complete(headers=gw.headers(gw.token(aud="x")))
    assert (ok.status_code, bad.status_code) == (200, 401)
    requests = [entry for entry in logs if entry["event"] == "request"]
    assert len(requests) == 2
    for entry in requests:
        assert {"method", "route", "status", "duration_ms"} <= entry.keys()
    assert [entry["status"] for entry in requests] == [200, 401]
    assert token not in repr(logs)
