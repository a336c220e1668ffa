"""The instance's feature→model routes, kept in memory (no database or network on the hot path).

The OpenAI-compatible API (:mod:`enclave.gateway.api.openai`) serves a feature with the
self-hosted model the instance assigns to it. The gateway has no database, so it reads the
whole table from ``<issuer>/api/v4/internal/ai/gateway_routes`` (presenting the shared secret of
``gateway.gateway_routes_secret_file``) and keeps it, like the issuer's keys
(:mod:`enclave.gateway.auth.jwks`):

* fetched in the background at start-up, never blocking it (an instance that is down only makes
  this API answer 503 until it is back);
* re-read every ``routes_refresh_s``, so an administrator's change is live within that time; a
  request that finds the table due also starts a refresh (one at a time), without waiting;
* when the instance cannot be reached the last good table keeps serving for ``routes_stale_s``
  more, then :class:`RoutesUnavailable` says so, with the reason of the last failed fetch;
* bounded: at most :data:`MAX_ROUTES_BYTES` of JSON and :data:`MAX_ROUTES` routes.

**Revocations** travel in the same document (``"revoked": {"personal_access_tokens": [ids],
"users": [global user ids]}``): the PATs revoked and the users blocked whose tokens may not have
expired yet (the instance leaves out the rest, so the lists stay small; at most
:data:`MAX_REVOKED` each). :meth:`RoutesTable.check_principal` refuses, by set membership on
the hot path, the tokens made for one user — the instance's OpenAI-API tokens (``sub`` = the
user's global id, ``enclave_pat_id`` = the PAT they were made from) and the gateway's own
direct-access user tokens (``sub``) — that such a revocation covers. A revocation therefore
reaches every gateway within ``routes_refresh_s`` (30 s by default) plus one fetch
(``routes_fetch_timeout_s``); past the stale window those tokens get a 503 (fail closed), since
the gateway can no longer know whether they were revoked.

Only the single trusted instance (``gateway.issuer_url``) is asked: a shared gateway
(``trusted_issuers``) has no one table to serve, so there the API stays off. The table holds
decrypted model API keys: they are never logged and never leave except to their own endpoint.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from enclave.common import wire
from enclave.common.logging import get_logger
from enclave.common.routes_secret import RoutesSecretError, read_routes_secret
from enclave.config import GatewaySettings
from enclave.gateway.auth.verify import AuthError, Principal, forbidden
from enclave.gateway.egress import display_url
from enclave.gateway.http import connect_failure, read_limited
from enclave.gateway.models.providers import OPENAI
from enclave.gateway.single_flight import SingleFlight
from enclave.gateway.targets import PlanError, resolve_target

log = get_logger(__name__)

ROUTES_PATH: Final = "/api/v4/internal/ai/gateway_routes"
MAX_ROUTES_BYTES: Final = 1024 * 1024
MAX_ROUTES: Final = 256
# Revoked PAT ids and blocked users each; the instance sends only those whose tokens may still
# be valid (a token lifetime plus margins), so this is far above what a real instance sends.
MAX_REVOKED: Final = 10_000
# Retry soon after a failure (but not in a tight loop) whatever the refresh interval.
FAILURE_RETRY_S: Final = 5.0


class RoutesError(Exception):
    """One fetch of the routes failed; the message says why (never the secret)."""


class RoutesUnavailable(Exception):
    """No usable routes: never loaded, past their stale window, or the API is off."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class FeatureRoute:
    """How one feature is served: a callable model, or why not."""

    feature: str
    unit_primitive: str
    available: bool
    reason: str | None = None  # disabled, vendored, unassigned, misconfigured, unsupported
    message: str | None = None
    model_name: str | None = None
    family: str | None = None
    endpoint: str | None = None  # the provider's API base, no trailing slash
    upstream_model: str | None = None  # the "model" the model server expects
    api_key: str | None = field(default=None, repr=False)
    force_text_completion: bool = False  # a text-completion-* identifier
    provider: str = OPENAI  # the provider module that serves it (models.providers)


