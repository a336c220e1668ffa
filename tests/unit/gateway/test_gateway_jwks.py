"""The in-memory key cache: fetch counts, unknown-kid floods, stale keys, sources, parsing."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from gateway_fakes import Harness, HarnessFactory, Keys, jwk_of

from enclave.gateway.auth import jwks, verify
from enclave.gateway.auth.jwks import (
    IssuerUnavailable,
    JwksError,
    KeyStore,
    UnknownSigningKey,
    parse_jwks,
)

pytestmark = pytest.mark.anyio


async def _until(condition: Any, limit_s: float = 10.0) -> None:
    """Wait for a background task's effect (a hang guard, not a speed assertion)."""
    async with asyncio.timeout(limit_s):
        while not condition():  # noqa: ASYNC110 - the effect has no event to wait on
            await asyncio.sleep(0.005)


async def test_many_requests_fetch_the_keys_once(gw: Harness) -> None:
    tokens = [gw.token() for _ in range(10)]  # distinct tokens: no help from the token cache
    for token in tokens:
        assert (await gw.complete(headers=gw.headers(token))).status_code == 200
    more = await asyncio.gather(*(gw.complete(headers=gw.headers(gw.token())) for _ in range(20)))
    assert {response.status_code for response in more} == {200}
    assert (gw.issuer.discovery_hits, gw.issuer.jwks_hits) == (1, 1)


async def test_concurrent_first_requests_share_one_fetch(gw: Harness) -> None:
    responses = await asyncio.gather(*(gw.complete() for _ in range(25)))
    assert {response.status_code for response in responses} == {200}
    assert gw.issuer.jwks_hits == 1


