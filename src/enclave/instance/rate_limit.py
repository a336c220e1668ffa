"""In-process sliding-window rate limits (GitLab's ``ApplicationRateLimiter`` per user).

Per process: with several workers or replicas each enforces the limit on its own share of the
traffic, so the effective limit is at most ``workers`` times the configured one. That is the
trade for no shared store on the hot path; the limits guard against runaway clients, not abuse
by a determined user who already holds a valid token.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable


class SlidingWindowLimiter:
    """At most ``limit`` hits per ``window_s`` seconds per key."""

    def __init__(
        self, limit: int, window_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._hits: dict[Hashable, deque[float]] = {}
        self._lock = threading.Lock()
        self._next_sweep = clock() + window_s

    def hit(self, key: Hashable) -> float | None:
        """Count a hit for ``key``; None when allowed, else the seconds until one is."""
        now = self._clock()
        start = now - self.window_s
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(start)
                self._next_sweep = now + self.window_s
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= start:
                hits.popleft()
            if len(hits) >= self.limit:
                return max(hits[0] - start, 0.0)
            hits.append(now)
            return None

    def _sweep(self, start: float) -> None:
        # Forget idle keys so the table does not grow with every user ever seen.
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= start]:
            del self._hits[key]


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
