"""``/monitoring/healthz`` (the process answers) and ``/monitoring/ready`` (it can verify tokens).

Neither needs a token, as in GitLab's gateway. ``/monitoring/ready`` also lists the model
servers of the instance's feature routes (when the gateway has them) with ``"ok"`` or
``"down"``, probed in the background of the probe itself and cached (see
:mod:`enclave.common.model_probe`), never on a request's path. A model that is down makes the
answer ``degraded`` but keeps it 200: the gateway still serves other models and answers
"model unavailable" errors, which a load balancer that took it out would turn into connection
errors. ``/monitoring/healthz`` (liveness) never depends on a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from enclave.common.model_probe import ModelStatus, client_getter
from enclave.gateway.auth.jwks import IssuerUnavailable
from enclave.gateway.http import json_response
from enclave.gateway.models.providers import OPENAI
from enclave.gateway.routes_table import RoutesUnavailable

if TYPE_CHECKING:
    from enclave.gateway.runtime import Gateway


async def healthz(request: Request) -> Response:
    return json_response({})


async def ready(request: Request) -> Response:
    """200 when the keys of the trusted issuers are loaded (or can be fetched now), else 503.

    With several trusted instances (shared gateway), one instance being down must not take the
    gateway out of its load balancer for all the others: then the answer is 200 ``degraded``
    with the instances it cannot verify, and 503 only when it can verify none.
    """
    gateway: Gateway = request.app.state.gateway
    if not gateway.started:
        return json_response({"status": "unavailable", "detail": "the gateway is starting"}, 503)
    problems: list[str] = []
    stores = list(gateway.authenticator.stores.values())
    for store in stores:
        try:
            await store.ensure_usable()
        except IssuerUnavailable as exc:
            problems.append(str(exc))
    models = await _model_status(gateway)
    extra: dict[str, Any] = {"models": [m.view() for m in models]} if models else {}
    if problems and len(problems) == len(stores):
        return json_response({"status": "unavailable", "detail": " ".join(problems), **extra}, 503)
    if not problems and all(m.up for m in models):
        return json_response({"status": "ok", **extra})
    if problems:
        extra["unavailable"] = problems
    return json_response({"status": "degraded", **extra})


async def _model_status(gateway: Gateway) -> list[ModelStatus]:
    """The model servers of the routes already in memory (none when there are none)."""
    try:
        routes = gateway.routes_table.routes()
    except RoutesUnavailable:
        return []
    targets = {
        (route.model_name or route.endpoint, route.endpoint)
        for route in routes.values()
        # The probe is an OpenAI API base's model list; cloud providers have none to probe.
        if route.available
        and route.provider == OPENAI
        and route.endpoint
        and (route.model_name or route.endpoint)
    }
    if not targets:
        return []
    return await gateway.model_probe.check(client_getter(gateway.http()), targets)
