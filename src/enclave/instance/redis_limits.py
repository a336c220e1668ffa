"""The instance's limits in the Redis every replica shares (``ENCLAVE_REDIS_URL``).

The same semantics as the in-process ``SlidingWindowLimiter`` and ``BanList``
(``rate_limit.py``), one atomic Lua script per check, so that N instance processes enforce one
limit, not N:

* a sliding window is a sorted set of hit times per key; the script drops hits older than
  the window, refuses when ``limit`` remain (answering when the oldest leaves) or records the
  hit. Time is the Redis server's (``TIME``): replicas with skewed clocks count alike;
* a ban is a key with a time to live.

Keys expire with their window or ban, so Redis holds only live state. Users and addresses
appear in keys only as a digest (short and fixed-length whatever the input).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Hashable
from typing import Final

from enclave.common.shared_store import SharedStore

# KEYS[1]: the window's sorted set. ARGV: limit, window (µs), a unique member suffix.
# Returns -1 when the hit is counted, else the µs until the oldest hit leaves the window.
SLIDING_WINDOW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[2])
local start = now - window
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', start)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(tonumber(oldest[2]) - start, 0)
end
redis.call('ZADD', KEYS[1], now, t[1] .. '.' .. t[2] .. ':' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1)
return -1
"""

FORGET: Final = "redis.call('DEL', KEYS[1]) return 1"
# ARGV[1]: the ban's length in ms.
BAN: Final = "redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) return 1"
# The ms left of a ban; negative when there is none.
REMAINING: Final = "return redis.call('PTTL', KEYS[1])"


def digest(key: Hashable) -> str:
    """A short, fixed-length name for a user or address key (never the value in clear)."""
    return hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()


class RedisWindow:
    """At most ``limit`` hits per ``window_s`` seconds per key, counted in Redis."""

    def __init__(self, store: SharedStore, name: str, limit: int, window_s: float) -> None:
        self.store = store
        self.name = name
        self.limit = limit
        self.window_s = window_s

    def _key(self, key: Hashable) -> str:
        return self.store.key("window", self.name, digest(key))

    async def hit(self, key: Hashable) -> float | None:
        """None when allowed (or Redis is away in fail-open mode), else seconds to wait."""
        waited = await self.store.run(
            SLIDING_WINDOW,
            [self._key(key)],
            [self.limit, round(self.window_s * 1_000_000), secrets.token_hex(6)],
        )
        if waited is None or int(waited) < 0:
            return None
        return int(waited) / 1_000_000

    async def forget(self, key: Hashable) -> None:
        await self.store.run(FORGET, [self._key(key)], [])


class RedisBans:
    """Keys banned for a while, in Redis."""

    def __init__(self, store: SharedStore, name: str) -> None:
        self.store = store
        self.name = name

    def _key(self, key: Hashable) -> str:
        return self.store.key("ban", self.name, digest(key))

    async def ban(self, key: Hashable, seconds: float) -> None:
        await self.store.run(BAN, [self._key(key)], [max(1, round(seconds * 1000))])

    async def remaining(self, key: Hashable) -> float | None:
        left = await self.store.run(REMAINING, [self._key(key)], [])
        if left is None or int(left) <= 0:
            return None
        return int(left) / 1000
