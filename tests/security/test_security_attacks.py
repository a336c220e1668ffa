"""Attack suite: every case must be refused with the exact status, and reach no model.

Each case runs against a real gateway app (in process) wired to a fake issuer and a fake
OpenAI-compatible model server (``tests/unit/gateway/gateway_fakes.py``); after the attack the
model server must have received nothing. The run prints ``security attack cases: N passed``.

Groups: forged and malformed tokens, request headers, scopes and user tokens (direct access),
the issuer's key endpoint misbehaving, model egress (SSRF), client addresses, and the odd
request.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from gateway_fakes import INSTANCE_ID, FakeIssuer, Harness, HarnessFactory, jwk_of

from enclave.common import wire
from enclave.gateway.auth import verify
from enclave.gateway.auth.self_signed import UserTokenIssuer

pytestmark = pytest.mark.anyio

# An attacker's keys: never published by any trusted issuer.
ATTACKER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


# -- helpers --------------------------------------------------------------------------------


def b64(data: bytes | dict[str, Any]) -> str:
    raw = orjson.dumps(data) if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(gw: Harness, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": gw.issuer.base,
        "sub": INSTANCE_ID,
        "gitlab_instance_id": INSTANCE_ID,
        "aud": wire.AUDIENCE,
        "gitlab_realm": wire.REALM_SELF_MANAGED,
        "scopes": [wire.UP_COMPLETE_CODE, wire.UP_GENERATE_CODE],
        "iat": now,
        "nbf": now - 5,
        "exp": now + 3600,
        "jti": uuid.uuid4().hex,
    }
    payload.update(overrides)
    return {name: value for name, value in payload.items() if value is not None}


def rs256(key: rsa.RSAPrivateKey, header: dict[str, Any] | bytes, payload: bytes) -> str:
    """A token with exactly these header and payload bytes, validly RS256-signed by ``key``."""
    signing_input = f"{b64(header)}.{b64(payload)}".encode()
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{b64(signature)}"


def hs(
    secret: bytes, header: dict[str, Any], payload: dict[str, Any], digest: Any = hashlib.sha256
) -> str:
    """An HMAC-signed token, as an attacker holding only public material would make it."""
    signing_input = f"{b64(header)}.{b64(payload)}".encode()
    signature = hmac.new(secret, signing_input, digest).digest()
    return f"{signing_input.decode()}.{b64(signature)}"


def public_pem(gw: Harness) -> bytes:
    return gw.keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def valid_header(kid: str = "key-1", **extra: Any) -> dict[str, Any]:
    return {"alg": "RS256", "typ": "JWT", "kid": kid, **extra}


def flip(segment: str, index: int = 5) -> str:
    swapped = "A" if segment[index] != "A" else "B"
    return segment[:index] + swapped + segment[index + 1 :]


async def refused(
    gw: Harness,
    response: httpx.Response,
    status: int,
    *,
    error: str | None = None,
    error_starts: str | None = None,
    detail_has: str | None = None,
) -> None:
    """The attack got exactly ``status`` and nothing reached the model."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if error is not None:
        assert body == {"error": error}
    if error_starts is not None:
        assert set(body) == {"error"} and body["error"].startswith(error_starts), body
    if detail_has is not None:
        assert set(body) == {"detail"} and detail_has in str(body["detail"]), body
    assert gw.model.requests == [], "the attack reached the model server"


# -- tokens ---------------------------------------------------------------------------------

Build = Callable[[Harness], str]


def now() -> int:
    # Read when each token is made, not at import: `make test` reaches these cases more than
    # ten minutes after collection, when an import-time "now + 600" is already in the past.
    return int(time.time())


@dataclass(frozen=True)
class TokenCase:
    build: Build
    status: int
    error: str | None = None  # exact {"error": ...}
    starts: str | None = None  # or its beginning
    publish: Callable[[Harness], list[dict[str, Any]]] | None = None  # issuer's JWKS


def _tampered_payload(gw: Harness) -> str:
    header, _, signature = gw.token().split(".")
    escalated = claims(gw, scopes=["complete_code", "generate_code", "duo_chat", "admin"])
    return f"{header}.{b64(escalated)}.{signature}"


def _tampered_header(gw: Harness) -> str:
    _, payload, signature = gw.token().split(".")
    return f"{b64(valid_header('key-2'))}.{payload}.{signature}"


def _tampered_signature(gw: Harness) -> str:
    header, payload, signature = gw.token().split(".")
    return f"{header}.{payload}.{flip(signature, 10)}"


def _transplanted_signature(gw: Harness) -> str:
    header, payload, _ = gw.token(scopes=["duo_chat"]).split(".")
    signature = gw.token().split(".")[2]
    return f"{header}.{payload}.{signature}"


def _two_keys(gw: Harness) -> list[dict[str, Any]]:
    return [jwk_of(gw.keys.rsa, "key-1"), jwk_of(gw.keys.rsa_other, "key-2")]