def _route(entry: Any) -> FeatureRoute | None:
    """One entry of the instance's document; None when it is not even shaped like one."""
    if not isinstance(entry, dict):
        return None
    feature, primitive = entry.get("feature"), entry.get("unit_primitive")
    if not isinstance(feature, str) or not feature or not isinstance(primitive, str):
        return None
    if entry.get("available") is not True:
        reason = entry.get("reason")
        message = entry.get("message")
        return FeatureRoute(
            feature,
            primitive,
            available=False,
            reason=reason if isinstance(reason, str) else "unassigned",
            message=message if isinstance(message, str) else f"{feature} is not available",
        )
    model = entry.get("model")
    if not isinstance(model, dict):
        return None

    def text(name: str) -> str | None:
        value = model.get(name)
        return value if isinstance(value, str) and value else None

    name, family, provider = text("name"), text("family"), text("provider") or "api"
    try:
        target = resolve_target(
            provider, family, text("endpoint"), text("api_key"), text("identifier")
        )
    except PlanError as exc:
        # Users read this message: it never repeats the administrator's endpoint.
        detail = exc.detail if isinstance(exc.detail, str) else "endpoint or identifier invalid"
        return FeatureRoute(
            feature,
            primitive,
            available=False,
            reason="misconfigured",
            message=f"the model {name!r} serving {feature} cannot be called: {detail}",
            model_name=name,
            family=family,
        )
    return FeatureRoute(
        feature,
        primitive,
        available=True,
        model_name=name,
        family=family,
        endpoint=target.endpoint,
        upstream_model=target.model,
        api_key=target.api_key,
        force_text_completion=target.force_text_completion,
        provider=target.provider,
    )


def parse_routes(document: Any, max_routes: int = MAX_ROUTES) -> dict[str, FeatureRoute]:
    """The routes of the instance's document, by feature; :class:`RoutesError` if unusable."""
    if not isinstance(document, dict) or not isinstance(document.get("routes"), list):
        raise RoutesError("the instance's answer has no 'routes' list")
    entries = document["routes"]
    if len(entries) > max_routes:
        raise RoutesError(f"the instance sent {len(entries)} routes, more than {max_routes}")
    routes: dict[str, FeatureRoute] = {}
    for entry in entries:
        route = _route(entry)
        if route is not None:
            routes.setdefault(route.feature, route)
    return routes


@dataclass(frozen=True, slots=True)
class Revocations:
    """What the instance revoked recently: PAT ids (as text) and users' global ids."""

    pat_ids: frozenset[str] = frozenset()
    user_ids: frozenset[str] = frozenset()
    editor_key_ids: frozenset[str] = frozenset()


def _ids(value: Any, name: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list):
        raise RoutesError(f"the instance's 'revoked.{name}' is not a list")
    if len(value) > MAX_REVOKED:
        raise RoutesError(f"the instance sent {len(value)} revoked {name}, more than {MAX_REVOKED}")
    if not all(isinstance(item, str | int) and not isinstance(item, bool) for item in value):
        raise RoutesError(f"the instance's 'revoked.{name}' holds something other than ids")
    return frozenset(str(item) for item in value)


def parse_revocations(document: Any) -> Revocations:
    """The revocations of the instance's document; :class:`RoutesError` if malformed.

    An instance too old to send them sends none (an empty set)."""
    revoked = document.get("revoked") if isinstance(document, dict) else None
    if revoked is None:
        return Revocations()
    if not isinstance(revoked, dict):
        raise RoutesError("the instance's 'revoked' is not an object")
    return Revocations(
        _ids(revoked.get("personal_access_tokens"), "personal_access_tokens"),
        _ids(revoked.get("users"), "users"),
        _ids(revoked.get("editor_keys"), "editor_keys"),
    )


def needs_revocation_check(principal: Principal) -> bool:
    """Tokens made for one user from a PAT: the gateway's user tokens, OpenAI-API tokens."""
    return principal.user_token or principal.claims.get(wire.CLAIM_SURFACE) == wire.SURFACE_OPENAI


REVOKED_PAT: Final = forbidden(
    "the personal access token this token was made from has been revoked; create a new "
    "personal access token and ask the instance for a new token"
)
REVOKED_EDITOR_KEY: Final = forbidden(
    "this editor key has been revoked; create a new one on the instance's profile page "
    "(/-/user_settings/editor_keys)"
)
BLOCKED_USER: Final = forbidden(
    "the user of this token is blocked on the instance; ask an administrator to unblock the account"
)


SessionGetter = Callable[[], aiohttp.ClientSession]


