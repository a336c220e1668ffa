"""The gateway's ASGI application.

``create_app(settings)`` builds it; ``create_app_from_env()`` is the factory uvicorn imports in
each worker process (``uvicorn --factory enclave.gateway.app:create_app_from_env``). Hot
endpoints are plain Starlette routes with orjson bodies behind two pure ASGI middlewares
(request context, client address allow-list); the outbound clients are two pooled aiohttp
sessions opened in the lifespan: one for model calls, whose resolver enforces the model egress
allow-list, and one for the issuers' keys, which are fetched in the background at start-up
(never blocking it, even when an issuer is down) and cached in memory. The gateway's own
signing key (user tokens) is loaded, or generated, when the app is built.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import aiohttp
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from enclave import __version__
from enclave.common.features import MODEL_FAMILIES
from enclave.common.logging import configure_logging, get_logger
from enclave.common.model_probe import ModelProbe
from enclave.common.netrules import EgressPolicy, parse_networks
from enclave.config import SELF_SIGNED_ISSUER, EnclaveSettings, load_settings
from enclave.gateway.api import monitoring
from enclave.gateway.api.openai import chat_completions as openai_chat
from enclave.gateway.api.openai import completions as openai_completions
from enclave.gateway.api.openai import models as openai_models
from enclave.gateway.api.v1.chat.invoke import chat
from enclave.gateway.api.v1.code.user_access_token import user_access_token
from enclave.gateway.api.v1.models.definitions import definitions
from enclave.gateway.api.v1.prompts.invoke import invoke
from enclave.gateway.api.v2.chat.agent import agent
from enclave.gateway.api.v2.code.completions import completions
from enclave.gateway.api.v2.code.generations import generations
from enclave.gateway.api.v4.code.suggestions import suggestions
from enclave.gateway.auth.jwks import KeyStore, build_key_stores, local_key_store
from enclave.gateway.auth.self_signed import (
    SigningKeyError,
    UserTokenIssuer,
    load_or_create_signing_key,
)
from enclave.gateway.auth.verify import Authenticator
from enclave.gateway.egress import EgressCheckedClient, EgressGuard, GuardedResolver
from enclave.gateway.http import json_response
from enclave.gateway.metrics import GatewayMetrics, InstrumentedModelClient, metrics_endpoint
from enclave.gateway.middleware import ClientAddressMiddleware, RequestContextMiddleware
from enclave.gateway.models.base import ModelRequest, ModelResult, TextModelClient, TextStream
from enclave.gateway.models.providers import ProviderRouter, install_settings
from enclave.gateway.models.registry import build_providers, provider_settings
from enclave.gateway.prompts.registry import (
    DEFINITIONS_DIR,
    PromptRegistry,
    install_registry,
    load_registry,
)
from enclave.gateway.rate_limit import RateLimiter
from enclave.gateway.routes_table import RoutesTable

log = get_logger(__name__)

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
        clock: Callable[[], float] = time.monotonic,
        refresh_keys_in_background: bool = True,
    ) -> None:
        self.settings = settings
        gateway_settings = settings.gateway
        self.session: aiohttp.ClientSession | None = None  # model calls
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
            self.stores, local=local, leeway_s=gateway_settings.leeway_s
        )
        issuers = [*self.stores, *([local.issuer] if local is not None else [])]
        self.metrics = GatewayMetrics(
            routes=[route.path for route in ROUTES], families=MODEL_FAMILIES, issuers=issuers
        )
        for store in [*self.stores.values(), *([local] if local is not None else [])]:
            store.on_fetch = self.metrics.jwks_fetch
        self.authenticator.hit_counter = self.metrics.token_cache_hits
        self.authenticator.miss_counter = self.metrics.token_cache_misses
        self.authenticator.on_failure = self.metrics.auth_failure
        self.rate_limiter = RateLimiter(
            per_instance_rps=gateway_settings.rate_limit_per_instance_rps,
            per_instance_burst=gateway_settings.rate_limit_per_instance_burst,
            per_user_rpm=gateway_settings.rate_limit_per_user_rpm,
            per_user_burst=gateway_settings.rate_limit_per_user_burst,
            clock=clock,
            max_buckets=gateway_settings.rate_limit_max_buckets,
            limited=self.metrics.rate_limited_scopes,
        )
        # Where Bedrock and Vertex models without an endpoint are called (region, project).
        install_settings(provider_settings(gateway_settings))
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
        self.model_probe = ModelProbe()  # readiness only: is each routed model server up
        self._refresh_in_background = refresh_keys_in_background
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def started(self) -> bool:
        return self.session is not None

    def http(self) -> aiohttp.ClientSession:
        """The model-call session."""
        if self.session is None:
            raise RuntimeError("the gateway's HTTP session is not open (lifespan not started)")
        return self.session

    def issuer_http(self) -> aiohttp.ClientSession:
        """The session for the issuers' keys."""
        if self.issuer_session is None:
            raise RuntimeError("the gateway's HTTP session is not open (lifespan not started)")
        return self.issuer_session

    def model_tls(self) -> ssl.SSLContext | bool:
        """TLS for model calls: the configured CA bundle and client certificate, else the
        defaults (True: system CAs, no client certificate)."""
        gateway_settings = self.settings.gateway
        cert = gateway_settings.model_client_cert
        if gateway_settings.model_ca_bundle is None and cert is None:
            return True
        context = ssl.create_default_context(cafile=gateway_settings.model_ca_bundle)
        if cert is not None:
            context.load_cert_chain(cert, gateway_settings.model_client_key)
        return context

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            ssl=self.model_tls(),
            limit=MAX_CONNECTIONS,
            limit_per_host=0,
            ttl_dns_cache=60,
            keepalive_timeout=30,
            resolver=GuardedResolver(policy=self.egress_policy),
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": USER_AGENT},
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
            trust_env=False,  # model endpoints are inside the network; no surprise proxies
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
        log.info(
            "gateway_started",
            issuers=sorted(self.stores),
            key_sources=[store.source.location for store in self.stores.values()],
            direct_access=self.user_tokens is not None,
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
        for session in (self.session, self.issuer_session):
            if session is not None:
                await session.close()
        self.session = self.issuer_session = None
        self.models = _NotStarted()
        self.providers = ProviderRouter({})


async def _http_exception(request: Request, exc: Exception) -> Response:
    # Unknown routes and wrong methods answer in JSON like every other gateway error.
    assert isinstance(exc, HTTPException)
    return json_response({"detail": exc.detail}, exc.status_code, exc.headers)


ROUTES: Final = (
    Route("/v2/code/completions", completions, methods=["POST"]),
    Route("/v2/completions", completions, methods=["POST"]),  # GitLab's legacy alias
    Route("/v2/code/generations", generations, methods=["POST"]),
    Route("/v4/code/suggestions", suggestions, methods=["POST"]),
    Route("/v2/chat/agent", agent, methods=["POST"]),
    Route("/v1/code/user_access_token", user_access_token, methods=["POST"]),
    # OpenAI-compatible API; before /v1/chat/{chat_invokable}, which would take "completions".
    Route("/v1/chat/completions", openai_chat.chat_completions, methods=["POST"]),
    Route("/v1/completions", openai_completions.completions, methods=["POST"]),
    Route("/v1/models", openai_models.list_models, methods=["GET"]),
    Route("/v1/chat/{chat_invokable}", chat, methods=["POST"]),
    Route("/v1/prompts/{prompt_id:path}", invoke, methods=["POST"]),
    Route("/v1/models/definitions", definitions, methods=["GET"]),
    Route("/v1/models/{model}", openai_models.retrieve_model, methods=["GET"]),
    Route("/monitoring/healthz", monitoring.healthz, methods=["GET"]),
    Route("/monitoring/ready", monitoring.ready, methods=["GET"]),
    # No token (as in GitLab's gateway); the client address allow-list still applies.
    Route("/metrics", metrics_endpoint, methods=["GET"]),
)

# Route templates for the metrics' route label (never the raw path): exact paths, and the
# endpoints of templated routes (Starlette puts the matched endpoint in the scope).
ROUTE_TEMPLATES: Final = {route.path: route.path for route in ROUTES if "{" not in route.path}
ENDPOINT_TEMPLATES: Final = {route.endpoint: route.path for route in ROUTES if "{" in route.path}


def logged_paths(prompts: PromptRegistry) -> tuple[str, ...]:
    """Request paths named in the request log (others are logged as "<unmatched>")."""
    return (
        *(route.path for route in ROUTES if "{" not in route.path),
        *(
            f"/v1/chat/{pid.removeprefix('chat/')}"
            for pid in prompts.prompt_ids
            if pid.startswith("chat/")
        ),
        *(f"/v1/prompts/{prompt_id}" for prompt_id in prompts.prompt_ids),
    )


def create_app(
    settings: EnclaveSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
    refresh_keys_in_background: bool = True,
    prompt_definitions: Path = DEFINITIONS_DIR,
) -> Starlette:
    """The gateway application for ``settings``.

    ``clock`` (monotonic seconds) drives key-cache expiry and ``refresh_keys_in_background``
    the start-up prefetch and periodic refresh; both exist for tests and embedding.
    ``prompt_definitions`` is the prompt registry's directory: every definition is loaded and
    checked here, so a broken one stops start-up with an error naming its file.
    """
    prompts = load_registry(prompt_definitions)
    install_registry(prompts)
    gateway = Gateway(settings, clock=clock, refresh_keys_in_background=refresh_keys_in_background)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        # Everything allocated so far (modules, settings, keys, the HTTP session) lives as long
        # as the process: move it out of the collector's view. Full collections over it were
        # the gateway's p99 spikes under load (50-120 ms each, seen in bench/ profiles).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await gateway.stop()

    app = Starlette(
        routes=list(ROUTES),
        middleware=[
            Middleware(
                RequestContextMiddleware,
                routes=logged_paths(prompts),
                metrics=gateway.metrics,
                route_templates=ROUTE_TEMPLATES,
                endpoint_templates=ENDPOINT_TEMPLATES,
            ),
            Middleware(
                ClientAddressMiddleware,
                allowed=parse_networks(
                    settings.gateway.allowed_client_cidrs, "allowed_client_cidrs"
                ),
                trusted_proxies=parse_networks(settings.gateway.trusted_proxies, "trusted_proxies"),
            ),
        ],
        exception_handlers={HTTPException: _http_exception},
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app


def create_app_from_env() -> Starlette:
    """uvicorn factory for worker processes: settings from ``ENCLAVE_*`` / the config file."""
    settings = load_settings()
    configure_logging("gateway", settings.log_level, settings.log_format)
    return create_app(settings)


def run(settings: EnclaveSettings) -> None:
    """Serve the gateway on ``settings.gateway.host:port`` until interrupted."""
    from enclave.common.serve import header_limits, serve

    gateway_settings = settings.gateway
    limits = header_limits(gateway_settings)
    if gateway_settings.workers > 1:
        # Each worker builds its own app (and key cache) from the environment / config file.
        # Metrics and rate limits are per worker too: /metrics shows the worker that answers
        # unless PROMETHEUS_MULTIPROC_DIR is set (see enclave.gateway.metrics).
        serve(
            "enclave.gateway.app:create_app_from_env",
            gateway_settings.host,
            gateway_settings.port,
            limits=limits,
            workers=gateway_settings.workers,
            factory=True,
        )
    else:
        serve(create_app(settings), gateway_settings.host, gateway_settings.port, limits=limits)


__all__ = ["Gateway", "create_app", "create_app_from_env", "run"]
