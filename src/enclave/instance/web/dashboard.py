"""``/admin``: the health of the instance, the AI gateway and each model, and their last errors."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from enclave.instance import registry
from enclave.instance.api import health
from enclave.instance.api.deps import context_of, in_transaction
from enclave.instance.web.connection_tests import last_results
from enclave.instance.web.render import page
from enclave.instance.web.routing import WebRoute
from enclave.instance.web.session_auth import signed_in_admin
from enclave.instance.web_sessions import SignedIn

router = APIRouter(route_class=WebRoute, include_in_schema=False)
Admin = Annotated[SignedIn, Depends(signed_in_admin)]


@router.get("/admin")
async def dashboard(request: Request, user: Admin) -> Response:
    ctx = context_of(request)
    database = await run_in_threadpool(health.database_check, ctx)
    gateway = await health.gateway_check(ctx)
    probes = {status["model"]: status for status in await health.model_check(ctx)}
    models: list[dict[str, Any]] = await run_in_threadpool(
        in_transaction,
        ctx,
        lambda s: [registry.model_view(m) for m in registry.list_models(s)[0]],
    )
    tests = last_results()
    rows = []
    for model in models:
        probe = probes.get(model["name"])
        test = tests.get(model["id"])
        rows.append(
            {
                "model": model,
                "probe": probe,
                "test": test,
                "error": (
                    test.result.message
                    if test is not None and not test.result.success
                    else (probe["detail"] if probe and probe["status"] != "ok" else None)
                ),
            }
        )
    return page(
        request,
        "dashboard.html",
        database=database,
        gateway=gateway,
        signing_kid=ctx.keys.active.kid,
        gateway_url=ctx.gateway.base_url,
        rows=rows,
    )
