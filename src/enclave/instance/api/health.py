"""Liveness and readiness probes, in GitLab's shape.

``/-/liveness``: the process answers. ``/-/readiness``: it can serve requests — the database
answers and a signing key is loaded — as ``{"status": "ok", "master_check": [...], <check>:
[{"status": ...}]}``; 503 with ``"failed"`` and a message per failing check otherwise.
``/-/readiness?all=1`` (GitLab's switch for the full set) adds ``gateway_check``: the AI
gateway in effect answers ``/monitoring/healthz``. It is not part of the default probe on
purpose: a load balancer must not take every instance out because the gateway is down (the
instance still serves tokens, keys and the admin API), and ``enclave up`` starts the gateway
after the instance is ready. Neither says anything secret, so neither needs authentication.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from enclave.common.logging import get_logger
from enclave.instance import ai_settings
from enclave.instance.api.deps import context_of
from enclave.instance.api.routing import InstanceRoute
from enclave.instance.context import InstanceContext

log = get_logger(__name__)

router = APIRouter(route_class=InstanceRoute)

_NO_STORE = {"Cache-Control": "no-store"}


@router.get("/-/liveness", include_in_schema=False)
async def liveness() -> JSONResponse:
    return JSONResponse({"status": "ok"}, headers=_NO_STORE)


def _database_check(ctx: InstanceContext) -> dict[str, str]:
    try:
        with ctx.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("readiness_database_failed", error=type(exc).__name__)
        return {"status": "failed", "message": f"database unreachable ({type(exc).__name__})"}
    return {"status": "ok"}


def _signing_key_check(ctx: InstanceContext) -> dict[str, str]:
    try:
        key = ctx.keys.active
    except KeyError:  # pragma: no cover - the store refuses to exist without an active key
        return {"status": "failed", "message": "no active signing key"}
    if key.kid not in ctx.keys.kids:  # pragma: no cover - same
        return {"status": "failed", "message": "the active signing key is not published"}
    return {"status": "ok"}


GATEWAY_CHECK_TIMEOUT_S = 3.0


def _gateway_url(ctx: InstanceContext) -> str:
    with ctx.sessions() as session:
        return ai_settings.effective(session, ctx.settings).ai_gateway_url


async def _gateway_check(ctx: InstanceContext) -> dict[str, str]:
    try:
        url = await run_in_threadpool(_gateway_url, ctx)
    except SQLAlchemyError:
        url = ctx.gateway.base_url
    try:
        status = await ctx.gateway.get(f"{url}/monitoring/healthz", GATEWAY_CHECK_TIMEOUT_S)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return {
            "status": "failed",
            "message": f"AI gateway {url} unreachable ({type(exc).__name__})",
        }
    if status != 200:
        return {"status": "failed", "message": f"AI gateway {url} answered {status}"}
    return {"status": "ok"}


@router.get("/-/readiness", include_in_schema=False)
async def readiness(request: Request) -> JSONResponse:
    ctx = context_of(request)
    checks: dict[str, dict[str, str]] = {
        "db_check": await run_in_threadpool(_database_check, ctx),
        "signing_key_check": _signing_key_check(ctx),
    }
    if request.query_params.get("all") in ("1", "true", "yes"):
        checks["gateway_check"] = await _gateway_check(ctx)
    failed = [name for name, result in checks.items() if result["status"] != "ok"]
    master: dict[str, str] = {"status": "failed" if failed else "ok"}
    if failed:
        master["message"] = "failed checks: " + ", ".join(failed)
    body: dict[str, Any] = {
        "status": master["status"],
        "master_check": [master],
        **{name: [result] for name, result in checks.items()},
    }
    return JSONResponse(body, status_code=503 if failed else 200, headers=_NO_STORE)