def _rsa_and_ec(gw: Harness) -> list[dict[str, Any]]:
    return [jwk_of(gw.keys.rsa, "key-1"), jwk_of(gw.keys.ec, "ec-1", "ES256")]


def _rsa_ec_ed(gw: Harness) -> list[dict[str, Any]]:
    return [*_rsa_and_ec(gw), jwk_of(gw.keys.ed, "ed-1")]


def _signed_claims(gw: Harness, payload: bytes, header: dict[str, Any] | None = None) -> str:
    return rs256(gw.keys.rsa, header or valid_header(), payload)


def _claims_bytes(gw: Harness, **overrides: Any) -> bytes:
    return orjson.dumps(claims(gw, **overrides))


FORBIDDEN = "Forbidden by auth provider: "

TOKEN_CASES: dict[str, TokenCase] = {
    "expired": TokenCase(
        lambda gw: gw.token(exp=now() - 3600, iat=now() - 7200, nbf=None),
        401,
        verify.TOKEN_EXPIRED,
    ),
    "expired_just_past_the_leeway": TokenCase(
        lambda gw: gw.token(exp=int(time.time()) - 31), 401, verify.TOKEN_EXPIRED
    ),
    "not_yet_valid": TokenCase(
        lambda gw: gw.token(nbf=now() + 600), 401, verify.TOKEN_NOT_YET_VALID
    ),
    "issued_in_the_future": TokenCase(
        lambda gw: gw.token(iat=now() + 600, nbf=None), 401, verify.TOKEN_NOT_YET_VALID
    ),
    "wrong_audience": TokenCase(
        lambda gw: gw.token(aud="gitlab-duo-workflow-service"), 401, verify.WRONG_AUDIENCE
    ),
    "audience_list_without_the_gateway": TokenCase(
        lambda gw: gw.token(aud=["a", "b"]), 401, verify.WRONG_AUDIENCE
    ),
    "missing_audience": TokenCase(
        lambda gw: gw.token(aud=None), 401, f"{FORBIDDEN}the token has no 'aud' claim"
    ),
    "missing_expiry": TokenCase(
        lambda gw: gw.token(exp=None), 401, f"{FORBIDDEN}the token has no 'exp' claim"
    ),
    "missing_issuer": TokenCase(
        lambda gw: gw.token(iss=None), 401, f"{FORBIDDEN}the token has no 'iss' claim"
    ),
    "wrong_issuer": TokenCase(
        lambda gw: gw.token(iss="https://evil.example"), 401, starts=f"{FORBIDDEN}untrusted issuer"
    ),
    "untrusted_issuer_copying_a_trusted_kid": TokenCase(
        lambda gw: gw.token(iss="https://evil.example", key=ATTACKER, kid="key-1"),
        401,
        starts=f"{FORBIDDEN}untrusted issuer",
    ),
    "trusted_issuer_name_signed_by_an_attacker": TokenCase(
        lambda gw: gw.token(key=ATTACKER, kid="key-1"), 401, verify.INVALID_SIGNATURE
    ),
    "unknown_kid": TokenCase(lambda gw: gw.token(kid="not-published"), 401, verify.UNKNOWN_KEY),
    "no_kid_while_several_keys_are_published": TokenCase(
        lambda gw: jwt.encode(claims(gw), gw.keys.rsa, algorithm="RS256"),
        401,
        verify.AMBIGUOUS_KEY,
        publish=_two_keys,
    ),
    "no_kid_signed_by_an_attacker": TokenCase(
        lambda gw: jwt.encode(claims(gw), ATTACKER, algorithm="RS256"),
        401,
        verify.INVALID_SIGNATURE,
    ),
    "kid_path_traversal": TokenCase(
        lambda gw: gw.token(kid="../../../../etc/passwd"), 401, verify.UNKNOWN_KEY
    ),
    "kid_very_long": TokenCase(lambda gw: gw.token(kid="k" * 8000), 401, verify.UNKNOWN_KEY),
    "kid_not_a_string": TokenCase(
        lambda gw: rs256(gw.keys.rsa, {**valid_header(), "kid": 1}, _claims_bytes(gw)),
        401,
        f"{FORBIDDEN}the token's key id ('kid') is not a string",
    ),
    "alg_none": TokenCase(
        lambda gw: f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': 'key-1'})}.{b64(claims(gw))}.",
        401,
        verify.ALGORITHM_NOT_ALLOWED,
    ),
    "alg_none_mixed_case": TokenCase(
        lambda gw: f"{b64({'alg': 'nOnE', 'kid': 'key-1'})}.{b64(claims(gw))}.",
        401,
        verify.ALGORITHM_NOT_ALLOWED,
    ),
    "alg_missing": TokenCase(
        lambda gw: rs256(gw.keys.rsa, {"typ": "JWT", "kid": "key-1"}, _claims_bytes(gw)),
        401,
        verify.ALGORITHM_NOT_ALLOWED,
    ),
    "alg_as_a_list": TokenCase(
        lambda gw: rs256(gw.keys.rsa, {**valid_header(), "alg": ["RS256"]}, _claims_bytes(gw)),
        401,
        verify.ALGORITHM_NOT_ALLOWED,
    ),
    "hs256_signed_with_the_public_key_pem": TokenCase(
        lambda gw: hs(public_pem(gw), {"alg": "HS256", "kid": "key-1"}, claims(gw)),
        401,
        verify.ALGORITHM_NOT_ALLOWED,
    ),
    "hs256_signed_with_the_public_jwk": TokenCase(
        lambda gw: hs(
            orjson.dumps(jwk_of(gw.keys.rsa, "key-1")),
            {"alg": "HS256", "kid": "key-1"},
            claims(gw),
        ),
        401,
        verify.ALGORITHM_NOT_ALLOWED,
    ),
    "hs512_signed_with_the_public_key": TokenCase(
        lambda gw: hs(public_pem(gw), {"alg": "HS512", "kid": "key-1"}, claims(gw), hashlib.sha512),
        401,
        verify.ALGORITHM_NOT_ALLOWED,
    ),
    "es256_token_naming_an_rsa_key": TokenCase(
        lambda gw: gw.token(key=gw.keys.ec, kid="key-1", alg="ES256"),
        401,
        verify.ALGORITHM_MISMATCH,
        publish=_rsa_and_ec,
    ),
    "rs256_token_naming_an_ec_key": TokenCase(
        lambda gw: gw.token(key=gw.keys.rsa, kid="ec-1", alg="RS256"),
        401,
        verify.ALGORITHM_MISMATCH,
        publish=_rsa_and_ec,
    ),
    "eddsa_token_naming_an_rsa_key": TokenCase(
        lambda gw: gw.token(key=gw.keys.ed, kid="key-1", alg="EdDSA"),
        401,
        verify.ALGORITHM_MISMATCH,
        publish=_rsa_ec_ed,
    ),
    "es256_token_naming_an_eddsa_key": TokenCase(
        lambda gw: gw.token(key=gw.keys.ec, kid="ed-1", alg="ES256"),
        401,
        verify.ALGORITHM_MISMATCH,
        publish=_rsa_ec_ed,
    ),
    "ps256_with_the_published_rsa_key": TokenCase(
        lambda gw: gw.token(alg="PS256"), 401, verify.ALGORITHM_NOT_ALLOWED
    ),
    "rs512_with_the_published_rsa_key": TokenCase(
        lambda gw: gw.token(alg="RS512"), 401, verify.ALGORITHM_NOT_ALLOWED
    ),
    "tampered_payload": TokenCase(_tampered_payload, 401, verify.INVALID_SIGNATURE),
    "tampered_header": TokenCase(
        _tampered_header, 401, verify.INVALID_SIGNATURE, publish=_two_keys
    ),
    "tampered_signature": TokenCase(_tampered_signature, 401, verify.INVALID_SIGNATURE),
    "signature_from_another_token": TokenCase(
        _transplanted_signature, 401, verify.INVALID_SIGNATURE
    ),
    "signature_stripped": TokenCase(
        lambda gw: gw.token().rsplit(".", 1)[0] + ".", 401, verify.INVALID_SIGNATURE
    ),
    "truncated_token": TokenCase(lambda gw: gw.token()[:-10], 401, verify.INVALID_SIGNATURE),
    "truncated_to_two_segments": TokenCase(
        lambda gw: gw.token().rsplit(".", 1)[0], 401, verify.MALFORMED_TOKEN
    ),
    "five_segments_jwe_shape": TokenCase(
        lambda gw: gw.token() + ".abc.def", 401, verify.MALFORMED_TOKEN
    ),
    "oversize_token": TokenCase(
        lambda gw: gw.token(padding="x" * (17 * 1024)), 401, verify.TOKEN_TOO_LARGE
    ),
    "non_json_header": TokenCase(
        lambda gw: f"{b64(b'not json')}.{b64(claims(gw))}.c2ln",
        401,
        f"{FORBIDDEN}the token's header is not JSON",
    ),
    "header_is_a_json_array": TokenCase(
        lambda gw: f"{b64(b'[1,2]')}.{b64(claims(gw))}.c2ln",
        401,
        f"{FORBIDDEN}the token's header is not a JSON object",
    ),
    "payload_not_base64url": TokenCase(
        lambda gw: f"{b64(valid_header())}.%%%.c2ln", 401, verify.MALFORMED_TOKEN
    ),
    "padded_base64": TokenCase(
        lambda gw: f"{b64(valid_header())}=.{b64(claims(gw))}.c2ln", 401, verify.MALFORMED_TOKEN
    ),
    "non_ascii_token": TokenCase(lambda gw: gw.token()[:-3] + "ü", 401, verify.MALFORMED_TOKEN),
    "deeply_nested_payload": TokenCase(
        lambda gw: _signed_claims(gw, b'{"a":' * 1500 + b"1" + b"}" * 1500),
        401,
        f"{FORBIDDEN}the token's payload is not JSON",
    ),
    "duplicate_claims_validly_signed": TokenCase(
        lambda gw: _signed_claims(gw, _claims_bytes(gw)[:-1] + b',"scopes":["duo_chat","admin"]}'),
        401,
        f"{FORBIDDEN}duplicate members in the token's JSON",
    ),
    "duplicate_header_members": TokenCase(
        lambda gw: rs256(
            gw.keys.rsa, b'{"alg":"RS256","kid":"key-1","alg":"HS256"}', _claims_bytes(gw)
        ),
        401,
        f"{FORBIDDEN}duplicate members in the token's JSON",
    ),
    "expiry_infinity_validly_signed": TokenCase(
        lambda gw: _signed_claims(gw, _claims_bytes(gw, exp=None)[:-1] + b',"exp":Infinity}'),
        401,
        f"{FORBIDDEN}non-standard JSON number Infinity in the token",
    ),
    "expiry_overflowing_float_validly_signed": TokenCase(
        lambda gw: _signed_claims(gw, _claims_bytes(gw, exp=None)[:-1] + b',"exp":1e999}'),
        401,
        f"{FORBIDDEN}the token's 'exp' claim is out of range",
    ),
    "expiry_as_a_string": TokenCase(
        lambda gw: gw.token(exp=str(now() + 3600)),
        401,
        f"{FORBIDDEN}the token's 'exp' claim is not a number",
    ),
    "expiry_as_a_boolean": TokenCase(
        lambda gw: gw.token(exp=True), 401, f"{FORBIDDEN}the token's 'exp' claim is not a number"
    ),
    "expiry_far_beyond_any_clock": TokenCase(
        lambda gw: gw.token(exp=10**30), 401, f"{FORBIDDEN}the token's 'exp' claim is out of range"
    ),
    "crit_header_validly_signed": TokenCase(
        lambda gw: rs256(gw.keys.rsa, valid_header(crit=["exp"]), _claims_bytes(gw)),
        401,
        f"{FORBIDDEN}unsupported token header parameter 'crit'",
    ),
    "typ_not_jwt_validly_signed": TokenCase(
        lambda gw: rs256(gw.keys.rsa, valid_header(typ="logout+jwt"), _claims_bytes(gw)),
        401,
        f"{FORBIDDEN}the token's type ('typ') is not JWT",
    ),
    "embedded_jwk_header_with_the_attackers_key": TokenCase(
        lambda gw: rs256(ATTACKER, valid_header(jwk=jwk_of(ATTACKER, "key-1")), _claims_bytes(gw)),
        401,
        verify.INVALID_SIGNATURE,
    ),
    "x5c_header_with_the_attackers_key": TokenCase(
        lambda gw: rs256(ATTACKER, valid_header(x5c=["MIIBIjAN"]), _claims_bytes(gw)),
        401,
        verify.INVALID_SIGNATURE,
    ),
}


