"""The instance's request limits, GitLab's ``ApplicationRateLimiter`` and Rack::Attack style.

* Per user, per AI endpoint (:data:`LIMITS`): a sliding window each, sized by
  ``settings.instance`` (0 turns a limit off). Over it: 429 with ``Retry-After``.
* Per client address, failed authentications (GitLab's failed-auth ban): more than
  ``failed_auth_max_retry`` requests with a wrong, revoked or expired token within
  ``failed_auth_find_time_s`` ban the address for ``failed_auth_ban_time_s``. While banned,
  every authenticated request from it gets 429, even with a valid token (as GitLab's ban,
  which refuses the address, not the token): an attacker guessing tokens cannot tell a hit
  from a miss. Endpoints without a token (health, JWKS, discovery, metrics) stay reachable.
  The address is the one ``ClientAddressMiddleware`` settled on (X-Forwarded-For only from
  ``trusted_proxies``); ``failed_auth_exempt_cidrs`` (none by default: a reverse proxy on the
  same host belongs in ``trusted_proxies``) are never banned.

State is in process (``rate_limit.py``, bounded in keys) or, with ``ENCLAVE_REDIS_URL``, in
the Redis every replica shares (``redis_limits.py``, keys expire with their window): then N
replicas enforce one limit, not N. While Redis is away, ``redis_failure_mode`` decides: closed
(default) answers 503 with Retry-After, open serves unlimited (``common/shared_store.py``).
Refusals are counted in ``metrics.py`` by limit name, never by user or address.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar, get_args

from enclave.common.logging import get_logger
from enclave.common.netrules import in_networks, parse_ip, parse_networks
from enclave.common.shared_store import SharedStateUnavailable, SharedStore
from enclave.config import InstanceSettings
from enclave.instance.api.errors import InstanceAPIError
from enclave.instance.metrics import InstanceMetrics
from enclave.instance.pats import AuthFailure
from enclave.instance.rate_limit import (
    BanList,
    LocalBans,
    LocalWindow,
    SlidingWindowLimiter,
    retry_after,
)
from enclave.instance.redis_limits import RedisBans, RedisWindow

log = get_logger(__name__)

CODE_SUGGESTIONS: Final = "code_suggestions_api"
CHAT: Final = "duo_chat"
AI_ACTION: Final = "ai_action"
DIRECT_ACCESS: Final = "code_suggestions_direct_access"
OPENAI_DIRECT_ACCESS: Final = "openai_direct_access"
FAILED_AUTH: Final = "failed_authentication"

# Failures that count towards a ban: a token was presented and it was wrong. A request
# without any token (a browser, a health probe) is not an attempt to guess one.
BAN_REASONS: Final = frozenset(get_args(AuthFailure)) - {"missing"}


T = TypeVar("T")


class Window(Protocol):
    limit: int

    async def hit(self, key: Hashable) -> float | None: ...
    async def forget(self, key: Hashable) -> None: ...


class Bans(Protocol):
    async def ban(self, key: Hashable, seconds: float) -> None: ...
    async def remaining(self, key: Hashable) -> float | None: ...


async def _counted(check: Awaitable[T]) -> T:
    """``check``'s result, or the 503 to answer when the shared store is away (closed)."""
    try:
        return await check
    except SharedStateUnavailable as exc:
        raise InstanceAPIError(
            503, message=exc.message, headers={"Retry-After": str(exc.retry_after_s)}
        ) from None


