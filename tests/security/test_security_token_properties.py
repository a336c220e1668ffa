"""Property tests of the token parser and verifier: whatever arrives, the answer is a 401.

Random strings, random bytes, random base64url segments, random JSON headers and claims,
validly signed random claims, and single-character mutations of a valid token: the parser only
ever raises ``TokenError``, the authenticator only ever raises a 401 ``AuthError`` (or, for a
validly signed token, returns a principal), and the whole app answers 401 JSON, never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import json
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from gateway_fakes import INSTANCE_ID, Keys, jwk_of, pem_of
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from enclave.common import wire
from enclave.config import EnclaveSettings, GatewaySettings
from enclave.gateway.app import create_app
from enclave.gateway.auth.jwks import local_key_store
from enclave.gateway.auth.jws import ParsedToken, TokenError, parse_token
from enclave.gateway.auth.verify import Authenticator, AuthError, Principal

ISSUER = "https://instance.example"
PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- strategies -----------------------------------------------------------------------------

B64_ALPHABET = string.ascii_letters + string.digits + "-_"
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
CLAIM_NAMES = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "scopes", "gitlab_realm",
               "gitlab_instance_id"]  # fmt: skip
claim_sets = st.dictionaries(
    st.sampled_from(CLAIM_NAMES) | st.text(max_size=8), json_values, max_size=10
)
header_sets = st.dictionaries(
    st.sampled_from(["alg", "kid", "typ", "crit", "jku", "jwk", "b64"]) | st.text(max_size=6),
    json_values | st.sampled_from(["RS256", "ES256", "EdDSA", "none", "HS256", "key-1", "JWT"]),
    max_size=5,
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _json_segment(value: Any) -> str:
    # The stdlib writes what orjson will not: huge integers, NaN and Infinity.
    return _b64(json.dumps(value).encode())


segments = st.text(alphabet=B64_ALPHABET, max_size=60)
random_tokens = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda raw: raw.decode("latin-1")),
    st.lists(segments, min_size=1, max_size=6).map(".".join),
    st.lists(st.binary(max_size=80).map(_b64), min_size=3, max_size=3).map(".".join),
    st.tuples(header_sets.map(_json_segment), claim_sets.map(_json_segment), segments).map(
        ".".join
    ),
)


# -- the parser -----------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(token=random_tokens)
@example(token="")
@example(token="..")
@example(token="e30.e30.")
@example(token="e30.e30.e30=")
def test_parser_only_raises_token_errors(token: str) -> None:
    try:
        parsed = parse_token(token)
    except TokenError as exc:
        assert exc.reason
    else:
        assert isinstance(parsed, ParsedToken)
        assert isinstance(parsed.header, dict) and isinstance(parsed.claims, dict)


@PROPERTY_SETTINGS
@given(header=header_sets, claims=claim_sets, signature=st.binary(max_size=300))
def test_parser_round_trips_what_it_accepts(
    header: dict[str, Any], claims: dict[str, Any], signature: bytes
) -> None:
    token = f"{_json_segment(header)}.{_json_segment(claims)}.{_b64(signature)}"
    try:
        parsed = parse_token(token)
    except TokenError:
        return
    assert parsed.signature == signature
    assert parsed.signing_input == token.rsplit(".", 1)[0].encode()


# -- the authenticator ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture(scope="module")
def authenticator(keys: Keys) -> Authenticator:
    store = local_key_store(
        ISSUER,
        {"keys": [jwk_of(keys.rsa, "key-1"), jwk_of(keys.ec, "ec-1", "ES256")]},
        "test",
        time.monotonic,
    )
    return Authenticator({store.issuer: store}, leeway_s=30)


def _headers(token: str) -> Headers:
    """Request headers as the server hands them over (raw bytes; any non-ASCII as UTF-8)."""
    return Headers(
        raw=[
            (b"authorization", b"Bearer " + token.encode("utf-8", "surrogatepass")),
            (b"x-gitlab-authentication-type", b"oidc"),
            (b"x-gitlab-instance-id", INSTANCE_ID.encode()),
            (b"x-gitlab-realm", wire.REALM_SELF_MANAGED.encode()),
            (b"x-gitlab-global-user-id", b"user-1"),
        ]
    )


def _outcome(
    loop: asyncio.AbstractEventLoop, authenticator: Authenticator, token: str
) -> Principal | AuthError:
    try:
        return loop.run_until_complete(authenticator.authenticate(_headers(token)))
    except AuthError as exc:
        return exc


def _valid_token(keys: Keys, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": INSTANCE_ID,
        "gitlab_instance_id": INSTANCE_ID,
        "aud": wire.AUDIENCE,
        "gitlab_realm": wire.REALM_SELF_MANAGED,
        "scopes": ["complete_code"],
        "iat": now,
        "exp": now + 3600,
        **overrides,
    }
    return jwt.encode(claims, keys.rsa, algorithm="RS256", headers={"kid": "key-1"})


@PROPERTY_SETTINGS
@given(token=random_tokens)
def test_random_tokens_are_always_401(
    loop: asyncio.AbstractEventLoop, authenticator: Authenticator, token: str
) -> None:
    outcome = _outcome(loop, authenticator, token)
    assert isinstance(outcome, AuthError)
    assert outcome.status == 401


@PROPERTY_SETTINGS
@given(data=st.data())
def test_mutated_valid_tokens_are_always_401(
    loop: asyncio.AbstractEventLoop, authenticator: Authenticator, keys: Keys, data: Any
) -> None:
    token = _valid_token(keys)
    assert isinstance(_outcome(loop, authenticator, token), Principal)
    index = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    replacement = data.draw(
        st.sampled_from(B64_ALPHABET + ".=+/ ").filter(lambda c: c != token[index])
    )
    mutated = token[:index] + replacement + token[index + 1 :]
    outcome = _outcome(loop, authenticator, mutated)
    assert isinstance(outcome, AuthError), (index, replacement)
    assert outcome.status == 401


@PROPERTY_SETTINGS
@given(claims=claim_sets)
def test_validly_signed_random_claims_never_crash(
    loop: asyncio.AbstractEventLoop, authenticator: Authenticator, keys: Keys, claims: Any
) -> None:
    claims = {"iss": ISSUER, **claims}
    signing_input = f"{_json_segment({'alg': 'RS256', 'kid': 'key-1'})}.{_json_segment(claims)}"
    signature = keys.rsa.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    token = f"{signing_input}.{_b64(signature)}"
    outcome = _outcome(loop, authenticator, token)
    if isinstance(outcome, AuthError):
        assert outcome.status == 401
    else:  # only a token with everything right gets through
        assert outcome.realm == wire.REALM_SELF_MANAGED
        assert outcome.instance_id == INSTANCE_ID


# -- the whole app --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_in_loop(
    loop: asyncio.AbstractEventLoop, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    directory = tmp_path_factory.mktemp("property-app")
    jwks_file = directory / "jwks.json"
    jwks_file.write_bytes(orjson.dumps({"keys": [jwk_of(keys.rsa, "key-1")]}))
    key_file = directory / "gateway.pem"
    key_file.write_bytes(pem_of(keys.gateway))
    settings = EnclaveSettings(
        data_dir=directory / "data",
        gateway=GatewaySettings(
            issuer_url=ISSUER, jwks_file=jwks_file, self_signing_key_file=Path(key_file)
        ),
    )
    app = create_app(settings, refresh_keys_in_background=False)
    lifespan = app.router.lifespan_context(app)
    loop.run_until_complete(lifespan.__aenter__())
    yield app
    loop.run_until_complete(lifespan.__aexit__(None, None, None))


async def _call(app: Any, authorization: bytes) -> tuple[int, bytes]:
    headers = [
        (b"authorization", authorization),
        (b"x-gitlab-authentication-type", b"oidc"),
        (b"x-gitlab-instance-id", INSTANCE_ID.encode()),
        (b"x-gitlab-realm", b"self-managed"),
        (b"content-type", b"application/json"),
    ]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v2/code/completions", "raw_path": b"/v2/code/completions",
        "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 5000), "server": ("gw", 80), "state": {},
    }  # fmt: skip
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


authorization_values = st.one_of(
    st.binary(max_size=300),
    random_tokens.map(lambda token: b"Bearer " + token.encode("utf-8", "surrogatepass")),
    st.lists(st.binary(max_size=60).map(_b64), min_size=3, max_size=3).map(
        lambda parts: b"Bearer " + ".".join(parts).encode()
    ),
)


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(authorization=authorization_values)
def test_the_app_answers_401_json_to_any_authorization(
    loop: asyncio.AbstractEventLoop, app_in_loop: Any, authorization: bytes
) -> None:
    status, body = loop.run_until_complete(_call(app_in_loop, authorization))
    assert status == 401, body
    payload = orjson.loads(body)
    assert set(payload) == {"error"} and isinstance(payload["error"], str)
