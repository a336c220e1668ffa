"""What every endpoint that forwards to the AI gateway does first, in one place.

Resolve the feature's model and the AI settings (read fresh per request, so an administrator's
change takes effect on the next request on every replica) with GitLab-shaped errors, and build
the identity headers that travel with the forwarded request.
"""

from __future__ import annotations

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from enclave.common.logging import get_logger
from enclave.instance import ai_settings
from enclave.instance.api.errors import InstanceAPIError
from enclave.instance.context import InstanceContext
from enclave.instance.features import (
    Feature,
    FeatureMisconfiguredError,
    FeatureUnavailableError,
    ResolvedModel,
    resolve_feature,
)
from enclave.instance.gateway_client import ForwardIdentity, pseudonymous_user_id
from enclave.instance.pats import Principal

log = get_logger(__name__)


def _resolve(
    ctx: InstanceContext, feature: Feature
) -> tuple[ResolvedModel, ai_settings.EffectiveAiSettings]:
    with ctx.sessions() as session, session.begin():
        model = resolve_feature(session, ctx.secret_box, feature)
        return model, ai_settings.effective(session, ctx.settings)


async def resolve_for_request(
    ctx: InstanceContext, feature: Feature
) -> tuple[ResolvedModel, ai_settings.EffectiveAiSettings]:
    """The feature's model and the AI settings; 403 when the feature is off, 500 when its
    model record is broken. The database work runs in the threadpool."""
    try:
        return await run_in_threadpool(_resolve, ctx, feature)
    except FeatureUnavailableError as exc:
        raise InstanceAPIError(403, str(exc)) from None
    except FeatureMisconfiguredError as exc:
        log.error("feature_misconfigured", error=str(exc))
        raise InstanceAPIError(500, f"{exc}. Ask an administrator to fix the model.") from None


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
