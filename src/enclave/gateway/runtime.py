"""The object every gateway endpoint shares (``request.app.state.gateway``).

Built once per process by :func:`enclave.gateway.app.create_app`: the key stores and the
authenticator, the model client chain (egress check → metrics → provider router), the rate
limiter, the prompt registry, the instance's routes table, the metrics and the HTTP sessions
(opened and closed by the app's lifespan). Endpoint modules import it from here, never from
``app.py``, which only wires routes and middleware.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import aiohttp

from enclave import __version__
from enclave.common.features import MODEL_FAMILIES
from enclave.common.http1 import Http1Client
from enclave.common.logging import get_logger
from enclave.common.model_probe import ModelProbe
from enclave.common.netrules import EgressPolicy
from enclave.common.shared_store import SharedStore
from enclave.config import SELF_SIGNED_ISSUER, EnclaveSettings
from enclave.gateway import output_caps
from enclave.gateway.auth.jwks import KeyStore, build_key_stores, local_key_store
from enclave.gateway.auth.self_signed import (
    SigningKeyError,
    UserTokenIssuer,
    load_or_create_signing_key,
)
from enclave.gateway.auth.verify import Authenticator
from enclave.gateway.config_watch import ConfigWatcher
from enclave.gateway.egress import EgressCheckedClient, EgressGuard, GuardedLookup, GuardedResolver
from enclave.gateway.metrics import GatewayMetrics, InstrumentedModelClient
from enclave.gateway.models.base import ModelRequest, ModelResult, TextModelClient, TextStream
from enclave.gateway.models.providers import ProviderRouter, install_settings
from enclave.gateway.models.registry import build_providers, provider_settings
from enclave.gateway.models.tls import default_tls
from enclave.gateway.rate_limit import RateLimiter
from enclave.gateway.routes_table import RoutesTable
from enclave.gateway.tenants import Tenants
from enclave.gateway.usage import UsageCounter, UsagePusher

log = get_logger(__name__)

MODEL_KEEPALIVE_S: Final = 4.0

USER_AGENT: Final = f"enclave-gateway/{__version__}"
# Outbound connections kept at once (streams hold theirs for the whole answer).
MAX_CONNECTIONS: Final = 1024


class _NotStarted:
    """Model client placeholder until the lifespan has opened the HTTP session."""

    async def complete(self, request: ModelRequest) -> ModelResult:
        raise RuntimeError("the gateway's HTTP session is not open (lifespan not started)")

    async def stream(self, request: ModelRequest) -> TextStream:
        raise RuntimeError("the gateway's HTTP session is not open (lifespan not started)")


class Gateway:
    """Everything the endpoints share, built once per process (``app.state.gateway``)."""

    def __init__(
        self,
        settings: EnclaveSettings,
        *,
        route_paths: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        refresh_keys_in_background: bool = True,
        config_file: Path | None = None,
    ) -> None:
        self.settings = settings
        gateway_settings = settings.gateway
        self.session: Http1Client | None = None  # model calls
        self.issuer_session: aiohttp.ClientSession | None = None  # issuers' keys
        self.models: TextModelClient = _NotStarted()
        self.providers: ProviderRouter = ProviderRouter({})
        self.stores: dict[str, KeyStore] = build_key_stores(
            gateway_settings, self.issuer_http, clock
        )
        self.user_tokens: UserTokenIssuer | None = None
        self.signing_key_problem: str | None = None
        local: KeyStore | None = None
        try:
            key, path = load_or_create_signing_key(settings)
        except SigningKeyError as exc:
            if gateway_settings.self_signing_key_file is not None:
                raise  # a configured key that cannot be used is a configuration error
            # The generated default could not be written (read-only data dir): everything but
            # direct access still works.
            self.signing_key_problem = str(exc)
            log.warning("gateway_signing_key_unavailable", reason=str(exc))
        else:
            self.user_tokens = UserTokenIssuer(key, gateway_settings.user_token_lifetime_s)
            local = local_key_store(SELF_SIGNED_ISSUER, self.user_tokens.jwks, str(path), clock)
        self.authenticator = Authenticator(
            self.stores,
            local=local,
            audience=gateway_settings.audience,
            leeway_s=gateway_settings.leeway_s,
        )
        issuers = [*self.stores, *([local.issuer] if local is not None else [])]
        self.metrics = GatewayMetrics(
            routes=list(route_paths), families=MODEL_FAMILIES, issuers=issuers
        )
        for store in [*self.stores.values(), *([local] if local is not None else [])]:
            store.on_fetch = self.metrics.jwks_fetch
        self.authenticator.hit_counter = self.metrics.token_cache_hits
        self.authenticator.miss_counter = self.metrics.token_cache_misses
        self.authenticator.on_failure = self.metrics.auth_failure
        # Redis shared by every replica (ENCLAVE_REDIS_URL): the limits count there.
        self.shared_store = SharedStore.from_settings(settings, "gateway")
        if self.shared_store is not None:
            self.shared_store.count_in("enclave_gateway", self.metrics.registry)
        self.rate_limiter = RateLimiter(
            per_instance_rps=gateway_settings.rate_limit_per_instance_rps,
            per_instance_burst=gateway_settings.rate_limit_per_instance_burst,
            per_user_rpm=gateway_settings.rate_limit_per_user_rpm,
            per_user_burst=gateway_settings.rate_limit_per_user_burst,
            clock=clock,
            max_buckets=gateway_settings.rate_limit_max_buckets,
            limited=self.metrics.rate_limited_scopes,
            store=self.shared_store,
        )
        # Shared-gateway mode: per-instance controls and the vendor models held here.
        self.tenants = Tenants(gateway_settings, self.rate_limiter, self.metrics, clock)
        self._clock = clock
        # Where Bedrock and Vertex models without an endpoint are called (region, project).
        install_settings(provider_settings(gateway_settings))
        # Shorter answers from the embedded CPU model, so it answers within the timeout.
        output_caps.install(gateway_settings.embedded_model_endpoint)
        self.egress_policy = EgressPolicy.parse(gateway_settings.model_egress_allow)
        self.egress = EgressGuard(clock, self.egress_policy)
        # The instance's feature→model routes (OpenAI-compatible API), fetched from the issuer.
        self.routes_table = RoutesTable.from_settings(gateway_settings, self.issuer_http, clock)
        # Revoked PATs and blocked users come with the routes: every token made for one user
        # is checked against them in the authenticator (hot path: set membership only).
        self.authenticator.revocation_check = self.routes_table.check_principal
        if not self.routes_table.enabled and self.user_tokens is not None:
            log.warning(
                "gateway_revocations_unchecked",
                reason="without the instance's routes this gateway cannot learn revoked "
                "personal access tokens and blocked users; direct-access user tokens stay "
                "valid until they expire",
            )
        # Usage of the direct paths, pushed to the instance (enclave.gateway.usage).
        self.usage = UsageCounter()
        self.usage_pusher: UsagePusher | None = None
        secret_file = gateway_settings.gateway_routes_secret_file
        if self.routes_table.enabled and secret_file is not None:
            self.usage_pusher = UsagePusher(
                self.usage,
                issuer=self.routes_table.issuer,
                secret_file=secret_file,
                session=self.issuer_http,
                interval_s=gateway_settings.usage_push_s,
                timeout_s=gateway_settings.routes_fetch_timeout_s,
            )
        self.config_file = config_file
        self.model_probe = ModelProbe()  # readiness only: is each routed model server up
        self._refresh_in_background = refresh_keys_in_background
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def started(self) -> bool:
        return self.session is not None

    def http(self) -> Http1Client:
        """The model-call session."""
        if self.session is None:
            raise RuntimeError("the gateway's HTTP session is not open (lifespan not started)")
        return self.session

    def issuer_http(self) -> aiohttp.ClientSession:
        """The session for the issuers' keys."""
        if self.issuer_session is None:
            raise RuntimeError("the gateway's HTTP session is not open (lifespan not started)")
        return self.issuer_session

    async def start(self) -> None:
        # Model calls: the lean pooled client (no proxies, no cookies: one client serves every
        # instance and user, so a vendor's affinity cookie must not ride along on someone
        # else's call), every address it connects to checked against the egress rules.
        self.session = Http1Client(
            resolve=GuardedLookup(policy=self.egress_policy),
            ssl_context=default_tls(self.settings.gateway),
            headers={"User-Agent": USER_AGENT},
            max_connections=MAX_CONNECTIONS,
            # Below the idle timeout of the model servers we call (llama.cpp's and uvicorn's,
            # which vLLM uses, are 5 s): reusing a connection the server already closed fails
            # the request (retried on a fresh connection, but it costs a round trip).
            keepalive_s=MODEL_KEEPALIVE_S,
        )
        # Issuers are configured by the administrator, not by requests: only metadata
        # addresses are refused there.
        self.issuer_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=16, ttl_dns_cache=60, resolver=GuardedResolver()),
            headers={"User-Agent": USER_AGENT},
            trust_env=False,
        )
        # One chain for every provider: egress check → metrics → provider by the model's kind.
        self.providers = ProviderRouter(
            build_providers(self.session, self.settings.gateway, self.issuer_http)
        )
        self.models = EgressCheckedClient(
            InstrumentedModelClient(self.providers, self.metrics), self.egress
        )
        if self._refresh_in_background:
            for store in self.stores.values():
                self._tasks.append(asyncio.create_task(store.run_refresher()))
            self._tasks.append(asyncio.create_task(self.routes_table.run_refresher()))
            if self.usage_pusher is not None:
                self._tasks.append(asyncio.create_task(self.usage_pusher.run()))
            if self.config_file is not None and self.settings.gateway.config_reload_s > 0:
                watcher = ConfigWatcher(
                    self.config_file, self.settings.gateway.config_reload_s, self.reload
                )
                self._tasks.append(asyncio.create_task(watcher.run()))
        log.info(
            "gateway_started",
            issuers=sorted(self.stores),
            key_sources=[store.source.location for store in self.stores.values()],
            direct_access=self.user_tokens is not None,
            # Shared mode: which features have a vendor model (never their keys).
            vendor_models={
                feature: f"{vendor.target.provider}/{vendor.target.model}"
                for feature, vendor in sorted(self.tenants.vendors.items())
            },
        )

    def rate_limiter_for(self, issuer: str) -> RateLimiter:
        """The limiter of ``issuer`` (its own when its trusted_issuers entry sets limits)."""
        own = self.tenants.own_limiter(issuer)
        return self.rate_limiter if own is None else own

    def reload(self, settings: EnclaveSettings) -> None:
        """Apply a changed trusted-issuer list (and each instance's controls) without a restart.

        Removed instances are refused from the next request, their cached tokens included;
        added ones get a key store (fetched in the background). Other settings need a restart.
        """
        new_stores = build_key_stores(settings.gateway, self.issuer_http, self._clock)
        stores: dict[str, KeyStore] = {}
        for issuer, store in new_stores.items():
            kept = self.stores.get(issuer)
            stores[issuer] = kept if kept is not None else store
            if kept is None:
                store.on_fetch = self.metrics.jwks_fetch
                if self._refresh_in_background and self.started:
                    self._tasks.append(asyncio.create_task(store.run_refresher()))
        removed = sorted(set(self.stores) - set(stores))
        added = sorted(set(stores) - set(self.stores))
        self.stores = stores
        self.authenticator.replace_stores(stores)
        self.tenants.update(settings.gateway)
        log.info(
            "gateway_trusted_issuers_reloaded", issuers=sorted(stores), removed=removed, added=added
        )

    async def model_health(self, request: ModelRequest) -> None:
        """Probe the model ``request`` names (its list, or a one-token answer), egress-checked.

        Raises :class:`EndpointNotAllowed` or the mapped :class:`ModelError`.
        """
        await self.egress.check(request.endpoint)
        await self.providers.health(request)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for store in self.stores.values():
            await store.aclose()
        await self.routes_table.aclose()
        if self.shared_store is not None:
            await self.shared_store.close()
        if self.session is not None:
            await self.session.close()
        if self.issuer_session is not None:
            await self.issuer_session.close()
        self.session = self.issuer_session = None
        self.models = _NotStarted()
        self.providers = ProviderRouter({})