@pytest.mark.parametrize("case", list(TOKEN_CASES.values()), ids=list(TOKEN_CASES))
async def test_forged_or_malformed_token(make_harness: HarnessFactory, case: TokenCase) -> None:
    gw: Harness = await make_harness()
    if case.publish is not None:
        gw.issuer.jwks = {"keys": case.publish(gw)}
    token = case.build(gw)
    try:
        headers = gw.headers(token)
        response = await gw.complete(headers=headers)
    except UnicodeEncodeError:
        # httpx refuses non-ASCII header values; send the raw bytes as a server would see them.
        response = await _raw_post(gw, token.encode("utf-8"))
    await refused(gw, response, case.status, error=case.error, error_starts=case.starts)


async def _raw_post(gw: Harness, token: bytes) -> httpx.Response:
    """POST with a raw (non-ASCII) Authorization value straight into the ASGI app."""
    headers = [
        (name.lower().encode(), value.encode())
        for name, value in gw.headers().items()
        if name != "Authorization"
    ]
    headers.append((b"authorization", b"Bearer " + token))
    status, body = await _asgi_call(gw, headers)
    return httpx.Response(status, content=body, headers={"content-type": "application/json"})


async def _asgi_call(
    gw: Harness,
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] | None = ("127.0.0.1", 1),
) -> tuple[int, bytes]:
    body = orjson.dumps(gw.body())
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v2/code/completions",
        "raw_path": b"/v2/code/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [*headers, (b"content-type", b"application/json")],
        "client": client,
        "server": ("gw", 80),
        "state": {},
    }
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Any) -> None:
        sent.append(message)

    await gw.app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, content


