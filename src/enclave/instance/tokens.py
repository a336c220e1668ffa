"""Minting the instance JWT the gateway verifies (DESIGN.md §3).

Claims: ``iss`` (instance URL), ``sub`` and ``gitlab_instance_id`` (instance id), ``aud``
``gitlab-ai-gateway``, ``gitlab_realm`` ``self-managed``, ``scopes``, ``iat``, ``nbf`` (iat − 5 s,
for clock skew), ``exp`` and ``jti``. Header: ``alg`` RS256, ``kid``, ``typ`` JWT.

A token is minted per scope set and reused until shortly before it expires: RSA signing costs
about a millisecond, and a token that is the same for many requests is also what lets the
gateway keep a verified-token cache (DESIGN.md §5).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt

from enclave.common.wire import AUDIENCE, NOT_BEFORE_SKEW_S, REALM_SELF_MANAGED
from enclave.instance.keys import KeyStore, SigningKey

# Re-mint this long before expiry so a token never expires between minting and verification
# (network time, queueing, clock skew); 10 % of the lifetime for short lifetimes.
MAX_REFRESH_MARGIN_S = 300.0
REFRESH_MARGIN_FRACTION = 0.1


@dataclass(frozen=True)
class MintedToken:
    token: str = field(repr=False)
    kid: str
    scopes: tuple[str, ...]
    issued_at: int
    expires_at: int


class TokenMinter:
    """Mints and caches instance tokens; safe to share between threads and requests."""

    def __init__(
        self,
        keys: KeyStore,
        *,
        issuer: str,
        instance_id: uuid.UUID,
        lifetime_s: int,
        realm: str = REALM_SELF_MANAGED,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._instance_id = str(instance_id)
        self._lifetime_s = lifetime_s
        self._realm = realm
        self._clock = clock
        self._margin_s = min(MAX_REFRESH_MARGIN_S, lifetime_s * REFRESH_MARGIN_FRACTION)
        self._cache: dict[tuple[str, str, tuple[str, ...]], MintedToken] = {}
        self._lock = threading.Lock()

    @property
    def issuer(self) -> str:
        return self._issuer

    def token(self, scopes: Iterable[str], *, audience: str = AUDIENCE) -> MintedToken:
        """A valid token for ``scopes`` and ``audience`` (the gateway it is for: the
        self-hosted one by default, or the vendored gateway's): the cached one, or a fresh one
        near its expiry."""
        normalised = tuple(sorted(set(scopes)))
        # The kid is part of the key so a rotated active key is used at once (the key store
        # says which key is active by the clock, after at most a few seconds' delay in seeing
        # a new rotation).
        key = self._keys.active
        cache_key = (key.kid, audience, normalised)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(cache_key)
            if cached is not None and now < cached.expires_at - self._margin_s:
                return cached
            minted = self._mint(key, normalised, now, audience)
            # Entries for other kids can never be returned again; drop them.
            self._cache = {k: v for k, v in self._cache.items() if k[0] == cache_key[0]}
            self._cache[cache_key] = minted
            return minted

    def mint(self, scopes: Iterable[str], *, now: float | None = None) -> MintedToken:
        """A new token, bypassing the cache."""
        return self._mint(self._keys.active, scopes, now)

    def _mint(
        self,
        key: SigningKey,
        scopes: Iterable[str],
        now: float | None,
        audience: str = AUDIENCE,
    ) -> MintedToken:
        issued_at = int(self._clock() if now is None else now)
        expires_at = issued_at + self._lifetime_s
        normalised = tuple(sorted(set(scopes)))
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": self._instance_id,
            "gitlab_instance_id": self._instance_id,
            "aud": audience,
            "gitlab_realm": self._realm,
            "scopes": list(normalised),
            "iat": issued_at,
            "nbf": issued_at - NOT_BEFORE_SKEW_S,
            "exp": expires_at,
            "jti": str(uuid.uuid4()),
        }
        token = jwt.encode(
            claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "JWT"}
        )
        return MintedToken(token, key.kid, normalised, issued_at, expires_at)
