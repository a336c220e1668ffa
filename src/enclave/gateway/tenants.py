"""Shared-gateway mode: one gateway, many instances (tenants), vendor models held here.

Each trusted instance (``gateway.trusted_issuers``) is a :class:`Tenant` with its own allowed
features, its own rate limit (the same :class:`RateLimiter` API, one per tenant that sets
its own numbers) and whether it may name its own model. ``gateway.vendor_models`` names, per
feature, the model used for requests that carry none (an instance's *vendored* features, as
GitLab's instance sends them to GitLab's AI gateway); its credentials come from a file or an
environment variable of the gateway, never from a request, and are never logged.

:func:`choose_target` is the one decision every GitLab endpoint makes after authentication:
the feature allowed for this tenant (403), the request's own model (only when allowed, 403
otherwise) or the gateway's vendor model for the feature. It also counts the request in the
tenant's usage metrics and marks the model call so that its tokens are counted there too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from enclave.common.features import FEATURE_PROMPT_IDS, Feature, main_feature
from enclave.common.logging import get_logger
from enclave.config import GatewaySettings, TrustedIssuer, VendorModel
from enclave.gateway.rate_limit import RateLimiter
from enclave.gateway.targets import PROVIDER_LITELLM, ModelTarget, PlanError, resolve_target
from enclave.gateway.tenant_usage import USAGE_KEY

if TYPE_CHECKING:
    from enclave.gateway.auth.verify import Principal
    from enclave.gateway.metrics import GatewayMetrics
    from enclave.gateway.models.base import ModelRequest

log = get_logger(__name__)


# The prompt registry id → feature (the /v1/prompts endpoint names prompts, not features).
PROMPT_FEATURES: Final = {prompt_id: name for name, prompt_id in FEATURE_PROMPT_IDS.items()}
PROMPT_FEATURES["chat/agent"] = Feature.DUO_CHAT.value


class VendorSetupError(Exception):
    """A vendor model in the configuration cannot be used (bad endpoint, unreadable key)."""


@dataclass(frozen=True, slots=True)
class VendorTarget:
    """A feature's vendor model, ready to call: target, prompt family, parameter overrides."""

    feature: str
    target: ModelTarget
    family: str
    max_tokens: int | None
    temperature: float | None

    def apply(self, request: ModelRequest) -> ModelRequest:
        """``request`` with the operator's parameters over the prompt's."""
        changes: dict[str, object] = {"family": self.family}
        if self.max_tokens is not None:
            changes["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            changes["temperature"] = self.temperature
        return dataclasses.replace(request, **changes)  # type: ignore[arg-type]


def vendor_target(feature: str, vendor: VendorModel) -> VendorTarget:
    """Build one vendor target; the key is read here, at start (never per request)."""
    try:
        api_key = vendor.api_key()
    except OSError as exc:
        raise VendorSetupError(
            f"vendor_models[{feature}]: cannot read api_key_file ({exc.strerror})"
        ) from None
    try:
        target = resolve_target(
            PROVIDER_LITELLM,
            vendor.family,
            vendor.endpoint,
            api_key,
            f"{vendor.provider}/{vendor.model}",
        )
    except PlanError as exc:
        raise VendorSetupError(f"vendor_models[{feature}]: {exc.message}") from None
    return VendorTarget(feature, target, vendor.family, vendor.max_tokens, vendor.temperature)


@dataclass(frozen=True, slots=True)
class Tenant:
    """One trusted instance's controls on this gateway."""

    issuer: str
    allowed_features: frozenset[str] | None  # None: every feature
    allow_self_hosted_models: bool
    limiter: RateLimiter

    def allows(self, feature: str) -> bool:
        return self.allowed_features is None or feature in self.allowed_features


class Tenants:
    """The tenants by issuer and the vendor targets by feature; rebuilt on reload."""

    def __init__(
        self,
        settings: GatewaySettings,
        default_limiter: RateLimiter,
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shared_mode = settings.shared_mode
        self._default_limiter = default_limiter
        self.metrics = metrics
        self._clock = clock
        self.vendors: dict[str, VendorTarget] = {
            feature: vendor_target(feature, vendor)
            for feature, vendor in settings.vendor_models.items()
        }
        self.by_issuer: dict[str, Tenant] = {}
        self.update(settings)

    def update(self, settings: GatewaySettings) -> None:
        """Take the trusted instances' controls from ``settings`` (start and reload)."""
        tenants: dict[str, Tenant] = {}
        for issuer in settings.trusted_issuer_list():
            key = issuer.url.rstrip("/")
            tenants[key] = self._tenant(key, issuer, settings)
            self.metrics.tenant_limit(key, tenants[key].limiter.per_instance_rps)
        self.by_issuer = tenants

    def _tenant(self, key: str, issuer: TrustedIssuer, settings: GatewaySettings) -> Tenant:
        limiter = self._default_limiter
        if issuer.rate_limit_rps is not None or issuer.rate_limit_burst is not None:
            # Its own buckets, same API: one tenant cannot use another's allowance.
            limiter = RateLimiter(
                per_instance_rps=(
                    settings.rate_limit_per_instance_rps
                    if issuer.rate_limit_rps is None
                    else issuer.rate_limit_rps
                ),
                per_instance_burst=issuer.rate_limit_burst
                or settings.rate_limit_per_instance_burst,
                per_user_rpm=settings.rate_limit_per_user_rpm,
                per_user_burst=settings.rate_limit_per_user_burst,
                clock=self._clock,
                max_buckets=settings.rate_limit_max_buckets,
                limited=self.metrics.rate_limited_scopes,
                store=self._default_limiter.store,  # Redis when configured: shared by replicas
            )
        own_models = issuer.allow_self_hosted_models
        return Tenant(
            issuer=key,
            allowed_features=(
                frozenset(issuer.allowed_features) if issuer.allowed_features is not None else None
            ),
            allow_self_hosted_models=not self.shared_mode if own_models is None else own_models,
            limiter=limiter,
        )

    def own_limiter(self, issuer: str) -> RateLimiter | None:
        """The instance's own limiter when its entry sets limits; None: the gateway's default."""
        tenant = self.by_issuer.get(issuer)
        if tenant is None or tenant.limiter is self._default_limiter:
            return None
        return tenant.limiter

    def vendor_for(self, feature: str) -> VendorTarget | None:
        """The feature's vendor model; a chat sub-feature without one uses duo_chat's."""
        found = self.vendors.get(feature)
        if found is None:
            try:
                parent = main_feature(Feature(feature))
            except ValueError:
                return None
            if parent is not None:
                found = self.vendors.get(parent.value)
        return found


def choose_target(
    tenants: Tenants,
    principal: Principal,
    feature: str | None,
    names_model: bool,
    requested: Callable[[], ModelTarget],
) -> tuple[ModelTarget, VendorTarget | None]:
    """The model for this request: the request's own (``requested()``) or the vendor's.

    Raises :class:`PlanError` with 403 when the tenant may not use ``feature`` or may not name
    its own model, and when a request without a model asks for a feature this gateway has no
    vendor model for. Outside shared mode (no vendor models) only the per-tenant feature list
    applies and the request must name its model, as before.
    """
    tenant = None if principal.user_token else tenants.by_issuer.get(principal.issuer)
    if tenant is not None and feature is not None:
        if not tenant.allows(feature):
            raise PlanError(
                f"The feature {feature} is not enabled for instance {principal.issuer} on this "
                "AI gateway; ask the gateway operator to add it to the instance's "
                "allowed_features",
                status=403,
            )
        USAGE_KEY.set((principal.issuer, feature))
        tenants.metrics.tenant_request(principal.issuer, feature)
    if names_model or not tenants.shared_mode:
        if tenant is not None and names_model and not tenant.allow_self_hosted_models:
            raise PlanError(
                f"This AI gateway serves its own vendor models: instance {principal.issuer} "
                "may not name a model endpoint, key or identifier here. Set the feature to "
                "self-hosted on the instance to use your own model through your own gateway, "
                "or ask the gateway operator to set allow_self_hosted_models for this instance",
                status=403,
            )
        return requested(), None
    vendor = tenants.vendor_for(feature) if feature is not None else None
    if vendor is None:
        raise PlanError(
            f"This AI gateway has no vendor model for {feature or 'this endpoint'}; ask the "
            "gateway operator to configure vendor_models for it, or set the feature to "
            "self-hosted on the instance",
            status=403,
        )
    return vendor.target, vendor


def feature_of_prompt(prompt_id: str) -> str | None:
    return PROMPT_FEATURES.get(prompt_id)


__all__ = [
    "Tenant",
    "Tenants",
    "VendorSetupError",
    "VendorTarget",
    "choose_target",
    "feature_of_prompt",
    "vendor_target",
]
