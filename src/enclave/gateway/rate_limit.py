"""In-process rate limits on the AI endpoints: token buckets per instance and per user.

Checked after authentication (an unauthenticated flood costs a failed verification, and is
the client address allow-list's business). Two limits, each off when set to 0:

* per instance, keyed by ``(issuer, instance id)``: ``rate_limit_per_instance_rps`` requests
  per second with bursts of ``rate_limit_per_instance_burst``;
* per user, keyed by ``(instance id, X-Gitlab-Global-User-Id)`` when the header is present:
  ``rate_limit_per_user_rpm`` requests per minute with bursts of ``rate_limit_per_user_burst``.

Over a limit → 429 with ``Retry-After`` (whole seconds). The limits are per worker process
and per replica (no shared state): with N workers an instance may get up to N times the rate.
GitLab's own gateway has no such limits; the defaults are generous enough not to throttle a
normal instance and only stop runaway clients.

No locks: each worker runs one event loop and a check never awaits. Memory is bounded: at most
``max_buckets`` buckets per limit; past that the oldest bucket is dropped (its key simply
starts again with a full bucket).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final

from prometheus_client import Counter

DEFAULT_MAX_BUCKETS: Final = 100_000


class RateLimited(Exception):
    """A request over a limit; ``detail`` and ``retry_after_s`` make the 429 response."""

    def __init__(self, scope: str, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.scope = scope
        self.detail = detail
        self.retry_after_s = retry_after_s


class TokenBuckets:
    """Token buckets keyed by any hashable key, sharing one rate and capacity."""

    __slots__ = ("_buckets", "_clock", "capacity", "max_buckets", "rate")

    def __init__(
        self,
        rate_per_s: float,
        capacity: float,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
    ) -> None:
        if rate_per_s <= 0 or capacity < 1 or max_buckets < 1:
            raise ValueError("a token bucket needs a positive rate, capacity >= 1 and a cap >= 1")
        self.rate = rate_per_s
        self.capacity = capacity
        self.max_buckets = max_buckets
        self._clock = clock
        # key -> [tokens, last refill time]; dicts keep insertion order (oldest first).
        self._buckets: dict[object, list[float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def take(self, key: object) -> float:
        """Take one token for ``key``: 0.0 when allowed, else the seconds until one is there."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            buckets = self._buckets
            if len(buckets) >= self.max_buckets:
                del buckets[next(iter(buckets))]
            buckets[key] = [self.capacity - 1, now]
            return 0.0
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        bucket[1] = now
        if tokens >= 1:
            bucket[0] = tokens - 1
            return 0.0
        bucket[0] = tokens
        return (1 - tokens) / self.rate


def _retry_after(wait_s: float) -> int:
    return max(1, math.ceil(wait_s))


class RateLimiter:
    """The gateway's two limits; either may be off (None)."""

    def __init__(
        self,
        *,
        per_instance_rps: float,
        per_instance_burst: int,
        per_user_rpm: float,
        per_user_burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        limited: dict[str, Counter] | None = None,
    ) -> None:
        self.per_instance_rps = per_instance_rps
        self.per_user_rpm = per_user_rpm
        self.instances: TokenBuckets | None = None
        self.users: TokenBuckets | None = None
        if per_instance_rps > 0:
            self.instances = TokenBuckets(
                per_instance_rps, max(per_instance_burst, 1), clock, max_buckets
            )
        if per_user_rpm > 0:
            self.users = TokenBuckets(per_user_rpm / 60, max(per_user_burst, 1), clock, max_buckets)
        self._limited = limited or {}

    @property
    def enabled(self) -> bool:
        return self.instances is not None or self.users is not None

    def check(self, issuer: str, instance_id: str | None, user_id: str | None) -> None:
        """Count one request; raises :class:`RateLimited` when it is over a limit.

        The per-user limit is checked first, so that one user's flood does not use up the
        instance's allowance.
        """
        users = self.users
        if users is not None and user_id:
            wait = users.take((instance_id, user_id))
            if wait:
                self._count("user")
                raise RateLimited(
                    "user",
                    f"Rate limit exceeded for user {user_id} of instance {instance_id}: "
                    f"{_number(self.per_user_rpm)} requests per minute; retry after "
                    f"{_retry_after(wait)} s",
                    _retry_after(wait),
                )
        instances = self.instances
        if instances is not None:
            wait = instances.take((issuer, instance_id))
            if wait:
                self._count("instance")
                raise RateLimited(
                    "instance",
                    f"Rate limit exceeded for instance {instance_id}: "
                    f"{_number(self.per_instance_rps)} requests per second; retry after "
                    f"{_retry_after(wait)} s",
                    _retry_after(wait),
                )

    def _count(self, scope: str) -> None:
        counter = self._limited.get(scope)
        if counter is not None:
            counter.inc()


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


__all__ = ["DEFAULT_MAX_BUCKETS", "RateLimited", "RateLimiter", "TokenBuckets"]
