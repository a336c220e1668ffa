"""In-process rate limits on the AI endpoints: token buckets per instance and per user.

Checked after authentication (an unauthenticated flood costs a failed verification, and is
the client address allow-list's business). Two limits, each off when set to 0:

* per instance, keyed by ``(issuer, instance id)``: ``rate_limit_per_instance_rps`` requests
  per second with bursts of ``rate_limit_per_instance_burst``;
* per user, keyed by ``(instance id, X-Gitlab-Global-User-Id)`` when the header is present:
  ``rate_limit_per_user_rpm`` requests per minute with bursts of ``rate_limit_per_user_burst``.

Over a limit → 429 with ``Retry-After`` (whole seconds). Without ``ENCLAVE_REDIS_URL`` the
limits are per worker process and per replica (no shared state): with N workers an instance
may get up to N times the rate. With it the buckets live in the Redis every replica shares
(:class:`RedisTokenBuckets`, one atomic Lua script per take), so N replicas enforce one
limit; while Redis is away ``redis_failure_mode`` decides: closed (default) refuses with 503
and Retry-After, open serves unlimited. GitLab's own gateway has no such limits; the defaults
are generous enough not to throttle a normal instance and only stop runaway clients.

In process, no locks: each worker runs one event loop and a local take never awaits. Memory
is bounded: at most ``max_buckets`` buckets per limit; past that the oldest bucket is dropped
(its key simply starts again with a full bucket). In Redis a bucket expires once it would be
full again.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Final

from prometheus_client import Counter

from enclave.common.shared_store import SharedStateUnavailable, SharedStore

DEFAULT_MAX_BUCKETS: Final = 100_000


class RateLimited(Exception):
    """A refused request; ``status`` (429 over a limit, 503 when the shared store is away in
    closed mode), ``detail`` and ``retry_after_s`` make the response."""

    def __init__(self, scope: str, detail: str, retry_after_s: int, status: int = 429) -> None:
        super().__init__(detail)
        self.scope = scope
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.status = status


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


# KEYS[1]: the bucket (a hash: tokens, at). ARGV: rate per second, capacity.
# Returns the seconds until a token is there, as a string ("0" when one was taken).
BUCKET_SCRIPT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(bucket[1])
local wait = 0
if tokens == nil then
  tokens = capacity - 1
else
  tokens = math.min(capacity, tokens + math.max(0, now - tonumber(bucket[2])) * rate)
  if tokens >= 1 then
    tokens = tokens - 1
  else
    wait = (1 - tokens) / rate
  end
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
  'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


class RedisTokenBuckets:
    """:class:`TokenBuckets` in the shared Redis: the same refill, one bucket for all replicas.

    Time is the Redis server's, so replicas with skewed clocks count alike. Keys are digests
    of the bucket's key (an instance id and a user id header: bounded length, never in clear).
    """

    def __init__(self, store: SharedStore, name: str, rate_per_s: float, capacity: float) -> None:
        if rate_per_s <= 0 or capacity < 1:
            raise ValueError("a token bucket needs a positive rate and capacity >= 1")
        self.store = store
        self.name = name
        self.rate = rate_per_s
        self.capacity = capacity

    async def take(self, key: object) -> float:
        """0.0 when allowed (or Redis is away in fail-open mode), else seconds to wait."""
        digest = hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()
        waited = await self.store.run(
            BUCKET_SCRIPT,
            [self.store.key("bucket", self.name, digest)],
            [repr(self.rate), repr(self.capacity)],
        )
        return 0.0 if waited is None else float(waited)


Buckets = TokenBuckets | RedisTokenBuckets


def _retry_after(wait_s: float) -> int:
    return max(1, math.ceil(wait_s))


class RateLimiter:
    """The gateway's two limits; either may be off (None). In process, or in the shared Redis
    when ``store`` is given."""

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
        store: SharedStore | None = None,
    ) -> None:
        self.per_instance_rps = per_instance_rps
        self.per_user_rpm = per_user_rpm
        self.store = store
        self.instances: Buckets | None = None
        self.users: Buckets | None = None
        if per_instance_rps > 0:
            burst = max(per_instance_burst, 1)
            self.instances = (
                TokenBuckets(per_instance_rps, burst, clock, max_buckets)
                if store is None
                else RedisTokenBuckets(store, "instance", per_instance_rps, burst)
            )
        if per_user_rpm > 0:
            burst = max(per_user_burst, 1)
            self.users = (
                TokenBuckets(per_user_rpm / 60, burst, clock, max_buckets)
                if store is None
                else RedisTokenBuckets(store, "user", per_user_rpm / 60, burst)
            )
        self._limited = limited or {}

    @property
    def enabled(self) -> bool:
        return self.instances is not None or self.users is not None

    async def check(self, issuer: str, instance_id: str | None, user_id: str | None) -> None:
        """Count one request; raises :class:`RateLimited` when it is over a limit (429) or
        the shared store is away in closed mode (503).

        The per-user limit is checked first, so that one user's flood does not use up the
        instance's allowance. In-process buckets are taken without an await (one coroutine
        per request, not one per limit: this runs on every request).
        """
        try:
            users = self.users
            if users is not None and user_id:
                key: tuple[str | None, str | None] = (instance_id, user_id)
                wait = users.take(key) if isinstance(users, TokenBuckets) else await users.take(key)
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
                key = (issuer, instance_id)
                wait = (
                    instances.take(key)
                    if isinstance(instances, TokenBuckets)
                    else await instances.take(key)
                )
                if wait:
                    self._count("instance")
                    raise RateLimited(
                        "instance",
                        f"Rate limit exceeded for instance {instance_id}: "
                        f"{_number(self.per_instance_rps)} requests per second; retry after "
                        f"{_retry_after(wait)} s",
                        _retry_after(wait),
                    )
        except SharedStateUnavailable as exc:
            raise RateLimited("store", exc.message, exc.retry_after_s, status=503) from None

    def _count(self, scope: str) -> None:
        counter = self._limited.get(scope)
        if counter is not None:
            counter.inc()


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


__all__ = [
    "DEFAULT_MAX_BUCKETS",
    "RateLimited",
    "RateLimiter",
    "RedisTokenBuckets",
    "TokenBuckets",
]