# -- request headers ------------------------------------------------------------------------

HEADER_CASES: dict[str, tuple[dict[str, str | None], str]] = {
    "no_authorization_header": ({"Authorization": None}, verify.NO_AUTH_HEADER),
    "basic_authentication": ({"Authorization": "Basic dXNlcjpwYXNz"}, verify.INVALID_AUTH_HEADER),
    "bearer_without_a_token": ({"Authorization": "Bearer "}, verify.INVALID_AUTH_HEADER),
    "two_tokens_in_one_header": (
        {"Authorization": "Bearer a.b.c d.e.f"},
        verify.INVALID_AUTH_HEADER,
    ),
    "authentication_type_missing": (
        {"X-Gitlab-Authentication-Type": None},
        verify.INVALID_AUTH_TYPE,
    ),
    "authentication_type_not_oidc": (
        {"X-Gitlab-Authentication-Type": "pat"},
        verify.INVALID_AUTH_TYPE,
    ),
    "instance_id_header_mismatch": (
        {"X-Gitlab-Instance-Id": "another-instance"},
        "Header mismatch 'X-Gitlab-Instance-Id'",
    ),
    "instance_id_header_missing": (
        {"X-Gitlab-Instance-Id": None},
        "Header mismatch 'X-Gitlab-Instance-Id'",
    ),
    "realm_header_mismatch": ({"X-Gitlab-Realm": "saas"}, "Header mismatch 'X-Gitlab-Realm'"),
    "realm_header_missing": ({"X-Gitlab-Realm": None}, "Header mismatch 'X-Gitlab-Realm'"),
}


