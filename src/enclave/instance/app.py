"""The instance's ASGI application.

``create_app(settings)`` initialises the instance (migrations, keys, admin; idempotent) and
returns the FastAPI app; ``create_app_from_env()`` is the factory for uvicorn
(``uvicorn --factory enclave.instance.app:create_app_from_env``): settings from the environment
and config file, JSON logs with component ``instance``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from enclave import __version__
from enclave.common.api_docs import DOCS_CSP, render_docs_page
from enclave.common.client_address import ClientAddressMiddleware
from enclave.common.heap import settle_after_start_up
from enclave.common.logging import configure_logging, get_logger, write_request_lines_per_loop_turn
from enclave.common.netrules import parse_networks
from enclave.config import EnclaveSettings, load_settings
from enclave.instance import metrics, usage
from enclave.instance.api import all_routers
from enclave.instance.api.errors import install_error_handlers
from enclave.instance.api.hot_routes import LeanRouteDispatch
from enclave.instance.api.middleware import RequestContextMiddleware
from enclave.instance.api.routing import check_routes
from enclave.instance.bootstrap import BootstrapResult, initialise
from enclave.instance.context import InstanceContext
from enclave.instance.web import web_routers
from enclave.instance.web.errors import install_web_error_handlers

log = get_logger(__name__)

COMPONENT = "instance"


DOCS_PATH = "/docs"


async def docs_page(request: Request) -> Response:
    """The OpenAPI document as a page with no script and no external asset (air-gapped)."""
    app: FastAPI = request.app
    return HTMLResponse(
        render_docs_page(app.openapi()), headers={"Content-Security-Policy": DOCS_CSP}
    )


def create_app(settings: EnclaveSettings, *, boot: BootstrapResult | None = None) -> FastAPI:
    """The instance app for ``settings``; runs :func:`initialise` unless ``boot`` is given."""
    boot = boot if boot is not None else initialise(settings)
    ctx = InstanceContext.build(settings, boot)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The HTTP client needs a running loop, so it is made here and not at import.
        await ctx.gateway.start()
        flusher = asyncio.create_task(
            usage.run_flusher(
                ctx.usage, ctx.sessions, ctx.user_id_salt, settings.instance.usage_flush_s
            ),
            name="usage-flush",
        )
        await ctx.caches.start()
        # What start-up allocated (FastAPI's routes and models, SQLAlchemy's mappers, ...)
        # lives as long as the process (common/heap.py).
        settle_after_start_up()
        log.info(
            "instance_started",
            issuer=ctx.issuer,
            instance_id=str(ctx.instance_id),
            gateway_url=ctx.gateway.base_url,
        )
        try:
            yield
        finally:
            await ctx.caches.stop()
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher  # its last flush writes what was still in memory
            await ctx.gateway.close()
            if ctx.limits.store is not None:
                await ctx.limits.store.close()
            ctx.engine.dispose()

    app = FastAPI(
        title="Enclave instance",
        version=__version__,
        # FastAPI's Swagger UI and ReDoc load their scripts from a CDN, which an air-gapped
        # browser cannot reach: /docs is our self-contained page instead (docs_page below).
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry hooks: Enclave exports nothing (no outbound connection
        # but the configured ones), and checking for providers on every request cost about as
        # much as our whole request context middleware.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    install_web_error_handlers(app)
    for router in [*all_routers(), *web_routers()]:
        app.include_router(router)
    # Prometheus text, no token (as the gateway's); the client address rules still apply.
    app.add_route(metrics.PATH, metrics.metrics_endpoint, methods=["GET"], include_in_schema=False)
    app.add_route(DOCS_PATH, docs_page, methods=["GET"], include_in_schema=False)
    # Every route authenticates before it reads a body, and reads it under a limit.
    check_routes(app.routes)
    # Innermost: lean routes (the AI hot path) without FastAPI's router (api/hot_routes.py).
    app.add_middleware(LeanRouteDispatch, owner=app)
    # Added before the request context, so it runs inside it: refusals are logged with a
    # request id.
    app.add_middleware(
        ClientAddressMiddleware,
        allowed=parse_networks(settings.instance.allowed_client_cidrs, "allowed_client_cidrs"),
        trusted_proxies=parse_networks(settings.instance.trusted_proxies, "trusted_proxies"),
        setting="ENCLAVE_INSTANCE__ALLOWED_CLIENT_CIDRS",
        proxy_setting="ENCLAVE_INSTANCE__TRUSTED_PROXIES",
        service="instance",
        error_key="message",
    )
    app.add_middleware(RequestContextMiddleware)
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn factory: settings from ``ENCLAVE_*`` / the config file, JSON logging."""
    settings = load_settings()
    configure_logging(COMPONENT, settings.log_level, settings.log_format)
    write_request_lines_per_loop_turn()  # a server's worker: one write per loop turn
    return create_app(settings)
