"""Is a model server up? Cached probes for the readiness endpoints, never on a request's path.

A probe is ``GET <endpoint>/models`` (the OpenAI API base's model list) without credentials:
any answer below 500 — 401 included — means a server is listening and serving; a refused
connection, a timeout or a 5xx (llama.cpp answers 503 while it loads) means it is down. Results
are cached for ``ttl_s`` and one probe round runs at a time, so a load balancer polling
readiness every second costs the model server at most one cheap request per ``ttl_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

from enclave.common.http1 import ConnectFailed, Http1Client, HttpClientError, Timeouts

PROBE_TIMEOUT_S: Final = 1.0
PROBE_TTL_S: Final = 1.0
MAX_PROBED: Final = 16  # readiness stays cheap whatever the number of models


# GET an absolute URL with a timeout; the HTTP status, or raises the lean client's errors
# (enclave.common.http1: both roles probe through it).
StatusGetter = Callable[[str, float], Awaitable[int]]


def client_getter(client: Http1Client) -> StatusGetter:
    """A :data:`StatusGetter` on the lean pooled client (no redirects, body discarded)."""

    async def get(url: str, timeout_s: float) -> int:
        response = await client.get(url, headers={}, timeouts=Timeouts(timeout_s, total=timeout_s))
        response.close()  # the body is not wanted: do not read it to keep the connection
        return response.status

    return get


@dataclass(frozen=True, slots=True)
class ModelStatus:
    name: str
    up: bool
    detail: str  # "ok", or why it is down (no URL, no key)

    def view(self) -> dict[str, str]:
        return {"model": self.name, "status": "ok" if self.up else "down", "detail": self.detail}


class ModelProbe:
    """Probes ``(name, endpoint)`` pairs, caching the last round for ``ttl_s``."""

    def __init__(
        self,
        ttl_s: float = PROBE_TTL_S,
        timeout_s: float = PROBE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._cached: tuple[float, tuple[tuple[str, str], ...], list[ModelStatus]] | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def _loop_lock(self) -> asyncio.Lock:
        """One lock per event loop: a probe may outlive the loop that first used it (tests,
        an app re-created in the same process)."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def check(
        self, get: StatusGetter, models: Iterable[tuple[str, str]]
    ) -> list[ModelStatus]:
        targets = tuple(sorted(set(models)))[:MAX_PROBED]
        async with self._loop_lock():  # concurrent readiness calls share one round
            cached = self._cached
            if cached is not None and cached[1] == targets and self._clock() < cached[0]:
                return cached[2]
            results = list(await asyncio.gather(*(self._probe(get, n, e) for n, e in targets)))
            self._cached = (self._clock() + self._ttl_s, targets, results)
            return results

    async def _probe(self, get: StatusGetter, name: str, endpoint: str) -> ModelStatus:
        url = endpoint.rstrip("/") + "/models"
        try:
            status = await get(url, self._timeout_s)
        except TimeoutError:
            return ModelStatus(name, False, f"no answer within {self._timeout_s:g} s")
        except ConnectFailed:
            return ModelStatus(name, False, "unreachable (connection refused or no route)")
        except (HttpClientError, OSError) as exc:
            return ModelStatus(name, False, f"unreachable ({type(exc).__name__})")
        if status >= 500:
            return ModelStatus(name, False, f"answered {status} (starting or failing)")
        return ModelStatus(name, True, "ok")
