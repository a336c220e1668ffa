"""Signing keys of the trusted issuers, cached in memory (no network on the request path).

One :class:`KeyStore` per trusted issuer. Keys come from OIDC discovery
(``<issuer>/.well-known/openid-configuration`` → ``jwks_uri``), a direct JWKS URL or a static
JWKS file, and are kept for ``jwks_cache_ttl_s``. A background task refreshes them before they
go stale. A token with an unknown ``kid`` (a key rotation) triggers one refresh, shared by all
waiting requests, at most once per ``jwks_refresh_cooldown_s``, so a flood of random key ids
cannot become a flood of fetches. When the issuer is down, the last good keys keep serving for
``jwks_stale_s`` after they went stale; after that (or when no key was ever fetched)
:class:`IssuerUnavailable` says so — a different error from "token invalid".
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp
import orjson
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from enclave.common.logging import get_logger
from enclave.config import GatewaySettings
from enclave.gateway.egress import display_url
from enclave.gateway.http import connect_failure, read_limited
from enclave.gateway.single_flight import SingleFlight

log = get_logger(__name__)

# Never ``none``, never HS* (a public key must not double as an HMAC secret).
ALLOWED_ALGORITHMS: Final = frozenset({"RS256", "ES256", "EdDSA"})
MAX_JWKS_BYTES: Final = 1024 * 1024
MAX_KEYS: Final = 100
MIN_RSA_BITS: Final = 2048
DISCOVERY_PATH: Final = "/.well-known/openid-configuration"
# After a failed fetch with no usable keys, requests wait this long before trying again.
FAILURE_BACKOFF_S: Final = 1.0
# Background refresh starts this long before the keys go stale (at most).
REFRESH_MARGIN_S: Final = 300.0


def normalize_issuer(issuer: str) -> str:
    """Issuers compare without a trailing slash (``iss`` is the instance URL)."""
    return issuer.rstrip("/")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One usable public key and the only algorithm it may verify."""

    kid: str | None
    algorithm: str
    key: Any  # a cryptography public key object


class JwksError(Exception):
    """Keys could not be obtained; the message says from where and why."""


class UnknownSigningKey(Exception):
    """The token names a key the issuer does not publish (after any allowed refresh)."""


class IssuerUnavailable(Exception):
    """No usable key: the issuer's keys cannot be fetched and none are cached (or too old)."""

    def __init__(self, issuer: str, reason: str) -> None:
        self.issuer = issuer
        self.reason = reason
        super().__init__(
            f"The AI gateway cannot fetch the signing keys of {issuer}: {reason}. Check that the "
            "instance is running and reachable from the gateway (ENCLAVE_GATEWAY__ISSUER_URL), "
            "or point ENCLAVE_GATEWAY__JWKS_URL or ENCLAVE_GATEWAY__JWKS_FILE at its keys."
        )


# -- parsing --------------------------------------------------------------------------------


def _algorithm_for(jwk: Mapping[str, Any]) -> str | None:
    """The one allowed algorithm for this JWK, or None when we do not use it."""
    kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    if kty == "RSA":
        expected = "RS256"
    elif kty == "EC" and crv == "P-256":
        expected = "ES256"
    elif kty == "OKP" and crv in ("Ed25519", "Ed448"):
        expected = "EdDSA"
    else:
        return None
    if alg is not None and alg != expected:
        return None  # e.g. an RSA key marked PS256 or RSA-OAEP
    if jwk.get("use") not in (None, "sig"):
        return None
    ops = jwk.get("key_ops")
    if isinstance(ops, list) and "verify" not in ops:
        return None
    return expected


_PUBLIC_MEMBERS: Final = ("kty", "crv", "n", "e", "x", "y", "kid")


