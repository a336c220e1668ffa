"""What every endpoint that forwards to the AI gateway does first, in one place.

Resolve the feature's model and the AI settings with GitLab-shaped errors, and build the
identity headers that travel with the forwarded request. Both come from memory after the first
request (``caches.py``): an administrator's change takes effect at once in the process that
made it and within ``cache_poll_s`` on every other worker and replica.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from enclave.common import wire
from enclave.common.http1 import HttpClientError
from enclave.common.http1 import Response as UpstreamResponse
from enclave.common.logging import get_logger
from enclave.instance import ai_settings
from enclave.instance.api.errors import InstanceAPIError
from enclave.instance.api.relay import gateway_reason
from enclave.instance.caches import FeatureRoute
from enclave.instance.context import InstanceContext
from enclave.instance.features import (
    Feature,
    FeatureMisconfiguredError,
    FeatureUnavailableError,
    ResolvedModel,
    resolve_fallback,
    resolve_feature,
)
from enclave.instance.gateway_client import (
    ForwardIdentity,
    GatewayUnavailableError,
    pseudonymous_user_id,
)
from enclave.instance.pats import Principal

log = get_logger(__name__)


def _route(ctx: InstanceContext, feature: Feature) -> FeatureRoute:
    epoch = ctx.caches.routes.epoch()
    with ctx.sessions() as session, session.begin():
        settings = ai_settings.effective(session, ctx.settings)
        try:
            model = resolve_feature(
                session,
                ctx.secret_box,
                feature,
                vendored_gateway=settings.vendored_ai_gateway_url is not None,
            )
        except FeatureUnavailableError as exc:
            route = FeatureRoute(None, settings, unavailable=str(exc))
        else:
            route = FeatureRoute(model, settings)
    ctx.caches.routes.put(feature, route, epoch=epoch)
    return route


async def resolve_for_request(
    ctx: InstanceContext, feature: Feature
) -> tuple[ResolvedModel, ai_settings.EffectiveAiSettings]:
    """The feature's model and the AI settings; 403 when the feature is off, 500 when its
    model record is broken. From memory when cached; else the database, in the thread pool."""
    route = ctx.caches.routes.get(feature)
    if route is None:
        try:
            route = await run_in_threadpool(_route, ctx, feature)
        except FeatureMisconfiguredError as exc:
            log.error("feature_misconfigured", error=str(exc))
            raise InstanceAPIError(500, f"{exc}. Ask an administrator to fix the model.") from None
    if route.model is None:
        raise InstanceAPIError(403, route.unavailable or f"{feature.value} is not available")
    return route.model, route.settings


def forward_identity(
    ctx: InstanceContext, request: Request, principal: Principal
) -> ForwardIdentity:
    """The instance, host, pseudonymous user and request id the gateway is told about."""
    return ForwardIdentity(
        instance_id=str(ctx.instance_id),
        host_name=ctx.host_name,
        global_user_id=pseudonymous_user_id(ctx.user_id_salt, principal.user_id),
        request_id=str(request.state.request_id),
    )


# The prompt registry's "the model failed" status (chat and /api/v4/ai/<feature> read it so).
PROMPT_MODEL_FAILED: Final = 421
# Statuses the gateway answers a failed model call with, "Inference failed: ..." in ``detail``
# (``model_error_response``); the same statuses without it are the gateway's own (its rate
# limit, an unavailable key store), where another model would not help.
INFERENCE_FAILED_STATUSES: Final = frozenset({429, 502, 503})
INFERENCE_FAILED: Final = "Inference failed"

Send = Callable[[ResolvedModel], Awaitable[UpstreamResponse]]


async def model_failed(upstream: UpstreamResponse, model: ResolvedModel) -> bool:
    """Whether the gateway's answer says the model (not the gateway, not the request) failed.

    Reads the body of a candidate answer: the response keeps it, so the caller reads it
    again as if nobody had looked.
    """
    if upstream.status == PROMPT_MODEL_FAILED:
        return True
    if upstream.status not in INFERENCE_FAILED_STATUSES:
        return False
    try:
        content = await upstream.read()
    except (HttpClientError, ValueError):
        return False  # the body broke off: the caller's read reports it as usual
    return INFERENCE_FAILED in gateway_reason(content, model.api_key, limit=2000)


def gateway_token_counts(headers: Mapping[str, str]) -> dict[str, int]:
    """The model's token counts the gateway put on a whole answer (for usage); {} if none."""
    counts: dict[str, int] = {}
    for header, field in (
        (wire.H_ENCLAVE_INPUT_TOKENS, "input_tokens"),
        (wire.H_ENCLAVE_OUTPUT_TOKENS, "output_tokens"),
    ):
        value = headers.get(header, "")
        if value.isdigit() and len(value) <= 12:
            counts[field] = int(value)
    return counts


def _fallback(ctx: InstanceContext, feature: Feature) -> ResolvedModel | None:
    epoch = ctx.caches.fallbacks.epoch()
    with ctx.sessions() as session, session.begin():
        fallback = resolve_fallback(session, ctx.secret_box, feature)
    ctx.caches.fallbacks.put(feature, (fallback,), epoch=epoch)
    return fallback


async def fallback_for(ctx: InstanceContext, feature: Feature) -> ResolvedModel | None:
    """The feature's fallback model, from memory when cached."""
    cached = ctx.caches.fallbacks.get(feature)
    if cached is not None:
        return cached[0]
    return await run_in_threadpool(_fallback, ctx, feature)


async def post_with_fallback(
    ctx: InstanceContext, feature: Feature, model: ResolvedModel, send: Send
) -> tuple[UpstreamResponse, ResolvedModel]:
    """``send(model)``; when the gateway says the model failed (before any byte of the answer,
    since nothing is relayed yet) and the feature has a fallback model, ``send(fallback)``
    once and that answer. Returns the answer to relay and the model that gave it.

    ``send`` builds the request for the model it is given (body, fresh token) and raises
    :class:`GatewayUnavailableError` as the gateway client does; an unreachable gateway on the
    first call is not a model failure and propagates. Should the gateway be unreachable on the
    retry, the primary model's failure is what the caller relays.
    """
    upstream = await send(model)
    if upstream.status < 400 or not await model_failed(upstream, model):
        return upstream, model
    try:
        fallback = await fallback_for(ctx, feature)
    except Exception as exc:  # a broken fallback record must not hide the primary's answer
        log.error("model_fallback_unavailable", feature=feature.value, error=str(exc))
        return upstream, model
    if fallback is None or fallback.model_id == model.model_id:
        return upstream, model
    log.warning(
        "model_fallback_used",
        feature=feature.value,
        model=model.name,
        fallback_model=fallback.name,
        status=upstream.status,
    )
    try:
        second = await send(fallback)
    except GatewayUnavailableError as exc:
        log.warning("model_fallback_failed", feature=feature.value, error=exc.message)
        return upstream, model
    upstream.release()
    return second, fallback
