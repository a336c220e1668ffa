"""Per-request authentication, the way GitLab's AI gateway does it, with clearer errors.

Checks, in GitLab's order (headers are case-insensitive):

1. ``Authorization`` present → else 401 ``No authorization header presented``;
2. ``Bearer <token>`` → else 401 ``Invalid authorization header``;
3. ``X-Gitlab-Authentication-Type: oidc`` → else 401
   ``Invalid authentication token type - only OIDC is supported``;
4. the token verifies (trusted ``iss``, known ``kid``, allowed algorithm matching the key,
   signature, ``aud``, ``exp``/``nbf``/``iat`` with leeway) → else 401
   ``Forbidden by auth provider: <why>`` (GitLab says only the prefix), or 503 when the
   issuer's keys cannot be fetched;
5. ``X-Gitlab-Realm`` equals ``gitlab_realm`` and ``X-Gitlab-Instance-Id`` equals
   ``gitlab_instance_id`` (or ``sub``) → else 401 ``Header mismatch '<header>'``.

Verified tokens are cached (bounded, until ``exp``, dropped when the issuer's keys change), so
the instance's practice of reusing a token until shortly before it expires makes repeated
verification nearly free.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt
import orjson
from jwt import exceptions as jwt_errors

from enclave.common import wire
from enclave.gateway.auth.jwks import (
    ALLOWED_ALGORITHMS,
    IssuerUnavailable,
    KeyStore,
    UnknownSigningKey,
)

MAX_TOKEN_BYTES: Final = 16 * 1024
TOKEN_CACHE_SIZE: Final = 10_000

# Error texts (bodies are {"error": text}, GitLab's shape for authentication failures).
NO_AUTH_HEADER: Final = "No authorization header presented"
INVALID_AUTH_HEADER: Final = "Invalid authorization header"
INVALID_AUTH_TYPE: Final = "Invalid authentication token type - only OIDC is supported"
FORBIDDEN: Final = "Forbidden by auth provider"


def forbidden(reason: str) -> str:
    return f"{FORBIDDEN}: {reason}"


TOKEN_EXPIRED: Final = forbidden(
    "token expired (the instance mints a new one per request; check that the instance's and "
    "the gateway's clocks agree)"
)
TOKEN_NOT_YET_VALID: Final = forbidden(
    "token not yet valid (check that the instance's and the gateway's clocks agree)"
)
WRONG_AUDIENCE: Final = forbidden(f"wrong audience (expected '{wire.AUDIENCE}')")
UNKNOWN_KEY: Final = forbidden("unknown signing key (the issuer does not publish this key id)")
INVALID_SIGNATURE: Final = forbidden("invalid signature")
ALGORITHM_NOT_ALLOWED: Final = forbidden(
    "signing algorithm not allowed (RS256, ES256 and EdDSA are accepted)"
)
ALGORITHM_MISMATCH: Final = forbidden("signing algorithm does not match the signing key")
MALFORMED_TOKEN: Final = forbidden("malformed token")
TOKEN_TOO_LARGE: Final = forbidden(f"token larger than {MAX_TOKEN_BYTES} bytes")
INVALID_TOKEN: Final = forbidden("invalid token")


def header_mismatch(header: str) -> str:
    return f"Header mismatch '{header}'"


class AuthError(Exception):
    """Authentication failed; ``status`` and ``body`` are the response to send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def body(self) -> dict[str, str]:
        return {"error": self.message}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the verified claims that the endpoints need."""

    issuer: str
    subject: str | None
    instance_id: str | None  # gitlab_instance_id, falling back to sub
    realm: str | None
    scopes: frozenset[str]
    expires_at: float
    claims: Mapping[str, Any]

    def can(self, *scopes: str) -> bool:
        """True when the token grants any of ``scopes`` (unit primitives)."""
        return any(scope in self.scopes for scope in scopes)


@dataclass(slots=True)
class _Cached:
    principal: Principal
    store: KeyStore
    generation: int


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, unverified: only to pick the issuer and key."""
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthError(401, MALFORMED_TOKEN)
    try:
        header = orjson.loads(_b64decode(parts[0]))
        claims = orjson.loads(_b64decode(parts[1]))
    except (binascii.Error, ValueError):
        raise AuthError(401, MALFORMED_TOKEN) from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise AuthError(401, MALFORMED_TOKEN)
    return header, claims


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


