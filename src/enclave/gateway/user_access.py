"""What a token minted for a user may do: use the administrator's model, and learn no more.

Only administrators choose where the gateway connects and with which key (DESIGN.md §3). The
instance's own tokens carry the model in the body, as GitLab's instance sends it: that is the
administrator's configuration. A user's token (direct access, signed by this gateway) never
does: the model for the feature comes from the instance's feature→model routes
(:mod:`enclave.gateway.routes_table`), and a body that names another endpoint, key, identifier
or provider is refused (403) rather than silently ignored, so a client learns its fields are
not used. A user also never learns why a model call failed (that would map the network: which
hosts answer, which ports are open): every failure is one generic message with the request id,
and the precise cause goes to the gateway's log under that id.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from starlette.requests import Request
from starlette.responses import Response

from enclave.common.logging import get_logger
from enclave.gateway import usage
from enclave.gateway.http import detail
from enclave.gateway.routes_table import RoutesUnavailable
from enclave.gateway.targets import PROVIDER_LITELLM, ModelTarget, PlanError, served_model

if TYPE_CHECKING:
    from enclave.gateway.runtime import Gateway

log = get_logger(__name__)

ADMIN_CHOOSES_MODEL: Final = (
    "The model is chosen by the administrator: a user token cannot name a model endpoint, API "
    "key, identifier or provider; leave model_endpoint, model_api_key, model_identifier and "
    "model_provider out of the request"
)
NO_ROUTES_HERE: Final = (
    "Direct access is not available on this gateway: it serves user tokens only with the "
    "models its instance assigns, and it does not load them (a gateway shared by several "
    "instances, or no ENCLAVE_GATEWAY__GATEWAY_ROUTES_SECRET_FILE)"
)
ROUTES_NOT_LOADED: Final = (
    "The models assigned by the administrator are not available on the AI gateway right now; "
    "retry later"
)
USER_ONLY_COMPLETIONS: Final = (
    "Unauthorized: a user token (direct access) is only valid for code completions "
    "(/v2/code/completions, /v4/code/suggestions)"
)


def model_unavailable_message(request: Request) -> str:
    """The one answer a non-administrator gets for any model failure."""
    return (
        "The AI model is unavailable. If this persists, ask your administrator to check the "
        f"AI gateway's log for request id {request_id(request)}"
    )


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "unknown"))


def user_model_failure(
    request: Request, reason: str, status: int = 503, retry_after: str | None = None
) -> Response:
    """The generic failure for a user; the precise ``reason`` goes to the log only.

    A model's rate limit keeps its 429 and ``Retry-After`` (it says "retry later" and nothing
    about the network); everything else is 503.
    """
    log.warning("model_call_failed", reason=reason, status=status, caller="user")
    if status == 429:
        headers = {"Retry-After": retry_after} if retry_after else None
        return detail(model_unavailable_message(request), 429, headers)
    return detail(model_unavailable_message(request), 503)


def _blank(value: str | None) -> bool:
    return not (value or "").strip()


@dataclass(frozen=True, slots=True)
class NamedModel:
    """The model fields a request body carries (all optional)."""

    provider: str | None = None
    endpoint: str | None = None
    api_key: str | None = None
    identifier: str | None = None

    def _other_provider(self) -> bool:
        return (self.provider or PROVIDER_LITELLM).strip().lower() != PROVIDER_LITELLM

    @property
    def names_a_model(self) -> bool:
        """True when the body names any endpoint, key, identifier or a provider."""
        return self._other_provider() or not (
            _blank(self.endpoint) and _blank(self.api_key) and _blank(self.identifier)
        )

    def names_another_than(self, target: ModelTarget) -> bool:
        """True when the body names anything but ``target`` (naming nothing is fine)."""
        if self._other_provider():
            return True
        endpoint = (self.endpoint or "").strip().rstrip("/")
        if endpoint and endpoint != target.endpoint:
            return True
        key = (self.api_key or "").strip()
        if key and not hmac.compare_digest(key.encode(), (target.api_key or "").encode()):
            return True
        if not _blank(self.identifier):
            try:
                served = served_model(self.identifier, None, lambda name: [name])
            except PlanError:
                return True
            if served != (target.model, target.force_text_completion, target.provider):
                return True
        return False


def admin_model(
    gateway: Gateway, feature: str, named: NamedModel, user: str | None = None
) -> tuple[ModelTarget, str]:
    """The administrator's model for ``feature`` and its family; :class:`PlanError` (403/503).

    ``user`` (the token's pseudonymous subject): the request is counted as that user's usage.

    A body that names a model is refused whatever state the routes are in; it passes only
    when it names exactly the administrator's model (an IDE may echo what it was told).
    """
    table = gateway.routes_table
    if not table.enabled:
        if named.names_a_model:
            raise PlanError(ADMIN_CHOOSES_MODEL, 403)
        raise PlanError(NO_ROUTES_HERE, 503)
    try:
        routes = table.routes()
    except RoutesUnavailable as exc:
        if named.names_a_model:
            raise PlanError(ADMIN_CHOOSES_MODEL, 403) from None
        log.warning("user_model_routes_unavailable", reason=exc.message)
        raise PlanError(ROUTES_NOT_LOADED, 503) from None
    route = routes.get(feature)
    if route is None or not route.available or not route.endpoint or not route.upstream_model:
        if named.names_a_model:
            raise PlanError(ADMIN_CHOOSES_MODEL, 403)
        message = route.message if route is not None and route.message else None
        raise PlanError(message or f"No model is assigned to {feature} on this instance", 403)
    target = ModelTarget(
        route.endpoint,
        route.upstream_model,
        route.api_key,
        route.force_text_completion,
        route.provider,
    )
    if named.names_another_than(target):
        raise PlanError(ADMIN_CHOOSES_MODEL, 403)
    usage.claim(user, feature, route.model_name)
    return target, route.family or ""
