"""The compact-JWS parser and signature checks (no HTTP)."""

from __future__ import annotations

import base64
import time
from typing import Any

import jwt
import orjson
import pytest
from gateway_fakes import Harness, Keys

from enclave.gateway.auth.jws import (
    MAX_TOKEN_BYTES,
    TokenError,
    numeric_date,
    parse_token,
    signature_valid,
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _token(header: bytes, payload: bytes, signature: bytes = b"sig") -> str:
    return f"{_b64(header)}.{_b64(payload)}.{_b64(signature)}"


CLAIMS = {"iss": "https://i.example", "aud": "gitlab-ai-gateway", "exp": 2_000_000_000}


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_parse_and_verify_each_algorithm(keys: Keys, alg: str) -> None:
    key = {"RS256": keys.rsa, "ES256": keys.ec, "EdDSA": keys.ed}[alg]
    token = jwt.encode(CLAIMS, key, algorithm=alg, headers={"kid": "k"})
    parsed = parse_token(token)
    assert parsed.header == {"alg": alg, "kid": "k", "typ": "JWT"}
    assert parsed.claims == CLAIMS
    assert parsed.signing_input == token.rsplit(".", 1)[0].encode()
    public = key.public_key()
    assert signature_valid(alg, public, parsed.signing_input, parsed.signature)
    assert not signature_valid(alg, public, parsed.signing_input + b"x", parsed.signature)
    # Every other algorithm, and every other key type, is simply a failure.
    for other in ("RS256", "ES256", "EdDSA", "HS256", "none", "PS256"):
        if other != alg:
            assert not signature_valid(other, public, parsed.signing_input, parsed.signature)
    assert not signature_valid(alg, b"secret", parsed.signing_input, parsed.signature)


def test_es256_needs_raw_64_byte_signatures(keys: Keys) -> None:
    token = jwt.encode(CLAIMS, keys.ec, algorithm="ES256")
    parsed = parse_token(token)
    public = keys.ec.public_key()
    assert not signature_valid("ES256", public, parsed.signing_input, parsed.signature[:63])
    assert not signature_valid("ES256", public, parsed.signing_input, parsed.signature + b"\0")


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "malformed token"),
        ("a.b", "malformed token"),
        ("a.b.c.d", "malformed token"),
        ("a..c", "malformed token"),
        ("a.b.c=", "malformed token"),  # padding
        ("a+b.c.d", "malformed token"),  # not base64url
        ("a.b.c ", "malformed token"),
        ("é.b.c", "malformed token"),
        ("a.b.c", "malformed token"),  # "a" is not a valid base64 length
        (_token(b"{not json", b"{}"), "the token's header is not JSON"),
        (_token(b"[1]", b"{}"), "the token's header is not a JSON object"),
        (_token(b"{}", b'"x"'), "the token's payload is not a JSON object"),
        (_token(b"{}", b"\xff\xfe"), "the token's payload is not JSON"),
        (_token(b"{}", b'{"a":1,"a":2}'), "duplicate members in the token's JSON"),
        (_token(b'{"alg":"RS256","alg":"none"}', b"{}"), "duplicate members"),
        (_token(b"{}", b'{"exp":NaN}'), "non-standard JSON number NaN"),
        (_token(b"{}", b'{"exp":Infinity}'), "non-standard JSON number Infinity"),
        (_token(b'{"crit":["exp"]}', b"{}"), "unsupported token header parameter 'crit'"),
        (_token(b'{"b64":false}', b"{}"), "unsupported token header parameter 'b64'"),
        (_token(b'{"typ":"at+jwt"}', b"{}"), "type ('typ') is not JWT"),
        (_token(b'{"kid":7}', b"{}"), "key id ('kid') is not a string"),
        (_token(b"{}", b"[" * 100_00 + b"]" * 100_00), "too"),
    ],
)
def test_malformed_tokens(token: str, reason: str) -> None:
    with pytest.raises(TokenError) as caught:
        parse_token(token)
    if reason != "too":
        assert reason in caught.value.reason


def test_non_canonical_base64_is_refused() -> None:
    token = _token(b'{"alg":"RS256"}', orjson.dumps(CLAIMS), b"\x00\x01")
    header, payload, signature = token.split(".")
    assert signature == "AAE"
    with pytest.raises(TokenError):  # "AAF" decodes to the same bytes with a stray bit set
        parse_token(f"{header}.{payload}.AAF")


def test_empty_signature_parses_but_never_verifies(keys: Keys) -> None:
    parsed = parse_token(_token(b'{"alg":"none"}', b"{}", b""))
    assert parsed.signature == b""
    assert not signature_valid("RS256", keys.rsa.public_key(), parsed.signing_input, b"")


def test_size_limit() -> None:
    with pytest.raises(TokenError, match=f"larger than {MAX_TOKEN_BYTES}"):
        parse_token("a" * (MAX_TOKEN_BYTES + 1))


@pytest.mark.parametrize(
    ("value", "expected"),
    [(5, 5.0), (1.5, 1.5), (2**53, float(2**53))],
)
def test_numeric_dates(value: Any, expected: float) -> None:
    assert numeric_date({"exp": value}, "exp") == expected
    assert numeric_date({}, "exp") is None


@pytest.mark.parametrize("value", [None, True, "5", [5], {"a": 1}, 2**53 + 1, 10**400, 1e300])
def test_bad_numeric_dates(value: Any) -> None:
    with pytest.raises(TokenError):
        numeric_date({"exp": value}, "exp")


@pytest.mark.anyio
async def test_leeway_boundaries(gw: Harness) -> None:
    now = int(time.time())
    assert (await gw.complete(headers=gw.headers(gw.token(exp=now - 20)))).status_code == 200
    assert (await gw.complete(headers=gw.headers(gw.token(exp=now - 40)))).status_code == 401
    assert (await gw.complete(headers=gw.headers(gw.token(nbf=now + 20)))).status_code == 200
    assert (await gw.complete(headers=gw.headers(gw.token(iat=now + 20)))).status_code == 200
    response = await gw.complete(headers=gw.headers(gw.token(iat=now + 60)))
    assert response.status_code == 401
    assert "not yet valid" in response.json()["error"]


@pytest.mark.anyio
async def test_audience_list(gw: Harness) -> None:
    token = gw.token(aud=["other", "gitlab-ai-gateway"])
    assert (await gw.complete(headers=gw.headers(token))).status_code == 200
    for aud in (["other"], [], 5, {"gitlab-ai-gateway": 1}):
        response = await gw.complete(headers=gw.headers(gw.token(aud=aud)))
        assert response.status_code == 401
        assert "wrong audience" in response.json()["error"]
