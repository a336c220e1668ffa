"""Minting the instance JWT: exact header and claims, verification, reuse."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import jwt
import pytest

from enclave.instance.keys import KeyStore, ScheduleEntry, generate_rsa_key
from enclave.instance.tokens import TokenMinter

INSTANCE_ID = uuid.UUID("6f1c2b8e-4c1a-4d8e-9a57-1f2e3d4c5b6a")
ISSUER = "https://enclave.example.com"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    store, _ = KeyStore.load_or_create(tmp_path_factory.mktemp("keys") / "keys")
    return store


def minter(keys: KeyStore, clock: Clock, lifetime_s: int = 3600) -> TokenMinter:
    return TokenMinter(
        keys, issuer=ISSUER, instance_id=INSTANCE_ID, lifetime_s=lifetime_s, clock=clock
    )


def test_header_and_claims_are_exact(keys: KeyStore) -> None:
    minted = minter(keys, Clock(1_750_000_000.7)).token(["complete_code"])
    assert jwt.get_unverified_header(minted.token) == {
        "alg": "RS256",
        "kid": keys.active.kid,
        "typ": "JWT",
    }
    claims = jwt.decode(minted.token, options={"verify_signature": False})
    jti = claims.pop("jti")
    assert uuid.UUID(jti).version == 4
    assert claims == {
        "iss": ISSUER,
        "sub": str(INSTANCE_ID),
        "gitlab_instance_id": str(INSTANCE_ID),
        "aud": "gitlab-ai-gateway",
        "gitlab_realm": "self-managed",
        "scopes": ["complete_code"],
        "iat": 1_750_000_000,
        "nbf": 1_749_999_995,
        "exp": 1_750_003_600,
    }
    assert (minted.issued_at, minted.expires_at) == (1_750_000_000, 1_750_003_600)


def test_signature_verifies_with_the_published_key(keys: KeyStore) -> None:
    minted = minter(keys, Clock(time.time())).token(["generate_code"])
    public = jwt.PyJWK(keys.jwks()["keys"][0])
    claims = jwt.decode(
        minted.token, public, algorithms=["RS256"], audience="gitlab-ai-gateway", issuer=ISSUER
    )
    assert claims["scopes"] == ["generate_code"]


def test_token_is_reused_until_five_minutes_before_expiry(keys: KeyStore) -> None:
    clock = Clock(1_000_000.0)
    mint = minter(keys, clock)
    first = mint.token(["complete_code"])
    clock.now += 3600 - 300 - 1
    assert mint.token(["complete_code"]) is first
    clock.now += 1
    renewed = mint.token(["complete_code"])
    assert renewed.token != first.token
    assert renewed.issued_at == int(clock.now)


def test_short_lifetimes_refresh_at_ten_percent(keys: KeyStore) -> None:
    clock = Clock(1_000_000.0)
    mint = minter(keys, clock, lifetime_s=100)
    first = mint.token(["complete_code"])
    clock.now += 89
    assert mint.token(["complete_code"]) is first
    clock.now += 1
    assert mint.token(["complete_code"]) is not first


def test_one_cached_token_per_scope_set(keys: KeyStore) -> None:
    mint = minter(keys, Clock(1_000_000.0))
    completion = mint.token(["complete_code"])
    generation = mint.token(["generate_code"])
    assert completion.token != generation.token
    assert mint.token(["complete_code"]) is completion
    # Order and duplicates do not make a new set.
    both = mint.token(["generate_code", "complete_code"])
    assert mint.token(["complete_code", "generate_code", "complete_code"]) is both
    assert jwt.decode(both.token, options={"verify_signature": False})["scopes"] == [
        "complete_code",
        "generate_code",
    ]


def test_a_new_active_key_is_used_at_once(tmp_path: Path) -> None:
    old = generate_rsa_key()
    new = generate_rsa_key()
    clock = Clock(1_000_000.0)
    # What rotation does: the new key is published now and activates at a scheduled time.
    schedule = {new.kid: ScheduleEntry(activate_at=1_000_060)}
    store = KeyStore([old, new], old.kid, schedule=schedule, clock=clock)
    mint = minter(store, clock)
    assert mint.token(["complete_code"]).kid == old.kid
    clock.now = 1_000_060.0
    assert mint.token(["complete_code"]).kid == new.kid
