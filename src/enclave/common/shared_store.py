"""The Redis that replicas share for state they must agree on (rate limits, bans).

One :class:`SharedStore` per process and role. It runs Lua scripts (atomic on the server, so
two replicas counting the same user at the same moment never both take the last slot) on a
pooled async client with short timeouts, and decides what a limit does while Redis is away:

* ``closed`` (the default, deny when unsure): :class:`SharedStateUnavailable`, which the
  roles answer with 503 and Retry-After;
* ``open``: the call returns None and the caller lets the request through unlimited.

A failure (refused, reset, no answer within ``timeout_s``) marks Redis down for ``retry_s``:
meanwhile calls fail at once instead of each waiting out the timeout, so an outage never makes
requests hang. The transitions (down, back up) are logged once each, never per request, and
counted in the role's ``/metrics``. The URL is a secret (it may hold a password): it is never
logged or put in a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from enclave.common.logging import get_logger
from enclave.config import EnclaveSettings

log = get_logger(__name__)

FailureMode = Literal["open", "closed"]
# Connections per process: a check holds one for a single round trip (well under 1 ms on a
# LAN), so a few dozen serve thousands of requests a second; past them a check waits for one
# at most timeout_s.
MAX_CONNECTIONS: Final = 32


class SharedStateUnavailable(Exception):
    """Redis is unreachable and the failure mode is closed: answer 503 with Retry-After."""

    def __init__(self, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        self.message = (
            "The shared rate-limit store (Redis) is unreachable, so this request cannot be "
            f"counted and is refused (redis_failure_mode closed); retry in {retry_after_s} s. "
            "An administrator should check the Redis server at ENCLAVE_REDIS_URL, or set "
            "ENCLAVE_REDIS_FAILURE_MODE=open to serve without limits while it is down."
        )
        super().__init__(self.message)


class StoreMetrics:
    """The store's health in a role's registry: ``<prefix>_redis_up`` and its failures."""

    def __init__(self, prefix: str, registry: CollectorRegistry) -> None:
        self.up = Gauge(
            f"{prefix}_redis_up",
            "1 while the shared Redis answers, 0 while it is treated as down.",
            registry=registry,
        )
        self.failures = Counter(
            f"{prefix}_redis_failures_total",
            "Redis calls that failed (refused, reset, timed out).",
            registry=registry,
        )
        self.degraded = Counter(
            f"{prefix}_redis_degraded_checks_total",
            "Limit checks decided without Redis, by decision: allowed (failure mode open) or "
            "refused with 503 (closed). A request may make several checks.",
            ["decision"],
            registry=registry,
        )
        self.up.set(1)
        for decision in ("allowed", "refused"):
            self.degraded.labels(decision)


class SharedStore:
    """Lua scripts on a shared Redis, with a failure mode for when it cannot be reached."""

    def __init__(
        self,
        url: str,
        *,
        failure_mode: FailureMode,
        timeout_s: float,
        retry_s: float,
        key_prefix: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self.failure_mode = failure_mode
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        # Replaced by count_in() with the role's registry, so /metrics shows them.
        self.metrics = StoreMetrics("enclave", CollectorRegistry(auto_describe=False))
        self.key_prefix = key_prefix
        self._clock = clock
        self._down_until = 0.0
        self._down = False
        # A client belongs to the event loop that opened its connections: one per loop (a
        # server worker has one; tests may run several in turn).
        self._client: Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, AsyncScript] = {}

    @classmethod
    def from_settings(cls, settings: EnclaveSettings, role: str) -> SharedStore | None:
        """The store ``settings`` configure for ``role`` (its keys' prefix); None without
        ``redis_url`` (limits stay in process)."""
        if settings.redis_url is None:
            return None
        return cls(
            settings.redis_url.get_secret_value(),
            failure_mode=settings.redis_failure_mode,
            timeout_s=settings.redis_timeout_s,
            retry_s=settings.redis_retry_s,
            key_prefix=f"enclave:{role}",
        )

    def count_in(self, prefix: str, registry: CollectorRegistry) -> None:
        """Count the store's health in ``registry`` (a role's /metrics)."""
        self.metrics = StoreMetrics(prefix, registry)
        if self._down:
            self.metrics.up.set(0)

    @property
    def available(self) -> bool:
        return not self._down

    def key(self, *parts: str) -> str:
        return ":".join((self.key_prefix, *parts))

    def _redis(self) -> Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            pool = BlockingConnectionPool.from_url(
                self._url,
                max_connections=MAX_CONNECTIONS,
                timeout=self.timeout_s,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0),  # a retry would double the wait; fail fast
            )
            self._client = Redis.from_pool(pool)  # the client owns (and closes) the pool
            self._loop = loop
            self._scripts = {}
        return self._client

    def _script(self, source: str) -> AsyncScript:
        script = self._scripts.get(source)
        if script is None:
            # EVALSHA, and SCRIPT LOAD once when the server does not know it yet.
            script = self._scripts[source] = self._redis().register_script(source)
        return script

    async def run(self, source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's result; None when Redis is away and the failure mode is open.

        Raises :class:`SharedStateUnavailable` when it is away and the mode is closed.
        """
        if self._down and self._clock() < self._down_until:
            return self._degraded()
        try:
            # One bound for the whole call (a pooled connection, connecting, the answer).
            async with asyncio.timeout(self.timeout_s):
                result = await self._script(source)(keys=list(keys), args=list(args))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return self._degraded()
        if self._down:
            self._down = False
            self.metrics.up.set(1)
            log.warning("redis_reachable_again")
        return result

    def _failed(self, exc: BaseException) -> None:
        self.metrics.failures.inc()
        self._down_until = self._clock() + self.retry_s
        if not self._down:
            self._down = True
            self.metrics.up.set(0)
            # The exception's type only: its text may carry the URL, password included.
            log.error(
                "redis_unreachable",
                error=type(exc).__name__,
                failure_mode=self.failure_mode,
                retry_s=self.retry_s,
            )

    def _degraded(self) -> None:
        if self.failure_mode == "open":
            self.metrics.degraded.labels("allowed").inc()
            return None
        self.metrics.degraded.labels("refused").inc()
        raise SharedStateUnavailable(max(1, round(self.retry_s)))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # Closing on a loop that is gone: nothing left to release.
            with contextlib.suppress(RedisError, OSError, RuntimeError):
                await client.aclose()