def parse_jwks(document: Any, max_keys: int = MAX_KEYS) -> tuple[dict[str, SigningKey], bytes]:
    """Usable keys by ``kid`` (``""`` for a key without one) and a fingerprint of the set.

    Keys of other types or algorithms are ignored; a document that is not a JWKS, or that has
    more than ``max_keys`` keys, is rejected.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("the document is not a JWKS (no 'keys' list)")
    entries = document["keys"]
    if len(entries) > max_keys:
        raise JwksError(f"the JWKS has {len(entries)} keys; at most {max_keys} are accepted")
    keys: dict[str, SigningKey] = {}
    public: list[tuple[str, ...]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        algorithm = _algorithm_for(entry)
        kid = entry.get("kid")
        if algorithm is None or (kid is not None and not isinstance(kid, str)):
            continue
        try:
            key = PyJWK(entry, algorithm=algorithm).key
        except (PyJWTError, ValueError, TypeError):
            continue
        if hasattr(key, "public_key"):
            # A JWKS should never carry private members; if it does, verify with the public half.
            log.warning("jwks_private_key_published", kid=kid)
            key = key.public_key()
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            continue
        keys.setdefault(kid or "", SigningKey(kid=kid, algorithm=algorithm, key=key))
        public.append(tuple(str(entry.get(member, "")) for member in _PUBLIC_MEMBERS))
    return keys, orjson.dumps(sorted(public))


# -- sources --------------------------------------------------------------------------------


class KeySource(Protocol):
    """Where an issuer's JWKS comes from."""

    @property
    def location(self) -> str:
        """URL or path, for messages."""
        ...

    async def fetch(self) -> Any:
        """The JWKS document (parsed JSON). Raises :class:`JwksError`."""
        ...


SessionGetter = Callable[[], aiohttp.ClientSession]


async def get_json(session: aiohttp.ClientSession, url: str, timeout_s: float) -> Any:
    """GET ``url`` as JSON within ``timeout_s``, at most :data:`MAX_JWKS_BYTES`."""
    shown = display_url(url)
    try:
        async with session.get(
            url,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            headers={"Accept": "application/json"},
            max_redirects=3,
        ) as response:
            if response.status != 200:
                raise JwksError(f"{shown} answered HTTP {response.status}")
            try:
                raw = await read_limited(response, MAX_JWKS_BYTES)
            except ValueError:
                raise JwksError(f"{shown} returned more than {MAX_JWKS_BYTES} bytes") from None
    except JwksError:
        raise
    except TimeoutError:
        raise JwksError(f"no answer from {shown} within {timeout_s:g} s") from None
    except aiohttp.ClientConnectorError as exc:
        raise JwksError(f"cannot connect to {shown} ({connect_failure(exc.os_error)})") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise JwksError(f"the request to {shown} failed ({type(exc).__name__})") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise JwksError(f"{shown} did not return JSON") from None


class DiscoverySource:
    """OIDC discovery: the issuer's configuration document names its ``jwks_uri``."""

    def __init__(self, issuer: str, session: SessionGetter, timeout_s: float) -> None:
        self._issuer = normalize_issuer(issuer)
        self._session = session
        self._timeout_s = timeout_s

    @property
    def location(self) -> str:
        return self._issuer + DISCOVERY_PATH

    async def fetch(self) -> Any:
        url = self.location
        document = await get_json(self._session(), url, self._timeout_s)
        if not isinstance(document, dict):
            raise JwksError(f"{display_url(url)} is not an OpenID configuration document")
        named = document.get("issuer")
        if not isinstance(named, str) or normalize_issuer(named) != self._issuer:
            raise JwksError(
                f"the discovery document at {display_url(url)} names the issuer {named!r}, not "
                f"{self._issuer!r}; set ENCLAVE_GATEWAY__ISSUER_URL to the instance's external URL"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("http://", "https://")):
            raise JwksError(f"the discovery document at {display_url(url)} has no http(s) jwks_uri")
        return await get_json(self._session(), jwks_uri, self._timeout_s)


class UrlSource:
    """A JWKS URL given directly (no discovery)."""

    def __init__(self, url: str, session: SessionGetter, timeout_s: float) -> None:
        self._url = url
        self._session = session
        self._timeout_s = timeout_s

    @property
    def location(self) -> str:
        return display_url(self._url)

    async def fetch(self) -> Any:
        return await get_json(self._session(), self._url, self._timeout_s)