async def test_keys_are_prefetched_at_start_up(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(refresh_keys_in_background=True)
    await _until(lambda: gw.issuer.jwks_hits == 1)
    assert (await gw.client.get("/monitoring/ready")).json()["status"] == "ok"
    assert (await gw.complete()).status_code == 200
    assert gw.issuer.jwks_hits == 1


async def test_start_up_does_not_wait_for_a_down_issuer(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(issuer_up=False, refresh_keys_in_background=True)
    health = await gw.client.get("/monitoring/healthz")
    assert (health.status_code, health.json()) == (200, {})
    ready = await gw.client.get("/monitoring/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert "cannot fetch the signing keys" in ready.json()["detail"]


async def test_unknown_kid_flood_is_bounded(gw: Harness) -> None:
    assert (await gw.complete()).status_code == 200
    assert gw.issuer.jwks_hits == 1
    cooldown = 30  # the default jwks_refresh_cooldown_s

    # Within the cooldown since the last fetch: no fetch at all, whatever the kid.
    flood = [gw.token(kid=uuid.uuid4().hex) for _ in range(50)]
    responses = await asyncio.gather(*(gw.complete(headers=gw.headers(t)) for t in flood))
    assert {response.status_code for response in responses} == {401}
    assert {response.json()["error"] for response in responses} == {verify.UNKNOWN_KEY}
    assert gw.issuer.jwks_hits == 1

    # After the cooldown: the whole next flood causes exactly one fetch.
    gw.clock.advance(cooldown + 1)
    flood = [gw.token(kid=uuid.uuid4().hex) for _ in range(50)]
    responses = await asyncio.gather(*(gw.complete(headers=gw.headers(t)) for t in flood))
    assert {response.status_code for response in responses} == {401}
    assert gw.issuer.jwks_hits == 2
    for token in flood[:10]:
        assert (await gw.complete(headers=gw.headers(token))).status_code == 401
    assert gw.issuer.jwks_hits == 2


async def test_key_rotation_is_picked_up_on_an_unknown_kid(gw: Harness) -> None:
    assert (await gw.complete()).status_code == 200
    gw.issuer.jwks = {
        "keys": [jwk_of(gw.keys.rsa, "key-1", "RS256"), jwk_of(gw.keys.rsa_other, "key-2")]
    }
    gw.clock.advance(31)
    rotated = gw.token(key=gw.keys.rsa_other, kid="key-2")
    assert (await gw.complete(headers=gw.headers(rotated))).status_code == 200
    assert gw.issuer.jwks_hits == 2
    assert (await gw.complete()).status_code == 200  # the old key still verifies


async def test_stale_keys_serve_while_the_issuer_is_down(gw: Harness) -> None:
    assert (await gw.complete()).status_code == 200
    gw.issuer.fail_status = 503
    gw.clock.advance(86400 + 60)  # past the TTL, inside the 6 h stale window
    assert (await gw.complete(headers=gw.headers(gw.token()))).status_code == 200
    await _until(lambda: gw.issuer.discovery_hits == 2)  # a background refresh was tried
    assert (await gw.complete(headers=gw.headers(gw.token()))).status_code == 200

    gw.clock.advance(6 * 3600)  # past the stale window too
    cached = gw.headers()
    response = await gw.complete(headers=cached)
    assert response.status_code == 503
    assert "answered HTTP 503" in response.json()["error"]

    gw.issuer.fail_status = None  # the issuer is back: the next attempt recovers
    gw.clock.advance(2)
    assert (await gw.complete(headers=gw.headers(gw.token()))).status_code == 200


async def test_verified_tokens_are_cached(gw: Harness) -> None:
    authenticator = gw.app.state.gateway.authenticator
    headers = gw.headers(gw.token())
    for _ in range(10):
        assert (await gw.complete(headers=headers)).status_code == 200
    assert authenticator.verifications == 1
    assert authenticator.cache_hits == 9


async def test_token_cache_is_dropped_when_keys_change(gw: Harness) -> None:
    authenticator = gw.app.state.gateway.authenticator
    store: KeyStore = next(iter(gw.app.state.gateway.stores.values()))
    headers = gw.headers(gw.token())
    assert (await gw.complete(headers=headers)).status_code == 200
    # The issuer retires key-1; once the gateway notices, tokens signed by it stop working.
    gw.issuer.jwks = {"keys": [jwk_of(gw.keys.rsa_other, "key-2")]}
    gw.clock.advance(86400 + 1)
    generation = store.generation
    assert (await gw.complete(headers=headers)).status_code == 200  # triggers the refresh
    await _until(lambda: store.generation == generation + 1)
    response = await gw.complete(headers=headers)
    assert response.json() == {"error": verify.UNKNOWN_KEY}
    assert authenticator.cache_hits == 1  # the third request was verified afresh


async def test_direct_jwks_url(make_harness: HarnessFactory) -> None:
    gw: Harness = await make_harness(direct_jwks_url=True)
    assert (await gw.complete()).status_code == 200
    assert (gw.issuer.discovery_hits, gw.issuer.jwks_hits) == (0, 1)


async def test_static_jwks_file(make_harness: HarnessFactory, keys: Keys, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(orjson.dumps({"keys": [jwk_of(keys.rsa, "key-1")]}))
    gw: Harness = await make_harness(jwks_file=path)
    assert (await gw.complete()).status_code == 200
    assert (gw.issuer.discovery_hits, gw.issuer.jwks_hits) == (0, 0)


async def test_missing_jwks_file_is_503(make_harness: HarnessFactory, tmp_path: Path) -> None:
    gw: Harness = await make_harness(jwks_file=tmp_path / "missing.json")
    response = await gw.complete()
    assert response.status_code == 503
    assert "cannot read the JWKS file" in response.json()["error"]


async def test_oversized_jwks_is_refused(gw: Harness) -> None:
    gw.issuer.jwks = {"keys": [jwk_of(gw.keys.rsa, "key-1")], "padding": "x" * (1024 * 1024)}
    response = await gw.complete()
    assert response.status_code == 503
    assert "returned more than 1048576 bytes" in response.json()["error"]


# -- KeyStore and parse_jwks directly -------------------------------------------------------


class _GatedSource:
    def __init__(self, document: Any) -> None:
        self.document = document
        self.calls = 0
        self.gate = asyncio.Event()
        self.error: str | None = None

    @property
    def location(self) -> str:
        return "test://jwks"

    async def fetch(self) -> Any:
        self.calls += 1
        await self.gate.wait()
        if self.error:
            raise JwksError(self.error)
        return self.document


def _store(source: _GatedSource, now: list[float]) -> KeyStore:
    return KeyStore(
        "https://issuer.test/",
        source,
        ttl_s=100,
        stale_s=50,
        cooldown_s=10,
        clock=lambda: now[0],
    )


async def test_one_fetch_in_flight_for_many_waiters(keys: Keys) -> None:
    source = _GatedSource({"keys": [jwk_of(keys.rsa, "k")]})
    now = [0.0]
    store = _store(source, now)
    waiters = [asyncio.create_task(store.get("k")) for _ in range(100)]
    await asyncio.sleep(0)
    source.gate.set()
    found = await asyncio.gather(*waiters)
    assert source.calls == 1
    assert {key.kid for key in found} == {"k"}
    assert store.issuer == "https://issuer.test"


async def test_store_errors_are_distinct(keys: Keys) -> None:
    source = _GatedSource({"keys": [jwk_of(keys.rsa, "k")]})
    source.gate.set()
    now = [0.0]
    store = _store(source, now)
    with pytest.raises(UnknownSigningKey):
        await store.get("other")
    source.error = "connection refused"
    now[0] = 200.0  # beyond TTL + stale: nothing usable any more
    with pytest.raises(IssuerUnavailable) as caught:
        await store.get("k")
    assert "connection refused" in str(caught.value)
    # Within the failure back-off the next request does not fetch again.
    calls = source.calls
    with pytest.raises(IssuerUnavailable):
        await store.get("k")
    assert source.calls == calls


def test_parse_jwks_keeps_only_usable_keys(keys: Keys) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - must be ignored
    p384 = ec.generate_private_key(ec.SECP384R1())
    document = {
        "keys": [
            jwk_of(keys.rsa, "rsa"),
            jwk_of(keys.ec, "ec", "ES256"),
            jwk_of(keys.ed, "ed"),
            {**jwk_of(keys.rsa_other, "pss"), "alg": "PS256"},
            {**jwk_of(keys.rsa_other, "enc"), "use": "enc"},
            jwk_of(small, "small"),
            jwk_of(p384, "p384"),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not-a-key",
        ]
    }
    parsed, fingerprint = parse_jwks(document)
    assert sorted(parsed) == ["ec", "ed", "rsa"]
    assert {k: v.algorithm for k, v in parsed.items()} == {
        "rsa": "RS256",
        "ec": "ES256",
        "ed": "EdDSA",
    }
    assert parse_jwks(document)[1] == fingerprint


def test_parse_jwks_limits() -> None:
    with pytest.raises(JwksError, match="at most 100"):
        parse_jwks({"keys": [{"kty": "oct"}] * 101})
    with pytest.raises(JwksError, match="not a JWKS"):
        parse_jwks(["keys"])


def test_private_members_are_never_used_for_verification(keys: Keys) -> None:
    from jwt.algorithms import RSAAlgorithm

    private = dict(orjson.loads(RSAAlgorithm.to_jwk(keys.rsa)))
    private["kid"] = "leaked"
    private.pop("key_ops", None)  # PyJWT marks it sign-only, which alone would exclude it
    parsed, _ = parse_jwks({"keys": [private]})
    assert isinstance(parsed["leaked"].key, rsa.RSAPublicKey)


def test_allowed_algorithms() -> None:
    assert frozenset({"RS256", "ES256", "EdDSA"}) == jwks.ALLOWED_ALGORITHMS
