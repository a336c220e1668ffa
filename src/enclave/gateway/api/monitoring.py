"""``/monitoring/healthz`` (the process answers) and ``/monitoring/ready`` (it can verify tokens).

Neither needs a token, as in GitLab's gateway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from enclave.gateway.auth.jwks import IssuerUnavailable
from enclave.gateway.http import json_response

if TYPE_CHECKING:
    from enclave.gateway.app import Gateway


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
    if not problems:
        return json_response({"status": "ok"})
    if len(problems) == len(stores):
        return json_response({"status": "unavailable", "detail": " ".join(problems)}, 503)
    return json_response({"status": "degraded", "unavailable": problems})
