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
    """200 when the keys of every trusted issuer are loaded (or can be fetched now), else 503."""
    gateway: Gateway = request.app.state.gateway
    if not gateway.started:
        return json_response({"status": "unavailable", "detail": "the gateway is starting"}, 503)
    for store in gateway.authenticator.stores.values():
        try:
            await store.ensure_usable()
        except IssuerUnavailable as exc:
            return json_response({"status": "unavailable", "detail": str(exc)}, 503)
    return json_response({"status": "ok"})