@pytest.mark.parametrize("overrides,error", list(HEADER_CASES.values()), ids=list(HEADER_CASES))
async def test_bad_request_headers(
    gw: Harness, overrides: dict[str, str | None], error: str
) -> None:
    response = await gw.complete(headers=gw.headers(**overrides))
    await refused(gw, response, 401, error=error)


async def test_token_without_realm_claim_and_no_realm_header(gw: Harness) -> None:
    # A missing claim never matches a missing header.
    token = gw.token(gitlab_realm=None)
    response = await gw.complete(headers=gw.headers(token, **{"X-Gitlab-Realm": None}))
    await refused(gw, response, 401, error="Header mismatch 'X-Gitlab-Realm'")


async def test_token_without_instance_claims_and_no_instance_header(gw: Harness) -> None:
    token = gw.token(gitlab_instance_id=None, sub=None)
    response = await gw.complete(headers=gw.headers(token, **{"X-Gitlab-Instance-Id": None}))
    await refused(gw, response, 401, error="Header mismatch 'X-Gitlab-Instance-Id'")


# -- scopes and user tokens (direct access) -------------------------------------------------


async def test_scope_missing(gw: Harness) -> None:
    response = await gw.complete(headers=gw.headers(gw.token(scopes=["duo_chat"])))
    await refused(gw, response, 403, detail_has="Unauthorized to access code completions")


async def test_scope_of_another_feature(gw: Harness) -> None:
    headers = gw.headers(gw.token(scopes=["complete_code"]))
    response = await gw.complete(path="/v2/code/generations", headers=headers)
    await refused(gw, response, 403, detail_has="Unauthorized to access code generations")


async def test_scopes_that_are_not_strings(gw: Harness) -> None:
    token = gw.token(scopes=[["complete_code"], {"complete_code": True}, 1])
    response = await gw.complete(headers=gw.headers(token))
    await refused(gw, response, 403, detail_has="Unauthorized to access code completions")


async def test_scopes_as_an_object(gw: Harness) -> None:
    token = gw.token(scopes={"complete_code": True})
    response = await gw.complete(headers=gw.headers(token))
    await refused(gw, response, 403, detail_has="Unauthorized to access code completions")


async def test_user_token_replayed_on_another_endpoint(gw: Harness) -> None:
    token = await gw.user_token()
    response = await gw.complete(path="/v2/code/generations", headers=gw.user_headers(token))
    await refused(gw, response, 403, detail_has="Unauthorized to access code generations")


async def test_user_token_minting_another(gw: Harness) -> None:
    token = await gw.user_token()
    response = await gw.client.post("/v1/code/user_access_token", headers=gw.user_headers(token))
    await refused(gw, response, 403, detail_has="a user token cannot create another token")


async def test_user_token_for_another_user(gw: Harness) -> None:
    token = await gw.user_token("user-1")
    response = await gw.complete(headers=gw.user_headers(token, "user-2"))
    await refused(gw, response, 401, error="Header mismatch 'X-Gitlab-Global-User-Id'")


async def test_user_token_without_the_user_header(gw: Harness) -> None:
    token = await gw.user_token("user-1")
    headers = gw.headers(token, **{"X-Gitlab-Global-User-Id": None})
    response = await gw.complete(headers=headers)
    await refused(gw, response, 401, error="Header mismatch 'X-Gitlab-Global-User-Id'")


async def test_user_token_for_another_instance(gw: Harness) -> None:
    token = await gw.user_token("user-1")
    headers = gw.user_headers(token, **{"X-Gitlab-Instance-Id": "other-instance"})
    response = await gw.complete(headers=headers)
    await refused(gw, response, 401, error="Header mismatch 'X-Gitlab-Instance-Id'")


async def test_user_token_in_another_realm(gw: Harness) -> None:
    token = await gw.user_token("user-1")
    response = await gw.complete(headers=gw.user_headers(token, **{"X-Gitlab-Realm": "saas"}))
    await refused(gw, response, 401, error="Header mismatch 'X-Gitlab-Realm'")


