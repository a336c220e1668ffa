"""In-process sliding-window rate limits (GitLab's ``ApplicationRateLimiter`` per user).

Per process: with several workers or replicas each enforces the limit on its own share of the
traffic, so the effective limit is at most ``workers`` times the configured one. That is the
trade for no shared store on the hot path; the limits guard against runaway clients, not abuse
by a determined user who already holds a valid token. With ``ENCLAVE_REDIS_URL`` the same
limits are counted once for all processes instead (``redis_limits.py``); ``LocalWindow`` and
``LocalBans`` give these classes the async interface the Redis ones share.

Memory is bounded: each limiter keeps at most ``max_keys`` keys (users, client addresses).
When a new key would exceed it, idle keys are dropped first, then the least recently used
ones, so a flood of distinct keys (spoofed addresses behind a trusted proxy, say) costs a
fixed amount of memory; the price is that a key pushed out starts again with a clean slate.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

DEFAULT_MAX_KEYS = 100_000


class SlidingWindowLimiter:
    """At most ``limit`` hits per ``window_s`` seconds per key, for at most ``max_keys`` keys."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max(1, max_keys)
        self._clock = clock
        # Insertion order is recency order: a key is moved to the end on every hit.
        self._hits: dict[Hashable, deque[float]] = {}
        self._lock = threading.Lock()
        self._next_sweep = clock() + window_s

    def __len__(self) -> int:
        return len(self._hits)

    def hit(self, key: Hashable) -> float | None:
        """Count a hit for ``key``; None when allowed, else the seconds until one is."""
        now = self._clock()
        start = now - self.window_s
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(start)
                self._next_sweep = now + self.window_s
            hits = self._hits.pop(key, None)
            if hits is None:
                hits = deque()
                if len(self._hits) >= self.max_keys:
                    self._make_room(start)
            self._hits[key] = hits
            while hits and hits[0] <= start:
                hits.popleft()
            if len(hits) >= self.limit:
                return max(hits[0] - start, 0.0)
            hits.append(now)
            return None

    def count(self, key: Hashable) -> int:
        """Hits of ``key`` within the window (without counting one)."""
        start = self._clock() - self.window_s
        with self._lock:
            return sum(1 for at in self._hits.get(key, ()) if at > start)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._hits.pop(key, None)

    def _sweep(self, start: float) -> None:
        # Forget idle keys so the table does not grow with every user ever seen.
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= start]:
            del self._hits[key]

    def _make_room(self, start: float) -> None:
        self._sweep(start)
        while len(self._hits) >= self.max_keys:
            del self._hits[next(iter(self._hits))]  # the least recently used key


class BanList:
    """Keys banned until a time, for at most ``max_keys`` keys (the soonest-ending go first)."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        self.max_keys = max(1, max_keys)
        self._clock = clock
        self._until: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._until)

    def ban(self, key: Hashable, seconds: float) -> None:
        now = self._clock()
        with self._lock:
            if key not in self._until and len(self._until) >= self.max_keys:
                for old in [k for k, until in self._until.items() if until <= now]:
                    del self._until[old]
                while len(self._until) >= self.max_keys:
                    del self._until[min(self._until, key=self._until.__getitem__)]
            self._until[key] = now + seconds

    def remaining(self, key: Hashable) -> float | None:
        """Seconds left of ``key``'s ban, or None when it is not banned."""
        with self._lock:
            until = self._until.get(key)
            if until is None:
                return None
            left = until - self._clock()
            if left <= 0:
                del self._until[key]
                return None
            return left


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class LocalWindow:
    """A :class:`SlidingWindowLimiter` behind the async interface the Redis one shares."""

    def __init__(self, limiter: SlidingWindowLimiter) -> None:
        self.limiter = limiter

    def __len__(self) -> int:
        return len(self.limiter)

    @property
    def limit(self) -> int:
        return self.limiter.limit

    @limit.setter
    def limit(self, value: int) -> None:
        self.limiter.limit = value

    async def hit(self, key: Hashable) -> float | None:
        return self.limiter.hit(key)

    async def forget(self, key: Hashable) -> None:
        self.limiter.forget(key)


class LocalBans:
    """A :class:`BanList` behind the async interface the Redis one shares."""

    def __init__(self, bans: BanList) -> None:
        self.bans = bans

    def __len__(self) -> int:
        return len(self.bans)

    async def ban(self, key: Hashable, seconds: float) -> None:
        self.bans.ban(key, seconds)

    async def remaining(self, key: Hashable) -> float | None:
        return self.bans.remaining(key)
