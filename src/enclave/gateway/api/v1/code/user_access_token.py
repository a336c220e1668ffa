"""``POST /v1/code/user_access_token``: a short-lived user token for direct access.

The instance calls this with its own token (scope ``complete_code`` or ``code_suggestions``) and
the user's ``X-Gitlab-Global-User-Id``; the answer ``{"token", "expires_at"}`` carries a token
signed by the gateway's own key that the IDE can then send straight to the completion endpoint
(and nowhere else: it grants ``complete_code`` only). As in GitLab's gateway, a token the
gateway issued itself cannot mint another (403), and a missing user id is 400.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from starlette.requests import Request
from starlette.responses import Response

from enclave.common import wire
from enclave.common.logging import get_logger
from enclave.gateway.auth.verify import AuthError
from enclave.gateway.http import detail, json_response

if TYPE_CHECKING:
    from enclave.gateway.runtime import Gateway

log = get_logger(__name__)

SCOPES: Final = (wire.UP_COMPLETE_CODE, wire.UP_CODE_SUGGESTIONS)
UNAUTHORIZED: Final = "Unauthorized to create user access token"
MISSING_USER: Final = (
    "Missing X-Gitlab-Global-User-Id header: send the global id of the user the token is for"
)
MAX_USER_ID_CHARS: Final = 255


async def user_access_token(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    try:
        principal = await gateway.authenticator.authenticate(request.headers)
    except AuthError as exc:
        return json_response(exc.body, exc.status)
    if principal.user_token or wire.CLAIM_SURFACE in principal.claims:
        return detail(f"{UNAUTHORIZED}: a user token cannot create another token", 403)
    if not principal.can(*SCOPES):
        return detail(
            f"{UNAUTHORIZED}: the instance token grants neither complete_code nor code_suggestions",
            403,
        )
    user_id = (request.headers.get(wire.H_GLOBAL_USER_ID) or "").strip()
    if not user_id:
        return detail(MISSING_USER, 400)
    if len(user_id) > MAX_USER_ID_CHARS:
        return detail(f"X-Gitlab-Global-User-Id is longer than {MAX_USER_ID_CHARS} characters", 400)
    issuer = gateway.user_tokens
    if issuer is None:
        return detail(
            "Direct access is unavailable: the gateway has no signing key "
            f"({gateway.signing_key_problem}); the gateway log says more",
            503,
        )
    # Both were checked against the request headers by authenticate().
    assert principal.realm is not None and principal.instance_id is not None
    minted = issuer.mint(user_id=user_id, realm=principal.realm, instance_id=principal.instance_id)
    log.info("user_token_issued", issuer=principal.issuer, expires_at=minted.expires_at)
    return json_response({"token": minted.token, "expires_at": minted.expires_at})
