"""The gateway's ASGI application.

``create_app(settings)`` builds it; ``create_app_from_env()`` is the factory uvicorn imports in
each worker process (``uvicorn --factory enclave.gateway.app:create_app_from_env``). Hot
endpoints are plain Starlette routes with orjson bodies behind three pure ASGI middlewares
(request context, client address allow-list, exact-path dispatch of the hot POST endpoints
ahead of the router), and a hot POST from an address already allowed runs the request context
and the dispatch alone (gateway/dispatch.py, ``GatewayStarlette``); the outbound clients are
two pooled sessions opened in the lifespan: one for model calls, whose resolver enforces the
model egress allow-list, and one for the issuers' keys, which are fetched in the background
at start-up (never blocking it, even when an issuer is down) and cached in memory. The gateway's own
signing key (user tokens) is loaded, or generated, when the app is built.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from enclave.common.heap import settle_after_start_up
from enclave.common.logging import configure_logging, get_logger, write_request_lines_per_loop_turn
from enclave.common.netrules import parse_networks
from enclave.config import EnclaveSettings, load_settings
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
from enclave.gateway.dispatch import GatewayStarlette, HotRouteDispatch
from enclave.gateway.http import json_response
from enclave.gateway.metrics import metrics_endpoint
from enclave.gateway.middleware import ClientAddressMiddleware, RequestContextMiddleware
from enclave.gateway.openapi import document_routes
from enclave.gateway.prompts.registry import (
    DEFINITIONS_DIR,
    PromptRegistry,
    install_registry,
    load_registry,
)
from enclave.gateway.runtime import Gateway

log = get_logger(__name__)


async def _http_exception(request: Request, exc: Exception) -> Response:
    # Unknown routes and wrong methods answer in JSON like every other gateway error.
    assert isinstance(exc, HTTPException)
    return json_response({"detail": exc.detail}, exc.status_code, exc.headers)


API_ROUTES: Final = (
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

# /openapi.json and /docs (as GitLab's gateway image serves them), no token, no CDN.
ROUTES: Final = (*API_ROUTES, *document_routes(API_ROUTES))

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
    config_file: Path | None = None,
) -> Starlette:
    """The gateway application for ``settings``.

    ``clock`` (monotonic seconds) drives key-cache expiry and ``refresh_keys_in_background``
    the start-up prefetch and periodic refresh; both exist for tests and embedding.
    ``prompt_definitions`` is the prompt registry's directory: every definition is loaded and
    checked here, so a broken one stops start-up with an error naming its file.
    """
    prompts = load_registry(prompt_definitions)
    install_registry(prompts)
    gateway = Gateway(
        settings,
        route_paths=[route.path for route in ROUTES],
        clock=clock,
        refresh_keys_in_background=refresh_keys_in_background,
        config_file=config_file,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        # Everything allocated so far lives as long as the process (common/heap.py).
        settle_after_start_up()
        try:
            yield
        finally:
            await gateway.stop()

    app = GatewayStarlette(
        routes=list(ROUTES),
        middleware=[
            Middleware(
                RequestContextMiddleware,
                routes=logged_paths(prompts),
                metrics=gateway.metrics,
                route_templates=ROUTE_TEMPLATES,
                endpoint_templates=ENDPOINT_TEMPLATES,
                usage=gateway.usage,
            ),
            Middleware(
                ClientAddressMiddleware,
                allowed=parse_networks(
                    settings.gateway.allowed_client_cidrs, "allowed_client_cidrs"
                ),
                trusted_proxies=parse_networks(settings.gateway.trusted_proxies, "trusted_proxies"),
            ),
            # Last, after the address check: the hot POST endpoints without the router.
            Middleware(HotRouteDispatch, routes=ROUTES, on_http_exception=_http_exception),
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
    write_request_lines_per_loop_turn()  # a server's worker: one write per loop turn
    config = os.environ.get("ENCLAVE_CONFIG")
    # The config file is watched for trusted-issuer changes (gateway.config_reload_s).
    return create_app(settings, config_file=Path(config) if config else None)


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