async def test_forged_user_token(gw: Harness) -> None:
    kid = gw.app.state.gateway.user_tokens.kid
    forged = UserTokenIssuer(ATTACKER, 3600).mint(
        user_id="user-1", realm="self-managed", instance_id=INSTANCE_ID
    )
    _, payload, _ = forged.token.split(".")
    assert jwt.get_unverified_header(forged.token)["kid"] != kid
    response = await gw.complete(headers=gw.user_headers(forged.token))
    await refused(gw, response, 401, error=verify.UNKNOWN_KEY)
    copied_kid = rs256(
        ATTACKER,
        valid_header(kid),
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)),
    )
    response = await gw.complete(headers=gw.user_headers(copied_kid))
    await refused(gw, response, 401, error=verify.INVALID_SIGNATURE)


async def test_user_token_claiming_more_scopes(gw: Harness) -> None:
    # Even a token signed with the gateway's own key only ever grants complete_code.
    now = int(time.time())
    escalated = jwt.encode(
        {
            "iss": "gitlab-ai-gateway",
            "aud": "gitlab-ai-gateway",
            "sub": "user-1",
            "gitlab_realm": "self-managed",
            "gitlab_instance_id": INSTANCE_ID,
            "scopes": ["complete_code", "generate_code", "code_suggestions"],
            "iat": now,
            "exp": now + 600,
        },
        gw.keys.gateway,
        algorithm="RS256",
        headers={"kid": gw.app.state.gateway.user_tokens.kid},
    )
    response = await gw.complete(path="/v2/code/generations", headers=gw.user_headers(escalated))
    await refused(gw, response, 403, detail_has="Unauthorized to access code generations")


async def test_expired_user_token(gw: Harness) -> None:
    expired = UserTokenIssuer(gw.keys.gateway, 3600, wall_clock=lambda: time.time() - 7200).mint(
        user_id="user-1", realm="self-managed", instance_id=INSTANCE_ID
    )
    response = await gw.complete(headers=gw.user_headers(expired.token))
    await refused(gw, response, 401, error=verify.TOKEN_EXPIRED)


async def test_minting_without_the_scope(gw: Harness) -> None:
    headers = gw.headers(gw.token(scopes=["duo_chat"]))
    response = await gw.client.post("/v1/code/user_access_token", headers=headers)
    await refused(gw, response, 403, detail_has="Unauthorized to create user access token")


async def test_minting_without_a_user(gw: Harness) -> None:
    headers = gw.headers(**{"X-Gitlab-Global-User-Id": None})
    response = await gw.client.post("/v1/code/user_access_token", headers=headers)
    await refused(gw, response, 400, detail_has="Missing X-Gitlab-Global-User-Id header")


async def test_minting_with_a_forged_instance_token(gw: Harness) -> None:
    headers = gw.headers(gw.token(key=ATTACKER))
    response = await gw.client.post("/v1/code/user_access_token", headers=headers)
    await refused(gw, response, 401, error=verify.INVALID_SIGNATURE)


# -- the issuer's key endpoint --------------------------------------------------------------


