"""Instance-wide AI settings (GitLab's ``Ai::Setting``): gateway URLs, timeout, verbose logs.

Two gateways: the self-hosted one (``ai_gateway_url``) serves features set to a self-hosted
model; the vendored one (``vendored_ai_gateway_url``, a shared gateway with vendor models,
GitLab's "GitLab AI vendor" option) serves features set to vendored. Which one a request goes
to depends only on the feature's setting (:meth:`EffectiveAiSettings.route`), never on the
client, and each gets tokens minted for its own audience.

Stored in the ``ai_settings`` singleton row; a NULL column means "as configured"
(``instance.gateway_url`` / ``instance.gateway_timeout_s``), so a fresh install follows its
config until an administrator sets a value. The row is read with every forwarded request, so a
change takes effect at once on every replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.orm import Session

from enclave.common import wire
from enclave.config import EnclaveSettings
from enclave.instance import audit
from enclave.instance.actor import Actor
from enclave.instance.admin_errors import InvalidInputError
from enclave.instance.db.models import AiSetting
from enclave.instance.registry import validate_url

MIN_TIMEOUT_S = 60
MAX_TIMEOUT_S = 600
UPDATABLE = (
    "ai_gateway_url",
    "vendored_ai_gateway_url",
    "ai_gateway_timeout_seconds",
    "enabled_instance_verbose_ai_logs",
)


@dataclass(frozen=True)
class GatewayRoute:
    """Where one feature's requests go and the audience of the tokens they carry."""

    url: str
    audience: str
    vendored: bool


@dataclass(frozen=True)
class EffectiveAiSettings:
    ai_gateway_url: str
    ai_gateway_timeout_seconds: float
    enabled_instance_verbose_ai_logs: bool
    # Where each value comes from: "database" (set by an administrator) or "configuration".
    ai_gateway_url_source: str
    ai_gateway_timeout_source: str
    vendored_ai_gateway_url: str | None = None
    vendored_ai_gateway_url_source: str = "configuration"
    vendored_audience: str = wire.AUDIENCE

    def view(self) -> dict[str, Any]:
        view = asdict(self)
        del view["vendored_audience"]
        return view

    def route(self, vendored: bool) -> GatewayRoute:
        """The gateway for a feature: the vendored one for vendored features, else the
        self-hosted one. A vendored feature without a vendored gateway never falls back to the
        self-hosted gateway (features.resolve_feature refuses it before this is asked)."""
        if vendored:
            if self.vendored_ai_gateway_url is None:
                raise ValueError("no vendored AI gateway is configured")
            return GatewayRoute(self.vendored_ai_gateway_url, self.vendored_audience, True)
        return GatewayRoute(self.ai_gateway_url, wire.AUDIENCE, False)


def effective(session: Session, settings: EnclaveSettings) -> EffectiveAiSettings:
    row = session.get(AiSetting, 1)
    url = row.ai_gateway_url if row is not None else None
    timeout = row.ai_gateway_timeout_seconds if row is not None else None
    vendored = row.vendored_ai_gateway_url if row is not None else None
    vendored_url = vendored or settings.instance.vendored_gateway_url
    return EffectiveAiSettings(
        ai_gateway_url=(url or settings.instance.gateway_url).rstrip("/"),
        ai_gateway_timeout_seconds=float(
            timeout if timeout is not None else settings.instance.gateway_timeout_s
        ),
        enabled_instance_verbose_ai_logs=bool(row and row.enabled_instance_verbose_ai_logs),
        ai_gateway_url_source="database" if url else "configuration",
        ai_gateway_timeout_source="database" if timeout is not None else "configuration",
        vendored_ai_gateway_url=vendored_url.rstrip("/") if vendored_url else None,
        vendored_ai_gateway_url_source="database" if vendored else "configuration",
        vendored_audience=settings.instance.vendored_gateway_audience,
    )


def validate_timeout(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInputError(
            "ai_gateway_timeout_seconds must be a whole number of seconds",
            field="ai_gateway_timeout_seconds",
        )
    try:
        number = float(value)
    except ValueError:
        raise InvalidInputError(
            f"ai_gateway_timeout_seconds must be a whole number of seconds (got {value!r})",
            field="ai_gateway_timeout_seconds",
        ) from None
    if number != int(number):
        raise InvalidInputError(
            f"ai_gateway_timeout_seconds must be a whole number of seconds (got {value!r})",
            field="ai_gateway_timeout_seconds",
        )
    seconds = int(number)
    if not MIN_TIMEOUT_S <= seconds <= MAX_TIMEOUT_S:
        raise InvalidInputError(
            f"ai_gateway_timeout_seconds must be between {MIN_TIMEOUT_S} and {MAX_TIMEOUT_S} "
            f"(got {seconds})",
            field="ai_gateway_timeout_seconds",
        )
    return seconds


def validate_gateway_url(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None  # back to the configured URL
    return validate_url(value, "ai_gateway_url", what="AI gateway's")


def validate_vendored_gateway_url(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None  # back to the configured URL (none by default)
    return validate_url(value, "vendored_ai_gateway_url", what="vendored AI gateway's")


def update(
    session: Session, settings: EnclaveSettings, changes: Mapping[str, Any], actor: Actor
) -> EffectiveAiSettings:
    """Apply ``changes``; null (or "") for the URL or timeout goes back to the configuration."""
    unknown = sorted(set(changes) - set(UPDATABLE))
    if unknown:
        raise InvalidInputError(
            f"unknown setting {unknown[0]!r}; settings: {', '.join(UPDATABLE)}", field=unknown[0]
        )
    if not changes:
        raise InvalidInputError(f"nothing to change; settings: {', '.join(UPDATABLE)}")
    row = session.get(AiSetting, 1)
    if row is None:
        row = AiSetting(id=1, enabled_instance_verbose_ai_logs=False)
        session.add(row)
    changed: dict[str, Any] = {}
    if "ai_gateway_url" in changes:
        url = validate_gateway_url(changes["ai_gateway_url"])
        if url != row.ai_gateway_url:
            row.ai_gateway_url = url
            changed["ai_gateway_url"] = url
    if "vendored_ai_gateway_url" in changes:
        vendored = validate_vendored_gateway_url(changes["vendored_ai_gateway_url"])
        if vendored != row.vendored_ai_gateway_url:
            row.vendored_ai_gateway_url = vendored
            changed["vendored_ai_gateway_url"] = vendored
    if "ai_gateway_timeout_seconds" in changes:
        timeout = validate_timeout(changes["ai_gateway_timeout_seconds"])
        if timeout != row.ai_gateway_timeout_seconds:
            row.ai_gateway_timeout_seconds = timeout
            changed["ai_gateway_timeout_seconds"] = timeout
    if "enabled_instance_verbose_ai_logs" in changes:
        verbose = changes["enabled_instance_verbose_ai_logs"]
        if not isinstance(verbose, bool):
            raise InvalidInputError(
                f"enabled_instance_verbose_ai_logs must be true or false (got {verbose!r})",
                field="enabled_instance_verbose_ai_logs",
            )
        if verbose != row.enabled_instance_verbose_ai_logs:
            row.enabled_instance_verbose_ai_logs = verbose
            changed["enabled_instance_verbose_ai_logs"] = verbose
    session.flush()
    if changed:
        audit.record(session, audit.AI_SETTINGS_UPDATED, "ai_settings", changed, actor=actor)
    return effective(session, settings)
