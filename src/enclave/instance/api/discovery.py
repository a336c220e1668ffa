"""OIDC discovery and the public keys, where GitLab serves them.

A gateway (Enclave's or GitLab's own) finds the keys through
``<issuer>/.well-known/openid-configuration`` → ``jwks_uri`` = ``<issuer>/oauth/discovery/keys``.
The document advertises only what this instance really implements: no OAuth authorization or
token endpoints yet, so none are listed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from enclave.instance.api.deps import context_of
from enclave.instance.api.routing import InstanceRoute
from enclave.instance.pats import KNOWN_SCOPES

router = APIRouter(route_class=InstanceRoute)

JWKS_PATH = "/oauth/discovery/keys"
# GitLab sends 24 h. Shorter here because rotation publishes a new key before it signs: the
# wait between "published" and "signing" must outlast every HTTP cache, and 5 minutes keeps
# that wait short while JWKS traffic stays negligible (gateways cache keys in process anyway).
JWKS_CACHE_CONTROL = "public, max-age=300"
DISCOVERY_CACHE_CONTROL = "public, max-age=3600"

# Claims in the tokens this issuer signs.
_CLAIMS = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "gitlab_instance_id",
    "gitlab_realm",
    "scopes",
]


@router.get("/.well-known/openid-configuration", include_in_schema=False)
def openid_configuration(request: Request) -> JSONResponse:
    ctx = context_of(request)
    document: dict[str, Any] = {
        "issuer": ctx.issuer,
        "jwks_uri": f"{ctx.issuer}{JWKS_PATH}",
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ctx.keys.algorithms(),
        "scopes_supported": sorted(KNOWN_SCOPES),
        "claim_types_supported": ["normal"],
        "claims_supported": _CLAIMS,
    }
    return JSONResponse(document, headers={"Cache-Control": DISCOVERY_CACHE_CONTROL})


@router.get(JWKS_PATH, include_in_schema=False)
def jwks(request: Request) -> JSONResponse:
    return JSONResponse(
        context_of(request).keys.jwks(), headers={"Cache-Control": JWKS_CACHE_CONTROL}
    )