async def test_jwks_endpoint_down_cold_cache(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(issuer_up=False)
    response = await gw.complete()
    await refused(gw, response, 503, error_starts="The AI gateway cannot fetch the signing keys of")


async def test_jwks_endpoint_down_warm_cache_forged_token(gw: Harness) -> None:
    await gw.warm_keys()
    gw.issuer.fail_status = 503
    gw.clock.advance(86400 + 60)  # stale, but inside the stale window: keys still serve
    response = await gw.complete(headers=gw.headers(gw.token(key=ATTACKER)))
    await refused(gw, response, 401, error=verify.INVALID_SIGNATURE)


async def test_jwks_endpoint_down_warm_cache_unknown_kid(gw: Harness) -> None:
    await gw.warm_keys()
    gw.issuer.fail_status = 503
    gw.clock.advance(31)  # past the refresh cooldown: the unknown kid may be a rotation
    response = await gw.complete(headers=gw.headers(gw.token(kid="rotated")))
    await refused(gw, response, 503, error_starts="The AI gateway cannot fetch the signing keys")


async def test_jwks_endpoint_down_past_the_stale_window(gw: Harness) -> None:
    await gw.warm_keys()
    gw.issuer.fail_status = 503
    gw.clock.advance(86400 + 6 * 3600 + 1)
    response = await gw.complete()
    await refused(gw, response, 503, error_starts="The AI gateway cannot fetch the signing keys")


JWKS_CASES: dict[str, tuple[Callable[[FakeIssuer, Harness], None], str]] = {
    "jwks_returns_garbage": (
        lambda issuer, gw: setattr(issuer, "raw_keys", b"\x00<html>nope"),
        "did not return JSON",
    ),
    "jwks_returns_json_that_is_not_a_jwks": (
        lambda issuer, gw: setattr(issuer, "jwks", {"keys": "all of them"}),
        "not a JWKS",
    ),
    "jwks_with_only_an_hmac_key": (
        lambda issuer, gw: setattr(
            issuer, "jwks", {"keys": [{"kty": "oct", "kid": "key-1", "k": "c2VjcmV0"}]}
        ),
        "no usable signing key",
    ),
    "jwks_with_a_1024_bit_rsa_key": (
        lambda issuer, gw: setattr(
            issuer,
            "jwks",
            {
                "keys": [
                    jwk_of(
                        rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505
                        "key-1",
                    )
                ]
            },
        ),
        "no usable signing key",
    ),
    "jwks_with_an_encryption_key": (
        lambda issuer, gw: setattr(
            issuer, "jwks", {"keys": [{**jwk_of(gw.keys.rsa, "key-1"), "use": "enc"}]}
        ),
        "no usable signing key",
    ),
    "huge_jwks": (
        lambda issuer, gw: setattr(
            issuer, "jwks", {"keys": [jwk_of(gw.keys.rsa, "key-1")], "pad": "x" * 2_000_000}
        ),
        "returned more than 1048576 bytes",
    ),
    "jwks_with_too_many_keys": (
        lambda issuer, gw: setattr(
            issuer, "jwks", {"keys": [jwk_of(gw.keys.rsa, f"key-{i}") for i in range(101)]}
        ),
        "at most 100 are accepted",
    ),
    "discovery_naming_another_issuer": (
        lambda issuer, gw: setattr(issuer, "advertised_issuer", "https://evil.example"),
        "names the issuer 'https://evil.example'",
    ),
    "jwks_answering_an_error": (
        lambda issuer, gw: setattr(issuer, "fail_status", 500),
        "answered HTTP 500",
    ),
}


@pytest.mark.parametrize("setup,reason", list(JWKS_CASES.values()), ids=list(JWKS_CASES))
async def test_jwks_misbehaving(
    gw: Harness, setup: Callable[[FakeIssuer, Harness], None], reason: str
) -> None:
    setup(gw.issuer, gw)
    response = await gw.complete()
    await refused(gw, response, 503)
    assert reason in response.json()["error"]


async def test_slow_jwks_times_out(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(jwks_fetch_timeout_s=0.2)
    gw.issuer.delay_s = 1.0
    response = await gw.complete()
    await refused(gw, response, 503, error_starts="The AI gateway cannot fetch the signing keys")
    assert "within 0.2 s" in response.json()["error"]


async def test_random_kid_flood_causes_one_fetch(gw: Harness) -> None:
    flood = [gw.token(kid=uuid.uuid4().hex) for _ in range(100)]
    responses = await asyncio.gather(*(gw.complete(headers=gw.headers(t)) for t in flood))
    for response in responses:
        await refused(gw, response, 401, error=verify.UNKNOWN_KEY)
    assert (gw.issuer.discovery_hits, gw.issuer.jwks_hits) == (1, 1)  # one fetch for all
    gw.clock.advance(31)  # after the cooldown, a new flood costs one more fetch, not 100
    flood = [gw.token(kid=uuid.uuid4().hex) for _ in range(100)]
    responses = await asyncio.gather(*(gw.complete(headers=gw.headers(t)) for t in flood))
    assert {r.status_code for r in responses} == {401}
    assert gw.issuer.jwks_hits == 2


async def test_jku_header_is_never_fetched(gw: Harness) -> None:
    lure = FakeIssuer()
    await lure.start()
    try:
        lure.jwks = {"keys": [jwk_of(ATTACKER, "key-1")]}
        header = valid_header(jku=f"{lure.base}/oauth/discovery/keys", x5u=f"{lure.base}/x")
        token = rs256(ATTACKER, header, orjson.dumps(claims(gw)))
        response = await gw.complete(headers=gw.headers(token))
        await refused(gw, response, 401, error=verify.INVALID_SIGNATURE)
        assert lure.hits == 0
    finally:
        await lure.stop()


# -- model egress (SSRF) --------------------------------------------------------------------

# (endpoint, status, reason): URLs that break the rules the instance applies to models are an
# invalid field (422, as on the instance); the rest meet the egress allow-list (403).
SSRF_ENDPOINTS = {
    "cloud_metadata_ipv4": ("http://169.254.169.254/latest/meta-data", 422, "metadata"),
    "cloud_metadata_ipv6": ("http://[fd00:ec2::254]/latest", 422, "metadata"),
    "cloud_metadata_ipv4_mapped_ipv6": ("http://[::ffff:169.254.169.254]/v1", 422, "metadata"),
    "cloud_metadata_decimal_ip": ("http://2852039166/v1", 403, "resolves to 169.254.169.254"),
    "cloud_metadata_hex_ip": ("http://0xa9.0xfe.0xa9.0xfe/v1", 403, "resolves to 169.254.169.254"),
    "cloud_metadata_with_credentials": (
        "http://u:p@169.254.169.254/v1",
        422,
        "must not contain a user name or password",
    ),
    "alibaba_metadata": ("http://100.100.100.200/latest", 422, "metadata"),
    "link_local_ipv6": ("http://[fe80::1]:8000/v1", 422, "metadata"),
    "file_scheme": ("file:///etc/passwd", 422, "must be an http:// or https:// URL"),
    "gopher_scheme": ("gopher://127.0.0.1:6379/_INFO", 422, "must be an http:// or https:// URL"),
    "public_address_not_allowed": ("http://203.0.113.7:8000/v1", 403, "not in the allow-list"),
    "unspecified_address": ("http://0.0.0.0:8000/v1", 422, "cannot be connected to"),
    "hostname_resolving_to_metadata": ("http://metadata.google.internal/v1", 403, "metadata"),
    "hostname_resolving_outside_the_allow_list": (
        "http://models.evil.example/v1",
        403,
        "resolves to 203.0.113.66",
    ),
}


@pytest.mark.parametrize(
    "endpoint,status,reason", list(SSRF_ENDPOINTS.values()), ids=list(SSRF_ENDPOINTS)
)
async def test_ssrf_model_endpoint(
    gw: Harness, monkeypatch: pytest.MonkeyPatch, endpoint: str, status: int, reason: str
) -> None:
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    fake = {"metadata.google.internal": "169.254.169.254", "models.evil.example": "203.0.113.66"}

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> Any:
        if host in fake:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (fake[host], port))]
        return await real(host, port, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    response = await gw.complete(gw.body(model_endpoint=endpoint))
    await refused(gw, response, status, detail_has=reason)
    if status == 403:
        assert "The model endpoint" in response.json()["detail"]
    else:
        assert response.json()["detail"][0]["loc"] == ["body", "model_endpoint"]
    assert "u:p" not in response.text  # credentials never echoed


async def test_egress_denied_when_the_allow_list_is_empty(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(model_egress_allow=[])
    response = await gw.complete()  # the fake model on loopback
    await refused(gw, response, 403, detail_has="allow-list of model endpoints is empty")


async def test_egress_to_a_port_outside_the_allow_list(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(model_egress_allow=["127.0.0.1:1"])
    response = await gw.complete()
    await refused(gw, response, 403, detail_has="is not in the allow-list")


# -- client addresses -----------------------------------------------------------------------


async def test_forbidden_client_ip(gw: Harness) -> None:
    response = await gw.post_from("203.0.113.9")
    await refused(gw, response, 403, detail_has="Client address 203.0.113.9 is not allowed")


async def test_forbidden_ipv6_client(gw: Harness) -> None:
    response = await gw.post_from("2001:db8::7")
    await refused(gw, response, 403, detail_has="Client address 2001:db8::7 is not allowed")


async def test_spoofed_forwarded_for_from_an_untrusted_proxy(gw: Harness) -> None:
    headers = {**gw.headers(), "X-Forwarded-For": "127.0.0.1, 10.0.0.1"}
    response = await gw.post_from("203.0.113.9", headers=headers)
    await refused(gw, response, 403, detail_has="Client address 203.0.113.9 is not allowed")


async def test_forbidden_client_behind_a_trusted_proxy(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(trusted_proxies=["10.0.0.0/24"])
    headers = {**gw.headers(), "X-Forwarded-For": "203.0.113.9"}
    response = await gw.post_from("10.0.0.2", headers=headers)
    await refused(gw, response, 403, detail_has="Client address 203.0.113.9 (forwarded by")


async def test_allowed_address_prepended_to_forwarded_for(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(trusted_proxies=["10.0.0.0/24"])
    headers = {**gw.headers(), "X-Forwarded-For": "192.168.1.1, 203.0.113.9"}
    response = await gw.post_from("10.0.0.2", headers=headers)
    await refused(gw, response, 403, detail_has="Client address 203.0.113.9 (forwarded by")


async def test_garbage_forwarded_for_from_a_trusted_proxy(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(trusted_proxies=["10.0.0.0/24"])
    headers = {**gw.headers(), "X-Forwarded-For": "127.0.0.1, <script>"}
    response = await gw.post_from("10.0.0.2", headers=headers)
    await refused(gw, response, 403, detail_has="cannot read the client address")


async def test_client_without_an_address(gw: Harness) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in gw.headers().items()]
    status, body = await _asgi_call(gw, headers, client=None)
    response = httpx.Response(status, content=body, headers={"content-type": "application/json"})
    await refused(gw, response, 403, detail_has="cannot tell the client's address")


# -- odd requests ---------------------------------------------------------------------------


async def test_oversize_body_with_a_valid_token(gw: Harness) -> None:
    response = await gw.client.post(
        "/v2/code/completions",
        content=b"{" + b" " * (8 * 1024 * 1024 + 1) + b"}",
        headers={**gw.headers(), "content-type": "application/json"},
    )
    await refused(gw, response, 413, detail_has="Request body larger than")


async def test_body_before_authentication_is_not_read(gw: Harness) -> None:
    # A forged token with a body naming a model: refused before the body matters.
    response = await gw.complete(
        gw.body(model_endpoint="http://169.254.169.254/"),
        headers=gw.headers(gw.token(key=ATTACKER)),
    )
    await refused(gw, response, 401, error=verify.INVALID_SIGNATURE)