class RoutesTable:
    """The in-memory routes of the trusted instance; see the module docstring."""

    def __init__(
        self,
        *,
        issuer: str | None,
        secret_file: Path | None,
        session: SessionGetter,
        refresh_s: float = 30,
        stale_s: float = 300,
        timeout_s: float = 5,
        clock: Callable[[], float] = time.monotonic,
        off_reason: str | None = None,
    ) -> None:
        self.issuer = (issuer or "").rstrip("/")
        self.url = self.issuer + ROUTES_PATH
        self._secret_file = secret_file
        self._session = session
        self.refresh_s = refresh_s
        self._stale_s = stale_s
        self._timeout_s = timeout_s
        self._clock = clock
        self.off_reason = off_reason
        if off_reason is None and (secret_file is None or not issuer):
            self.off_reason = (
                "the OpenAI-compatible API is off on this gateway: set "
                "ENCLAVE_GATEWAY__GATEWAY_ROUTES_SECRET_FILE to the secret shared with the "
                "instance (`enclave up` does it for you)"
            )
        self._routes: dict[str, FeatureRoute] = {}
        self._revoked = Revocations()
        self._loaded = False
        self._fresh_until = -math.inf
        self._usable_until = -math.inf
        self.loaded_at: float | None = None
        self._fetches = SingleFlight(self._fetch)
        self.fetches = 0
        self.generation = 0  # bumped whenever the routes change
        self.last_error: str | None = None

    @classmethod
    def from_settings(
        cls,
        settings: GatewaySettings,
        session: SessionGetter,
        clock: Callable[[], float] = time.monotonic,
    ) -> RoutesTable:
        issuers = settings.trusted_issuer_list()
        off_reason = None
        if len(issuers) != 1:
            off_reason = (
                "the OpenAI-compatible API needs a gateway that trusts a single instance "
                "(ENCLAVE_GATEWAY__ISSUER_URL without TRUSTED_ISSUERS)"
            )
        return cls(
            issuer=issuers[0].url if issuers else None,
            secret_file=settings.gateway_routes_secret_file,
            session=session,
            refresh_s=settings.routes_refresh_s,
            stale_s=settings.routes_stale_s,
            timeout_s=settings.routes_fetch_timeout_s,
            clock=clock,
            off_reason=off_reason,
        )

    @property
    def enabled(self) -> bool:
        return self.off_reason is None

    # -- hot path ---------------------------------------------------------------------------

    def routes(self) -> Mapping[str, FeatureRoute]:
        """The current routes without waiting; raises :class:`RoutesUnavailable`.

        When they are due a refresh starts in the background and this request is served from
        what is loaded (within the stale window).
        """
        if self.off_reason is not None:
            raise RoutesUnavailable(self.off_reason)
        now = self._clock()
        if now >= self._fresh_until:
            self._fetches.start()
        if now < self._usable_until:
            return self._routes
        if not self._loaded:
            raise RoutesUnavailable(
                f"the gateway has not loaded the AI feature routes from the instance "
                f"{self.issuer} yet: {self.last_error or 'the first fetch is under way'}"
            )
        age = now - (self.loaded_at or now)
        raise RoutesUnavailable(
            f"the AI feature routes from the instance {self.issuer} are out of date (last "
            f"loaded {age:.0f} s ago) and the instance cannot be reached: "
            f"{self.last_error or 'a new fetch is under way'}"
        )

    @property
    def revocations(self) -> Revocations:
        return self._revoked

    def check_principal(self, principal: Principal) -> None:
        """Refuse a token whose PAT was revoked or whose user is blocked; no I/O.

        The one revocation check (:attr:`Authenticator.revocation_check` calls it for every
        request). Raises :class:`AuthError`: 401 ``token_revoked``, or 503
        ``routes_unavailable`` when the state is not loaded or older than the stale window
        (fail closed). A gateway without routes (no shared secret, or shared-gateway mode) has
        no revocation source: it checks nothing and logged so at start-up.
        """
        if self.off_reason is not None or not needs_revocation_check(principal):
            return
        try:
            self.routes()  # usable within the stale window; starts a refresh when due
        except RoutesUnavailable as exc:
            raise AuthError(
                503,
                "The gateway cannot check whether this token was revoked: " + exc.message,
                "routes_unavailable",
            ) from None
        revoked = self._revoked
        pat_id = principal.claims.get(wire.CLAIM_PAT_ID)
        if isinstance(pat_id, str | int) and str(pat_id) in revoked.pat_ids:
            raise AuthError(401, REVOKED_PAT, "token_revoked")
        key_id = principal.claims.get(wire.CLAIM_EDITOR_KEY_ID)
        if isinstance(key_id, str | int) and str(key_id) in revoked.editor_key_ids:
            raise AuthError(401, REVOKED_EDITOR_KEY, "token_revoked")
        if principal.subject is not None and principal.subject in revoked.user_ids:
            raise AuthError(401, BLOCKED_USER, "token_revoked")

    # -- fetching ---------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Fetch now (or join the fetch in flight); True when the routes were loaded."""
        if self.off_reason is not None:
            return False
        return await self._fetches.join()

    async def _fetch(self) -> bool:
        self.fetches += 1
        try:
            document = await self._get()
            self.install(document)
        except RoutesError as exc:
            self.last_error = str(exc)
            # Retry soon: a request must not start a new fetch per call while it is down.
            self._fresh_until = self._clock() + min(self.refresh_s, FAILURE_RETRY_S)
            log.warning("gateway_routes_fetch_failed", issuer=self.issuer, reason=self.last_error)
            return False
        except Exception as exc:  # never let a surprise kill the refresher or hang waiters
            self.last_error = f"unexpected error ({type(exc).__name__})"
            self._fresh_until = self._clock() + min(self.refresh_s, FAILURE_RETRY_S)
            log.exception("gateway_routes_fetch_failed", issuer=self.issuer)
            return False
        return True

    async def _get(self) -> Any:
        assert self._secret_file is not None
        try:
            secret = await asyncio.to_thread(read_routes_secret, self._secret_file)  # off the loop
        except RoutesSecretError as exc:
            raise RoutesError(str(exc)) from None
        shown = display_url(self.url)
        try:
            async with self._session().get(
                self.url,
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                headers={"Accept": "application/json", "Authorization": f"Bearer {secret}"},
                allow_redirects=False,  # the secret goes to the instance and nowhere else
            ) as response:
                if response.status == 404:
                    raise RoutesError(
                        f"{shown} answered HTTP 404: the instance has no gateway routes secret "
                        "(set ENCLAVE_INSTANCE__GATEWAY_ROUTES_SECRET_FILE) or is too old"
                    )
                if response.status == 401:
                    raise RoutesError(
                        f"{shown} refused the gateway routes secret (HTTP 401): the gateway's "
                        "and the instance's gateway_routes_secret_file must hold the same secret"
                    )
                if response.status != 200:
                    raise RoutesError(f"{shown} answered HTTP {response.status}")
                try:
                    raw = await read_limited(response, MAX_ROUTES_BYTES)
                except ValueError:
                    raise RoutesError(
                        f"{shown} returned more than {MAX_ROUTES_BYTES} bytes"
                    ) from None
        except RoutesError:
            raise
        except TimeoutError:
            raise RoutesError(f"no answer from {shown} within {self._timeout_s:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            raise RoutesError(
                f"cannot connect to {shown} ({connect_failure(exc.os_error)})"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise RoutesError(f"the request to {shown} failed ({type(exc).__name__})") from None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RoutesError(f"{shown} did not return JSON") from None

    def install(self, document: Any) -> None:
        """Take the routes of ``document`` as fresh; :class:`RoutesError` when unusable."""
        routes = parse_routes(document)
        revoked = parse_revocations(document)
        now = self._clock()
        if revoked != self._revoked:
            self._revoked = revoked
            log.info(
                "gateway_revocations_loaded",
                personal_access_tokens=len(revoked.pat_ids),
                users=len(revoked.user_ids),
            )
        if routes != self._routes or not self._loaded:
            self._routes = routes
            self.generation += 1
            log.info(
                "gateway_routes_loaded",
                issuer=self.issuer,
                available=sorted(name for name, route in routes.items() if route.available),
            )
        self._loaded = True
        self.loaded_at = now
        self._fresh_until = now + self.refresh_s
        self._usable_until = self._fresh_until + self._stale_s
        self.last_error = None

    async def run_refresher(self) -> None:
        """Background task: fetch at start-up, then every ``refresh_s`` (sooner after failures)."""
        if self.off_reason is not None:
            return
        while True:
            if self._clock() >= self._fresh_until:
                await self.refresh()
            delay = max(0.1, min(self.refresh_s, self._fresh_until - self._clock()))
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        await self._fetches.aclose()