class FileSource:
    """A static JWKS file (fully offline setups); re-read on every refresh."""

    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def location(self) -> str:
        return str(self._path)

    def _read(self) -> bytes:
        with self._path.open("rb") as handle:
            data = handle.read(MAX_JWKS_BYTES + 1)
        if len(data) > MAX_JWKS_BYTES:
            raise JwksError(f"{self._path} is larger than {MAX_JWKS_BYTES} bytes")
        return data

    async def fetch(self) -> Any:
        try:
            data = await asyncio.to_thread(self._read)  # file I/O off the event loop
        except OSError as exc:
            raise JwksError(f"cannot read the JWKS file {self._path} ({exc.strerror})") from None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise JwksError(f"the JWKS file {self._path} is not JSON") from None


# -- the cache ------------------------------------------------------------------------------


class KeyStore:
    """Cached keys of one issuer; see the module docstring for the refresh rules."""

    def __init__(
        self,
        issuer: str,
        source: KeySource,
        *,
        ttl_s: float,
        stale_s: float,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.issuer = normalize_issuer(issuer)
        self.source = source
        self._ttl_s = ttl_s
        self._stale_s = stale_s
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._max_keys = max_keys
        self._keys: dict[str, SigningKey] = {}
        self._fingerprint = b""
        self._fresh_until = -math.inf
        self._usable_until = -math.inf
        self._last_attempt = -math.inf
        self._fetches = SingleFlight(self._fetch)
        self.generation = 0  # bumped whenever the key set changes (drops cached tokens)
        self.fetches = 0  # fetch attempts, for metrics and tests
        self.last_error: str | None = None
        self.on_fetch: Callable[[str, bool], None] | None = None  # (issuer, ok), for metrics

    # -- state ------------------------------------------------------------------------------

    def usable(self) -> bool:
        """Keys are loaded and not past their stale window."""
        return self._clock() < self._usable_until

    @property
    def kids(self) -> list[str]:
        return sorted(self._keys)

    @property
    def key_count(self) -> int:
        return len(self._keys)

    def _may_fetch(self, now: float, have_keys: bool) -> bool:
        if self._fetches.running:
            return True  # joining a fetch costs nothing extra
        interval = self._cooldown_s if have_keys else min(self._cooldown_s, FAILURE_BACKOFF_S)
        return now - self._last_attempt >= interval

    # -- hot path ---------------------------------------------------------------------------

    def touch(self) -> bool:
        """True while the keys are usable; starts a background refresh once they are stale."""
        now = self._clock()
        if now < self._fresh_until:
            return True
        if now >= self._usable_until:
            return False
        if self._may_fetch(now, have_keys=True):
            self._fetches.start()  # stale but usable: serve now, refresh behind the scenes
        return True

    def lookup(self, kid: str | None) -> SigningKey | None:
        """The cached key for ``kid`` without waiting; None when unknown or nothing usable."""
        if not self.touch():
            return None
        if kid is None:
            key = self._keys.get("")
            if key is None and len(self._keys) == 1:
                key = next(iter(self._keys.values()))
            return key
        return self._keys.get(kid)

    async def get(self, kid: str | None) -> SigningKey:
        """The key for ``kid``, refreshing once if allowed.

        Raises :class:`UnknownSigningKey` or :class:`IssuerUnavailable`.
        """
        key = self.lookup(kid)
        if key is not None:
            return key
        now = self._clock()
        had_keys = now < self._usable_until
        if not self._may_fetch(now, had_keys):
            if had_keys:
                raise UnknownSigningKey
            raise IssuerUnavailable(self.issuer, self.last_error or "no keys are loaded yet")
        ok = await self.refresh()
        key = self.lookup(kid)
        if key is not None:
            return key
        if ok:
            raise UnknownSigningKey
        # The refresh failed, so an unknown kid may well be a rotation we cannot see yet.
        raise IssuerUnavailable(self.issuer, self.last_error or "the key fetch failed")

    # -- fetching ---------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Fetch now (or join the fetch in flight); True when keys were obtained."""
        return await self._fetches.join()

    async def _fetch(self) -> bool:
        ok = await self._fetch_once()
        if self.on_fetch is not None:
            self.on_fetch(self.issuer, ok)
        return ok

    async def _fetch_once(self) -> bool:
        self._last_attempt = self._clock()
        self.fetches += 1
        try:
            document = await self.source.fetch()
            self.install(document)
        except JwksError as exc:
            self.last_error = str(exc)
            log.warning("jwks_fetch_failed", issuer=self.issuer, reason=self.last_error)
            return False
        except Exception as exc:  # never let a surprise kill the refresher or hang waiters
            self.last_error = f"unexpected error ({type(exc).__name__})"
            log.exception("jwks_fetch_failed", issuer=self.issuer)
            return False
        return True

    def install(self, document: Any) -> None:
        """Take the keys of ``document`` (a JWKS) as fresh; :class:`JwksError` when unusable."""
        keys, fingerprint = parse_jwks(document, self._max_keys)
        if not keys:
            raise JwksError(
                f"{self.source.location} has no usable signing key (RS256 with an RSA key "
                "of at least 2048 bits, ES256 on P-256, or EdDSA)"
            )
        now = self._clock()
        if fingerprint != self._fingerprint:
            self._keys, self._fingerprint = keys, fingerprint
            self.generation += 1
            log.info(
                "jwks_loaded", issuer=self.issuer, kids=sorted(keys), source=self.source.location
            )
        self._fresh_until = now + self._ttl_s
        self._usable_until = self._fresh_until + self._stale_s
        self._last_attempt = now
        self.last_error = None

    async def ensure_usable(self) -> None:
        """For readiness: fetch when nothing is usable (within the same limits as requests)."""
        now = self._clock()
        if now < self._usable_until:
            return
        if self._may_fetch(now, have_keys=False) and await self.refresh():
            return
        raise IssuerUnavailable(self.issuer, self.last_error or "no keys are loaded yet")

    async def run_refresher(self) -> None:
        """Background task: fetch at start-up, then again shortly before the keys go stale."""
        margin = min(self._ttl_s * 0.1, REFRESH_MARGIN_S)
        failures = 0
        while True:
            if self._clock() >= self._fresh_until - margin:
                if await self.refresh():
                    failures = 0
                else:
                    failures += 1
            if failures:
                delay = min(60.0, FAILURE_BACKOFF_S * 2 ** min(failures - 1, 6))
            else:
                delay = max(1.0, self._fresh_until - margin - self._clock())
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        await self._fetches.aclose()


class LocalKeySource:
    """The gateway's own public key (it signs user tokens): always loaded, never fetched."""

    def __init__(self, document: dict[str, Any], location: str) -> None:
        self._document = document
        self._location = location

    @property
    def location(self) -> str:
        return self._location

    async def fetch(self) -> Any:
        return self._document


def local_key_store(
    issuer: str, document: dict[str, Any], location: str, clock: Callable[[], float]
) -> KeyStore:
    """A store that holds ``document``'s keys forever and never fetches (the gateway's own)."""
    store = KeyStore(
        issuer,
        LocalKeySource(document, location),
        ttl_s=math.inf,
        stale_s=0,
        cooldown_s=math.inf,
        clock=clock,
    )
    store.install(document)
    return store


def build_key_stores(
    settings: GatewaySettings,
    session: SessionGetter,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, KeyStore]:
    """The trusted instances' key stores, by normalized issuer (see ``trusted_issuer_list``)."""
    stores: dict[str, KeyStore] = {}
    for issuer in settings.trusted_issuer_list():
        source: KeySource
        if issuer.jwks_file is not None:
            source = FileSource(issuer.jwks_file)
        elif issuer.jwks_url:
            source = UrlSource(issuer.jwks_url, session, settings.jwks_fetch_timeout_s)
        else:
            source = DiscoverySource(issuer.url, session, settings.jwks_fetch_timeout_s)
        store = KeyStore(
            issuer.url,
            source,
            ttl_s=settings.jwks_cache_ttl_s,
            stale_s=settings.jwks_stale_s,
            cooldown_s=settings.jwks_refresh_cooldown_s,
            clock=clock,
        )
        stores.setdefault(store.issuer, store)
    return stores
