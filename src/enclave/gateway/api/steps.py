"""Request steps every endpoint of GitLab's API shares: authenticate, read the body, answer a
failed model call. (The OpenAI-compatible API has its own, OpenAI-shaped, in ``api/openai``.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from enclave.common import timeouts
from enclave.common.body import read_body
from enclave.common.logging import get_logger
from enclave.common.wire import CLAIM_SURFACE, H_GLOBAL_USER_ID
from enclave.gateway.api.schemas import validation_detail
from enclave.gateway.auth.verify import AuthError, Principal
from enclave.gateway.http import MAX_BODY_BYTES, BodyTooLarge, detail, json_response
from enclave.gateway.models.base import REQUEST_MODEL_TIMEOUT, EndpointNotAllowed, ModelError
from enclave.gateway.rate_limit import RateLimited
from enclave.gateway.request_headers import first_values
from enclave.gateway.user_access import USER_ONLY_COMPLETIONS, user_model_failure

if TYPE_CHECKING:
    from enclave.gateway.runtime import Gateway

log = get_logger(__name__)

BodyT = TypeVar("BodyT", bound=BaseModel)
DecodedT = TypeVar("DecodedT")


def model_error_response(error: ModelError) -> Response:
    log.warning("model_call_failed", status=error.status, reason=error.reason)
    headers = {"Retry-After": error.retry_after} if error.retry_after else None
    return detail(f"Inference failed: {error.reason}", error.status, headers)


def model_failure(
    request: Request, principal: Principal, error: ModelError | EndpointNotAllowed
) -> Response:
    """The answer to a failed model call: precise for the instance, generic for a user."""
    if isinstance(error, EndpointNotAllowed):
        if principal.user_token:
            return user_model_failure(request, error.reason)
        log.warning("model_endpoint_refused", reason=error.reason)
        return detail(error.reason, 403)
    if principal.user_token:
        return user_model_failure(request, error.reason, error.status, error.retry_after)
    return model_error_response(error)


# Look-up names of the request's header dict are lowercase (gateway/request_headers.py).
_MODEL_TIMEOUT: Final = timeouts.HEADER.lower()

OPENAI_ONLY_MESSAGE: Final = (
    "This token is only valid for the OpenAI-compatible API (/v1/models, /v1/chat/completions, "
    "/v1/completions)"
)


async def authenticate(request: Request, *, user_tokens: bool = False) -> Principal | Response:
    """The verified caller within its rate limits, or the 401/503/429/403 response to send.

    ``user_tokens``: whether the endpoint serves users' direct-access tokens (code completions
    only); elsewhere the body names the model, which only the instance's tokens may do.
    """
    gateway: Gateway = request.app.state.gateway
    headers = first_values(request.scope["headers"])
    try:
        principal = await gateway.authenticator.authenticate(headers)
    except AuthError as exc:
        return json_response(exc.body, exc.status)
    if CLAIM_SURFACE in principal.claims:
        # A user's token for the OpenAI-compatible API: it must not reach endpoints that take
        # the model's endpoint and key from the request body.
        return json_response({"error": OPENAI_ONLY_MESSAGE}, 401)
    if principal.user_token and not user_tokens:
        return detail(USER_ONLY_COMPLETIONS, 403)
    if not principal.user_token:
        # The instance's timeout for this request reaches the model call (common/timeouts.py);
        # a user's token does not choose how long the gateway waits.
        budget = timeouts.parse_budget(headers.get(_MODEL_TIMEOUT))
        if budget is not None:
            REQUEST_MODEL_TIMEOUT.set(budget)
    limiter = gateway.rate_limiter_for(principal.issuer)
    if limiter.enabled:
        try:
            await limiter.check(
                principal.issuer, principal.instance_id, headers.get(H_GLOBAL_USER_ID)
            )
        except RateLimited as exc:
            if exc.scope == "instance":
                gateway.metrics.tenant_limited(principal.issuer)
            return detail(exc.detail, exc.status, {"Retry-After": str(exc.retry_after_s)})
    return principal


async def authorize(
    request: Request, scopes: tuple[str, ...], unauthorized: str
) -> Response | None:
    """Authenticate the caller (401/503) and check it holds any of ``scopes`` (403).

    None when the request may go on, else the error response to send.
    """
    principal = await authenticate(request)
    if isinstance(principal, Response):
        return principal
    if not principal.can(*scopes):
        return detail(unauthorized, 403)
    return None


async def parse_body(request: Request, schema: type[BodyT]) -> BodyT | Response:
    """The request body validated as ``schema``, or the 413/422 response to send."""
    return await decode_body(request, schema.model_validate_json)


async def decode_body(request: Request, decode: Callable[[bytes], DecodedT]) -> DecodedT | Response:
    """The request body through ``decode``, or the 413/422 response to send: 422 for the
    :class:`pydantic.ValidationError` ``decode`` raises."""
    try:
        body = await read_body(request, MAX_BODY_BYTES)
    except BodyTooLarge:
        return detail(f"Request body larger than {MAX_BODY_BYTES} bytes", 413)
    try:
        return decode(body)
    except ValidationError as exc:
        return json_response({"detail": validation_detail(exc)}, 422)


def gitlab_major(version: str | None) -> int | None:
    """The major version in ``X-Gitlab-Version`` ("18.11.0-ee" → 18), if it has one: where
    GitLab 17 and 18 instances expect different answers, the header says which one asks."""
    head = (version or "").strip().split(".", 1)[0]
    return int(head) if head.isdigit() else None