class Authenticator:
    """Verifies requests against the key stores of the trusted issuers."""

    def __init__(
        self,
        stores: Mapping[str, KeyStore],
        *,
        audience: str = wire.AUDIENCE,
        leeway_s: float = 30,
        cache_size: int = TOKEN_CACHE_SIZE,
    ) -> None:
        self._stores = dict(stores)
        self._audience = audience
        self._leeway_s = leeway_s
        self._cache_size = cache_size
        self._cache: dict[str, _Cached] = {}
        self.cache_hits = 0
        self.verifications = 0

    @property
    def stores(self) -> Mapping[str, KeyStore]:
        return self._stores

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """Verify one request's headers; raises :class:`AuthError`.

        ``headers`` must look up names case-insensitively (Starlette's ``Headers`` does).
        """
        authorization = headers.get(wire.H_AUTHORIZATION)
        if authorization is None:
            raise AuthError(401, NO_AUTH_HEADER)
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise AuthError(401, INVALID_AUTH_HEADER)
        if (headers.get(wire.H_AUTH_TYPE) or "").strip().lower() != wire.AUTH_TYPE_OIDC:
            raise AuthError(401, INVALID_AUTH_TYPE)

        principal = self._cached(token)
        if principal is None:
            principal = await self._verify(token)

        if principal.realm != headers.get(wire.H_REALM):
            raise AuthError(401, header_mismatch("X-Gitlab-Realm"))
        if principal.instance_id != headers.get(wire.H_INSTANCE_ID):
            raise AuthError(401, header_mismatch("X-Gitlab-Instance-Id"))
        return principal

    # -- verified-token cache ---------------------------------------------------------------

    def _cached(self, token: str) -> Principal | None:
        entry = self._cache.get(token)
        if entry is None:
            return None
        if (
            entry.principal.expires_at <= time.time()
            or entry.generation != entry.store.generation
            or not entry.store.touch()
        ):
            self._cache.pop(token, None)
            return None
        self.cache_hits += 1
        return entry.principal

    def _remember(self, token: str, principal: Principal, store: KeyStore, generation: int) -> None:
        if len(self._cache) >= self._cache_size:
            # Drop the oldest entry (dicts keep insertion order): O(1), bounded memory.
            self._cache.pop(next(iter(self._cache)), None)
        self._cache[token] = _Cached(principal, store, generation)

    def clear_cache(self) -> None:
        self._cache.clear()

    # -- verification -----------------------------------------------------------------------

    async def _verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError(401, TOKEN_TOO_LARGE)
        header, unverified = _unverified_parts(token)

        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise AuthError(401, ALGORITHM_NOT_ALLOWED)
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise AuthError(401, forbidden("the token has no 'iss' claim"))
        store = self._stores.get(issuer.rstrip("/"))
        if store is None:
            await self._raise_if_no_issuer_is_usable()
            trusted = ", ".join(sorted(self._stores)) or "none"
            raise AuthError(
                401,
                forbidden(
                    f"untrusted issuer (this gateway trusts {trusted}; "
                    "see ENCLAVE_GATEWAY__ISSUER_URL)"
                ),
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError(401, MALFORMED_TOKEN)

        generation = store.generation
        key = store.lookup(kid)
        if key is None:
            try:
                key = await store.get(kid)
            except UnknownSigningKey:
                raise AuthError(401, UNKNOWN_KEY) from None
            except IssuerUnavailable as exc:
                raise AuthError(503, str(exc)) from None
            generation = store.generation
        if key.algorithm != algorithm:
            raise AuthError(401, ALGORITHM_MISMATCH)

        self.verifications += 1
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self._audience,
                leeway=self._leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt_errors.ExpiredSignatureError:
            raise AuthError(401, TOKEN_EXPIRED) from None
        except jwt_errors.ImmatureSignatureError:
            raise AuthError(401, TOKEN_NOT_YET_VALID) from None
        except jwt_errors.InvalidAudienceError:
            raise AuthError(401, WRONG_AUDIENCE) from None
        except jwt_errors.MissingRequiredClaimError as exc:
            raise AuthError(401, forbidden(f"the token has no '{exc.claim}' claim")) from None
        except jwt_errors.InvalidSignatureError:
            raise AuthError(401, INVALID_SIGNATURE) from None
        except jwt_errors.InvalidAlgorithmError:
            raise AuthError(401, ALGORITHM_NOT_ALLOWED) from None
        except jwt_errors.InvalidIssuedAtError:
            raise AuthError(401, forbidden("the token's 'iat' claim is not a number")) from None
        except jwt_errors.DecodeError:
            raise AuthError(401, MALFORMED_TOKEN) from None
        except jwt_errors.InvalidTokenError:
            raise AuthError(401, INVALID_TOKEN) from None

        principal = _principal(store.issuer, claims)
        self._remember(token, principal, store, generation)
        return principal

    async def _raise_if_no_issuer_is_usable(self) -> None:
        """503 while no trusted issuer's keys can be had, whatever the token says.

        Until then the gateway can verify nothing, so that is the problem to report first
        (it names the configured issuer URL, which also exposes a typo in it).
        """
        if any(store.touch() for store in self._stores.values()):
            return
        unavailable: IssuerUnavailable | None = None
        for store in self._stores.values():
            try:
                await store.ensure_usable()
                return
            except IssuerUnavailable as exc:
                unavailable = exc
        if unavailable is not None:
            raise AuthError(503, str(unavailable))


def _scopes(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, Iterable):
        return frozenset(scope for scope in value if isinstance(scope, str))
    return frozenset()


def _principal(issuer: str, claims: dict[str, Any]) -> Principal:
    subject = _optional_str(claims.get("sub"))
    instance_id = _optional_str(claims.get("gitlab_instance_id")) or subject
    return Principal(
        issuer=issuer,
        subject=subject,
        instance_id=instance_id,
        realm=_optional_str(claims.get("gitlab_realm")),
        scopes=_scopes(claims.get("scopes")),
        expires_at=float(claims["exp"]),
        claims=claims,
    )
