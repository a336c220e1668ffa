"""``POST /api/v4/code_suggestions/completions``: GitLab's Code Suggestions endpoint.

Flow (DESIGN.md §4): authenticate the PAT (``api`` or ``ai_features``) → validate the body →
completion or generation → the feature's self-hosted model (decrypted key) → a token for the
feature's unit primitive (cached) → forward to the gateway with GitLab's body and headers →
relay the answer, streamed when asked. The token and the model come from memory once known
(``caches.py``), so such a request never leaves the event loop; a first one reads the database
in the thread pool. The event loop parses, signs (rarely, tokens are reused) and relays.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.responses import Response

from enclave.common.http1 import Response as UpstreamResponse
from enclave.common.logging import get_logger
from enclave.instance import gateway_api, limits
from enclave.instance.api.deps import authenticated, context_of
from enclave.instance.api.errors import InstanceAPIError
from enclave.instance.api.forwarding import (
    forward_identity,
    gateway_token_counts,
    post_with_fallback,
    resolve_for_request,
)
from enclave.instance.api.middleware import annotate
from enclave.instance.api.relay import gateway_error, relay_to_caller
from enclave.instance.api.routing import InstanceRoute
from enclave.instance.code_suggestions import (
    CompletionRequest,
    describe_validation_error,
    detect_intent,
    feature_for,
    gateway_body,
    gateway_path,
)
from enclave.instance.features import FEATURE_UNIT_PRIMITIVES, ResolvedModel
from enclave.instance.gateway_client import (
    GatewayUnavailableError,
    gateway_headers,
)
from enclave.instance.pats import AI_SCOPES, Principal

log = get_logger(__name__)


class CodeSuggestionsRoute(InstanceRoute):
    """GitLab refuses code suggestion bodies over 600 kB with 413 (two 100 k-char sides plus
    context fit easily); the route reads the body under it, after authentication."""

    fixed_limit = 600 * 1024


router = APIRouter(route_class=CodeSuggestionsRoute)


async def read_json_body(
    request: Request, *, empty_hint: str = "send a JSON object with current_file"
) -> dict[str, Any]:
    """The JSON object in the body (read by the route class, under its limit); else 400
    (``empty_hint`` says what to send instead of nothing)."""
    body = await request.body()
    if not body:
        raise InstanceAPIError(400, f"the body is empty; {empty_hint}")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InstanceAPIError(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InstanceAPIError(400, "the body must be a JSON object")
    return data


@router.post("/api/v4/code_suggestions/completions")
async def completions(
    request: Request, principal: Annotated[Principal, Depends(authenticated(AI_SCOPES))]
) -> Response:
    ctx = context_of(request)
    await ctx.limits.check(limits.CODE_SUGGESTIONS, principal.user_id)
    try:
        suggestion = CompletionRequest.model_validate(await read_json_body(request))
    except ValidationError as exc:
        raise InstanceAPIError(400, describe_validation_error(exc)) from None
    intent = detect_intent(suggestion)
    feature = feature_for(intent)
    annotate(request, feature=feature.value, stream=suggestion.stream)
    model, effective = await resolve_for_request(ctx, feature)
    identity = forward_identity(ctx, request, principal)

    async def send(serving: ResolvedModel) -> UpstreamResponse:
        route = effective.route(serving.vendored)
        minted = ctx.minter.token(
            gateway_api.code_suggestion_scopes(ctx, [FEATURE_UNIT_PRIMITIVES[feature]]),
            audience=route.audience,
        )
        # The kid in the request log shows which key signed (key rotation).
        annotate(request, model=serving.name, signing_kid=minted.kid)
        return await ctx.gateway.post(
            gateway_path(intent),
            orjson.dumps(gateway_body(suggestion, intent, serving)),
            gateway_headers(
                minted.token,
                identity,
                verbose_ai_logs=effective.enabled_instance_verbose_ai_logs,
                version=gateway_api.version_header(ctx),
                unit_primitive=gateway_api.unit_primitive_header(
                    ctx, FEATURE_UNIT_PRIMITIVES[feature]
                ),
            ),
            base_url=route.url,
            timeout_s=effective.ai_gateway_timeout_seconds,
        )

    try:
        upstream, model = await post_with_fallback(ctx, feature, model, send)
    except GatewayUnavailableError as exc:
        raise gateway_error(exc, request, principal) from None
    annotate(request, **gateway_token_counts(upstream.headers))
    return await relay_to_caller(
        upstream,
        stream=suggestion.stream,
        request=request,
        principal=principal,
        secret=model.api_key,
    )
