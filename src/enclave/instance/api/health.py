"""Liveness and readiness probes, in GitLab's shape.

``/-/liveness``: the process answers. ``/-/readiness``: it can serve requests — the database
answers and a signing key is loaded — as ``{"status": "ok", "master_check": [...], <check>:
[{"status": ...}]}``; 503 with ``"failed"`` and a message per failing check otherwise.
``/-/readiness?all=1`` (GitLab's switch for the full set) adds ``gateway_check``: the AI
gateway in effect answers ``/monitoring/healthz``. It is not part of the default probe on
purpose: a load balancer must not take every instance out because the gateway is down (the
instance still serves tokens, keys and the admin API), and ``enclave up`` starts the gateway
after the instance is ready. Neither says anything secret, so neither needs authentication.

``model_check`` lists the model servers the features use (by model name) as ``ok`` or
``down``: probed cheaply and cached (:mod:`enclave.common.model_probe`), never on a request's
path. A model that is down makes the answer ``"status": "degraded"`` but not 503, for the same
reason as the gateway: the instance still serves everything else and answers "model
unavailable" errors meanwhile.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from enclave.common.http1 import HttpClientError
from enclave.common.logging import get_logger
from enclave.common.model_probe import ModelProbe
from enclave.instance import ai_settings
from enclave.instance.api.deps import context_of
from enclave.instance.api.routing import InstanceRoute
from enclave.instance.context import InstanceContext
from enclave.instance.db.models import FeatureProvider, FeatureSetting, SelfHostedModel

log = get_logger(__name__)

router = APIRouter(route_class=InstanceRoute)

_NO_STORE = {"Cache-Control": "no-store"}


@router.get("/-/liveness", include_in_schema=False)
async def liveness() -> JSONResponse:
    return JSONResponse({"status": "ok"}, headers=_NO_STORE)


def database_check(ctx: InstanceContext) -> dict[str, str]:
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


async def gateway_check(ctx: InstanceContext) -> dict[str, str]:
    try:
        url = await run_in_threadpool(_gateway_url, ctx)
    except SQLAlchemyError:
        url = ctx.gateway.base_url
    try:
        status = await ctx.gateway.get(f"{url}/monitoring/healthz", GATEWAY_CHECK_TIMEOUT_S)
    except (HttpClientError, TimeoutError) as exc:
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
        "db_check": await run_in_threadpool(database_check, ctx),
        "signing_key_check": _signing_key_check(ctx),
    }
    if request.query_params.get("all") in ("1", "true", "yes"):
        checks["gateway_check"] = await gateway_check(ctx)
    failed = [name for name, result in checks.items() if result["status"] != "ok"]
    master: dict[str, str] = {"status": "failed" if failed else "ok"}
    if failed:
        master["message"] = "failed checks: " + ", ".join(failed)
    models = await model_check(ctx)
    down = any(model["status"] != "ok" for model in models)
    body: dict[str, Any] = {
        "status": "failed" if failed else "degraded" if down else "ok",
        "master_check": [master],
        **{name: [result] for name, result in checks.items()},
    }
    if models:
        body["model_check"] = models
    return JSONResponse(body, status_code=503 if failed else 200, headers=_NO_STORE)


_model_probe = ModelProbe()


def _models_in_use(ctx: InstanceContext) -> set[tuple[str, str]]:
    with ctx.sessions() as session:
        rows = session.execute(
            select(SelfHostedModel.name, SelfHostedModel.endpoint)
            .join(FeatureSetting, FeatureSetting.self_hosted_model_id == SelfHostedModel.id)
            .where(FeatureSetting.provider == FeatureProvider.SELF_HOSTED.value)
            .where(SelfHostedModel.endpoint.is_not(None))
            .distinct()
        ).all()
    return {(name, endpoint) for name, endpoint in rows if endpoint}


async def model_check(ctx: InstanceContext) -> list[dict[str, str]]:
    """``ok``/``down`` per model server that a feature uses (cached; see the module doc)."""
    try:
        targets = await run_in_threadpool(_models_in_use, ctx)
    except SQLAlchemyError:
        return []  # the database check reports the database
    if not targets:
        return []
    # The gateway client's pooled session: the instance opens no other connections.
    return [status.view() for status in await _model_probe.check(ctx.gateway.get, targets)]