@dataclass(frozen=True)
class Limit:
    name: str
    what: str  # for the message: "code completions"
    limit: int  # 0: off
    window_s: float
    setting: str  # the environment variable that changes it

    def per(self) -> str:
        if self.window_s % 3600 == 0:
            hours = int(self.window_s // 3600)
            return "hour" if hours == 1 else f"{hours} hours"
        if self.window_s % 60 == 0:
            minutes = int(self.window_s // 60)
            return "minute" if minutes == 1 else f"{minutes} minutes"
        return f"{self.window_s:g} seconds"


def _env(field: str) -> str:
    return f"ENCLAVE_INSTANCE__{field.upper()}"


def configured_limits(settings: InstanceSettings) -> tuple[Limit, ...]:
    return (
        Limit(
            CODE_SUGGESTIONS,
            "code suggestions",
            settings.code_suggestions_api_rate_limit,
            60.0,
            _env("code_suggestions_api_rate_limit"),
        ),
        Limit(
            CHAT,
            "Duo Chat",
            settings.duo_chat_rate_limit,
            settings.duo_chat_rate_limit_window_s,
            _env("duo_chat_rate_limit"),
        ),
        Limit(
            AI_ACTION,
            "AI features",
            settings.ai_action_rate_limit,
            settings.ai_action_rate_limit_window_s,
            _env("ai_action_rate_limit"),
        ),
        Limit(
            DIRECT_ACCESS,
            "direct access tokens",
            settings.code_suggestions_direct_access_rate_limit,
            60.0,
            _env("code_suggestions_direct_access_rate_limit"),
        ),
        Limit(
            OPENAI_DIRECT_ACCESS,
            "OpenAI API tokens",
            settings.code_suggestions_direct_access_rate_limit,
            60.0,
            _env("code_suggestions_direct_access_rate_limit"),
        ),
    )


class InstanceLimits:
    """Every limit of one instance process, and the metrics that count its refusals.

    Counted in process, or in the shared Redis when ``store`` is given (every replica then
    enforces one limit); the checks are the same either way.
    """

    def __init__(
        self,
        settings: InstanceSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        store: SharedStore | None = None,
    ) -> None:
        self.limits = {limit.name: limit for limit in configured_limits(settings)}
        self.metrics = InstanceMetrics(
            (*self.limits, FAILED_AUTH), tuple(sorted(get_args(AuthFailure)))
        )
        self.store = store
        max_keys = settings.rate_limit_max_keys
        self.max_retry = settings.failed_auth_max_retry
        self.ban_time_s = settings.failed_auth_ban_time_s
        # Refuses a hit once the window holds max_retry - 1 failures: the Nth one bans.
        failures_limit = max(1, self.max_retry - 1)
        self._limiters: dict[str, Window]
        self._failures: Window
        self.bans: Bans
        if store is None:
            self._limiters = {
                limit.name: LocalWindow(
                    SlidingWindowLimiter(
                        limit.limit, limit.window_s, clock=clock, max_keys=max_keys
                    )
                )
                for limit in self.limits.values()
                if limit.limit > 0
            }
            self._failures = LocalWindow(
                SlidingWindowLimiter(
                    failures_limit,
                    settings.failed_auth_find_time_s,
                    clock=clock,
                    max_keys=max_keys,
                )
            )
            self.bans = LocalBans(BanList(clock=clock, max_keys=max_keys))
        else:
            store.count_in("enclave_instance", self.metrics.registry)
            self._limiters = {
                limit.name: RedisWindow(store, limit.name, limit.limit, limit.window_s)
                for limit in self.limits.values()
                if limit.limit > 0
            }
            self._failures = RedisWindow(
                store, FAILED_AUTH, failures_limit, settings.failed_auth_find_time_s
            )
            self.bans = RedisBans(store, FAILED_AUTH)
        self._exempt = parse_networks(settings.failed_auth_exempt_cidrs, "failed_auth_exempt_cidrs")

    def limiter(self, name: str) -> Window | None:
        return self._limiters.get(name)

    async def check(self, name: str, user_id: int) -> None:
        """Count a request of ``user_id`` against limit ``name``; 429 when over it, 503 when
        the shared store is away and the failure mode is closed."""
        limiter = self._limiters.get(name)
        if limiter is None:
            return
        wait = await _counted(limiter.hit(user_id))
        if wait is None:
            return
        limit = self.limits[name]
        self.metrics.rate_limited.labels(name).inc()
        log.info("rate_limited", limit=name, user_id=user_id)
        seconds = retry_after(wait)
        raise InstanceAPIError(
            429,
            message=(
                "This endpoint has been requested too many times. Try again later: the "
                f"limit for {limit.what} is {limit.limit} requests per {limit.per()} per "
                f"user; retry in {seconds} s (Retry-After). An administrator can change "
                f"it with {limit.setting}."
            ),
            headers={"Retry-After": seconds},
        )

    # --- failed authentications, per client address -------------------------------------

    def _bannable(self, address: str | None) -> bool:
        if self.max_retry <= 0 or address is None:
            return False
        ip = parse_ip(address)
        return ip is not None and not in_networks(ip, self._exempt)

    async def check_address(self, address: str | None) -> None:
        """429 while ``address`` is banned for failed authentications."""
        if address is None or not self._bannable(address):
            return
        left = await _counted(self.bans.remaining(address))
        if left is None:
            return
        self.metrics.rate_limited.labels(FAILED_AUTH).inc()
        raise self._banned_error(left)

    async def auth_failed(self, address: str | None, reason: AuthFailure) -> None:
        """Count a failed authentication (still answered 401); the ``failed_auth_max_retry``-th
        within ``failed_auth_find_time_s`` bans ``address`` for its next requests."""
        self.metrics.failed_authentications.labels(reason).inc()
        if reason not in BAN_REASONS or address is None or not self._bannable(address):
            return
        try:
            if self.max_retry > 1 and await self._failures.hit(address) is None:
                return
            await self._failures.forget(address)
            await self.bans.ban(address, self.ban_time_s)
        except SharedStateUnavailable:
            return  # this request is refused with 401 anyway; the next one gets the 503
        self.metrics.address_bans.inc()
        log.warning(
            "client_address_banned",
            client=address,
            failures=self.max_retry,
            ban_s=self.ban_time_s,
        )

    def _banned_error(self, seconds: float) -> InstanceAPIError:
        wait = retry_after(seconds)
        return InstanceAPIError(
            429,
            message=(
                "Too many failed authentication attempts from your address: it is blocked "
                f"for {wait} s (Retry-After). Check the personal access token your client "
                "sends (PRIVATE-TOKEN or Authorization: Bearer) before trying again; an "
                "administrator can change this with ENCLAVE_INSTANCE__FAILED_AUTH_MAX_RETRY."
            ),
            headers={"Retry-After": wait},
        )
