"""Per-request authentication, the way GitLab's AI gateway does it, with clearer errors.

Checks, in GitLab's order (headers are case-insensitive):

1. ``Authorization`` present → else 401 ``No authorization header presented``;
2. ``Bearer <token>`` → else 401 ``Invalid authorization header``;
3. ``X-Gitlab-Authentication-Type: oidc`` → else 401
   ``Invalid authentication token type - only OIDC is supported``;
4. the token verifies (well-formed, trusted ``iss``, known ``kid``, allowed algorithm matching
   the key, signature, ``aud``, ``exp``/``nbf``/``iat`` with leeway) → else 401
   ``Forbidden by auth provider: <why>`` (GitLab says only the prefix), or 503 when the
   issuer's keys cannot be fetched;
5. ``X-Gitlab-Realm`` equals ``gitlab_realm``, ``X-Gitlab-Instance-Id`` equals
   ``gitlab_instance_id`` (or ``sub``), and for user tokens the gateway signed itself
   (``iss`` ``gitlab-ai-gateway``) ``X-Gitlab-Global-User-Id`` equals ``sub`` → else 401
   ``Header mismatch '<header>'``.

6. for tokens made for one user (gateway-signed user tokens, the instance's OpenAI-API tokens)
   the :attr:`Authenticator.revocation_check` hook: 401 when the user is blocked or the PAT
   revoked, 503 when the revocation state is too old (see :mod:`enclave.gateway.routes_table`).

Trusted issuers: the configured instances (one :class:`~enclave.gateway.auth.jwks.KeyStore`
each) and the gateway itself (its own key, always loaded). User tokens only ever grant
``complete_code``, whatever they say.

Verified tokens are cached (bounded, until ``exp`` plus leeway, dropped when the issuer's keys
change), so the instance's practice of reusing a token until shortly before it expires makes
repeated verification nearly free.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from enclave.common import wire
from enclave.config import SELF_SIGNED_ISSUER
from enclave.gateway.auth.jwks import (
    ALLOWED_ALGORITHMS,
    IssuerUnavailable,
    KeyStore,
    SigningKey,
    UnknownSigningKey,
)
from enclave.gateway.auth.jws import (
    MAX_TOKEN_BYTES,
    TokenError,
    numeric_date,
    parse_token,
    signature_valid,
)

TOKEN_CACHE_SIZE: Final = 10_000
# The only unit primitive a user token (signed by the gateway itself) can ever grant.
USER_TOKEN_SCOPES: Final = frozenset({wire.UP_COMPLETE_CODE})

# Error texts (bodies are {"error": text}, GitLab's shape for authentication failures).
NO_AUTH_HEADER: Final = "No authorization header presented"
INVALID_AUTH_HEADER: Final = "Invalid authorization header"
INVALID_AUTH_TYPE: Final = "Invalid authentication token type - only OIDC is supported"
FORBIDDEN: Final = "Forbidden by auth provider"


def forbidden(reason: str) -> str:
    return f"{FORBIDDEN}: {reason}"


EXPIRED_REASON: Final = (
    "token expired (the instance mints a new one per request; check that the instance's and "
    "the gateway's clocks agree)"
)
NOT_YET_VALID_REASON: Final = (
    "token not yet valid (check that the instance's and the gateway's clocks agree)"
)
WRONG_AUDIENCE_REASON: Final = f"wrong audience (expected '{wire.AUDIENCE}')"
TOKEN_EXPIRED: Final = forbidden(EXPIRED_REASON)
TOKEN_NOT_YET_VALID: Final = forbidden(NOT_YET_VALID_REASON)
WRONG_AUDIENCE: Final = forbidden(WRONG_AUDIENCE_REASON)
UNKNOWN_KEY: Final = forbidden("unknown signing key (the issuer does not publish this key id)")
INVALID_SIGNATURE: Final = forbidden("invalid signature")
ALGORITHM_NOT_ALLOWED: Final = forbidden(
    "signing algorithm not allowed (RS256, ES256 and EdDSA are accepted)"
)
ALGORITHM_MISMATCH: Final = forbidden("signing algorithm does not match the signing key")
MALFORMED_TOKEN: Final = forbidden("malformed token")
TOKEN_TOO_LARGE: Final = forbidden(f"token larger than {MAX_TOKEN_BYTES} bytes")
INVALID_TOKEN: Final = forbidden("invalid token")
AMBIGUOUS_KEY: Final = forbidden(
    "the token names no signing key ('kid') and the issuer publishes several"
)


def header_mismatch(header: str) -> str:
    return f"Header mismatch '{header}'"


class AuthError(Exception):
    """Authentication failed; ``status`` and ``body`` are the response to send.

    ``code`` names the failure for surfaces that carry one (the OpenAI API's ``error.code``).
    """

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code

    @property
    def body(self) -> dict[str, str]:
        return {"error": self.message}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the verified claims that the endpoints need."""

    issuer: str
    subject: str | None
    instance_id: str | None  # gitlab_instance_id, falling back to sub for instance tokens
    realm: str | None
    scopes: frozenset[str]
    expires_at: float
    claims: Mapping[str, Any]
    user_token: bool = False  # signed by this gateway for one user (direct access)

    def can(self, *scopes: str) -> bool:
        """True when the token grants any of ``scopes`` (unit primitives)."""
        return not self.scopes.isdisjoint(scopes)  # one C call, not a generator per request


@dataclass(slots=True)
class _Cached:
    principal: Principal
    valid_until: float
    store: KeyStore
    generation: int


class _Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


class Authenticator:
    """Verifies requests against the key stores of the trusted issuers."""

    def __init__(
        self,
        stores: Mapping[str, KeyStore],
        *,
        local: KeyStore | None = None,
        audience: str = wire.AUDIENCE,
        leeway_s: float = 30,
        cache_size: int = TOKEN_CACHE_SIZE,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._stores = dict(stores)
        self._local = local
        self._audience = audience
        self._leeway_s = leeway_s
        self._cache_size = cache_size
        self._now = wall_clock
        self._cache: dict[str, _Cached] = {}
        self.cache_hits = 0
        self.verifications = 0
        # Metrics hooks (set by the gateway): counters with .inc(), a failure callback.
        self.hit_counter: _Incrementable | None = None
        self.miss_counter: _Incrementable | None = None
        self.on_failure: Callable[[AuthError], None] | None = None
        # Revocation hook (set by the gateway: RoutesTable.check_principal): called for every
        # authenticated request, cached token or not; raises AuthError for revoked tokens.
        self.revocation_check: Callable[[Principal], None] | None = None

    @property
    def stores(self) -> Mapping[str, KeyStore]:
        """The trusted instances' key stores (not the gateway's own)."""
        return self._stores

    @property
    def local(self) -> KeyStore | None:
        """The gateway's own key (user tokens), when it has one."""
        return self._local

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """Verify one request's headers; raises :class:`AuthError`.

        ``headers`` is looked up by lowercase names (``common/wire.py``'s): Starlette's
        ``Headers`` or a dict keyed by lowercase names
        (:func:`enclave.gateway.request_headers.first_values`).
        """
        try:
            return await self._authenticate(headers)
        except AuthError as exc:
            if self.on_failure is not None:
                self.on_failure(exc)
            raise

    async def _authenticate(self, headers: Mapping[str, str]) -> Principal:
        authorization = headers.get(wire.H_AUTHORIZATION)
        if authorization is None:
            raise AuthError(401, NO_AUTH_HEADER)
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise AuthError(401, INVALID_AUTH_HEADER)
        if (headers.get(wire.H_AUTH_TYPE) or "").strip().lower() != wire.AUTH_TYPE_OIDC:
            raise AuthError(401, INVALID_AUTH_TYPE)
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError(401, TOKEN_TOO_LARGE)

        principal = self._cached(token)
        if principal is None:
            if self.miss_counter is not None:
                self.miss_counter.inc()
            principal = await self._verify(token)
        elif self.hit_counter is not None:
            self.hit_counter.inc()

        realm = principal.realm
        if realm is None or realm != headers.get(wire.H_REALM):
            raise AuthError(401, header_mismatch("X-Gitlab-Realm"))
        instance_id = principal.instance_id
        if instance_id is None or instance_id != headers.get(wire.H_INSTANCE_ID):
            raise AuthError(401, header_mismatch("X-Gitlab-Instance-Id"))
        if principal.user_token:
            subject = principal.subject
            if subject is None or subject != headers.get(wire.H_GLOBAL_USER_ID):
                raise AuthError(401, header_mismatch("X-Gitlab-Global-User-Id"))
        if self.revocation_check is not None:
            # The one place every token is authenticated: revoked PATs and blocked users are
            # refused here for every endpoint (set membership, no I/O).
            self.revocation_check(principal)
        return principal

    # -- verified-token cache ---------------------------------------------------------------

    def _cached(self, token: str) -> Principal | None:
        entry = self._cache.get(token)
        if entry is None:
            return None
        if (
            entry.valid_until <= self._now()
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
        valid_until = principal.expires_at + self._leeway_s
        self._cache[token] = _Cached(principal, valid_until, store, generation)

    def clear_cache(self) -> None:
        self._cache.clear()

    def replace_stores(self, stores: Mapping[str, KeyStore]) -> None:
        """Trust exactly ``stores`` from now on (a reloaded trusted-issuer list).

        Verified tokens of issuers no longer trusted are forgotten at once, so a removed
        instance's tokens, already minted and cached or not, are refused from the next request.
        """
        self._stores = dict(stores)
        kept = set(self._stores.values())
        self._cache = {
            token: entry
            for token, entry in self._cache.items()
            if entry.store in kept or entry.store is self._local
        }

    # -- verification -----------------------------------------------------------------------

    async def _verify(self, token: str) -> Principal:
        try:
            parsed = parse_token(token)
        except TokenError as exc:
            raise AuthError(401, forbidden(exc.reason)) from None
        header, claims = parsed.header, parsed.claims

        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in ALLOWED_ALGORITHMS:
            raise AuthError(401, ALGORITHM_NOT_ALLOWED)
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise AuthError(401, forbidden("the token has no 'iss' claim"))
        store = await self._store_for(issuer)
        kid: str | None = header.get("kid")

        generation = store.generation
        key = store.lookup(kid)
        if key is None:
            key = await self._fetch_key(store, kid)
            generation = store.generation
        if key.algorithm != algorithm:
            raise AuthError(401, ALGORITHM_MISMATCH)

        self.verifications += 1
        if not signature_valid(algorithm, key.key, parsed.signing_input, parsed.signature):
            raise AuthError(401, INVALID_SIGNATURE)
        try:
            expires_at = self._check_claims(claims)
        except TokenError as exc:
            raise AuthError(401, forbidden(exc.reason)) from None

        principal = _principal(store.issuer, claims, expires_at, user_token=store is self._local)
        self._remember(token, principal, store, generation)
        return principal

    async def _store_for(self, issuer: str) -> KeyStore:
        if issuer == SELF_SIGNED_ISSUER and self._local is not None:
            return self._local
        store = self._stores.get(issuer.rstrip("/"))
        if store is None:
            await self._raise_if_no_issuer_is_usable()
            # A gateway shared by several instances does not tell one who the others are.
            trusted = (
                ", ".join(sorted(self._stores)) or "none"
                if len(self._stores) <= 1
                else f"{len(self._stores)} instances"
            )
            raise AuthError(
                401,
                forbidden(
                    f"untrusted issuer (this gateway trusts {trusted}; see "
                    "ENCLAVE_GATEWAY__ISSUER_URL and ENCLAVE_GATEWAY__TRUSTED_ISSUERS)"
                ),
            )
        return store

    @staticmethod
    async def _fetch_key(store: KeyStore, kid: str | None) -> SigningKey:
        try:
            return await store.get(kid)
        except UnknownSigningKey:
            if kid is None and store.key_count > 1:
                raise AuthError(401, AMBIGUOUS_KEY) from None
            raise AuthError(401, UNKNOWN_KEY) from None
        except IssuerUnavailable as exc:
            raise AuthError(503, str(exc)) from None

    def _check_claims(self, claims: dict[str, Any]) -> float:
        """``exp`` (required), ``nbf``, ``iat`` and ``aud``; returns ``exp``."""
        now = self._now()
        leeway = self._leeway_s
        if "aud" not in claims:
            raise TokenError("the token has no 'aud' claim")
        expires_at = numeric_date(claims, "exp")
        if expires_at is None:
            raise TokenError("the token has no 'exp' claim")
        not_before = numeric_date(claims, "nbf")
        issued_at = numeric_date(claims, "iat")
        if expires_at + leeway <= now:
            raise TokenError(EXPIRED_REASON)
        if (not_before is not None and not_before > now + leeway) or (
            issued_at is not None and issued_at > now + leeway
        ):
            raise TokenError(NOT_YET_VALID_REASON)
        audience = claims["aud"]
        if isinstance(audience, str):
            audience = [audience]
        if not isinstance(audience, list) or self._audience not in audience:
            raise TokenError(WRONG_AUDIENCE_REASON)
        return expires_at

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
    """A JSON list of unit primitives (or one space-separated string); anything else: none."""
    if isinstance(value, list):
        return frozenset(scope for scope in value if isinstance(scope, str))
    if isinstance(value, str):
        return frozenset(value.split())
    return frozenset()


def _principal(
    issuer: str, claims: dict[str, Any], expires_at: float, *, user_token: bool
) -> Principal:
    subject = _optional_str(claims.get("sub"))
    instance_id = _optional_str(claims.get("gitlab_instance_id"))
    scopes = _scopes(claims.get("scopes"))
    if user_token:
        scopes &= USER_TOKEN_SCOPES
    elif instance_id is None:
        instance_id = subject
    return Principal(
        issuer=issuer,
        subject=subject,
        instance_id=instance_id,
        realm=_optional_str(claims.get("gitlab_realm")),
        scopes=scopes,
        expires_at=expires_at,
        claims=claims,
        user_token=user_token,
    )
