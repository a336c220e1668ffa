"""Usage of the direct paths, counted here and pushed to the instance.

The instance counts what it forwards itself (its own tokens). Requests that reach the gateway
directly with a user's token — direct-access code completions (``/v2/code/completions``,
``/v4/code/suggestions``) and the OpenAI-compatible API — never pass through it, so the
gateway counts them:

* the request middleware gives each request a :class:`RequestUsage` slot (in a context
  variable, shared with the tasks the request spawns); an endpoint that serves a user's token
  :func:`claim`\\ s it with the user's pseudonym (the token's ``sub``), the feature and the
  model; the model chain (``metrics.InstrumentedModelClient``) adds the tokens it reports;
* when the response ended, the middleware adds the slot to :class:`UsageCounter`: counts per
  (user pseudonym, feature, model, minute) in memory — one dictionary update, bounded
  (:data:`MAX_KEYS`; what does not fit is dropped and counted);
* :meth:`UsageCounter.run_pusher` sends the counts every ``usage_push_s`` to the instance's
  ``POST /api/v4/internal/ai/usage`` with the routes secret (the one the routes are read with),
  off the request path; a failed push keeps them for the next one (within the bound).

Only claimed slots are counted: the instance's own tokens are never claimed, so nothing is
counted twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from enclave.common.logging import get_logger
from enclave.common.routes_secret import RoutesSecretError, read_routes_secret
from enclave.gateway.egress import display_url

log = get_logger(__name__)

PUSH_PATH: Final = "/api/v4/internal/ai/usage"
MAX_KEYS: Final = 20_000
# Entries per push (the instance takes up to 10 000).
MAX_PUSH_ENTRIES: Final = 2_000


@dataclass(slots=True)
class RequestUsage:
    """One request's usage, filled as the request goes; counted only once claimed."""

    user: str | None = None
    feature: str = ""
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0


CURRENT: ContextVar[RequestUsage | None] = ContextVar("enclave_request_usage", default=None)


def claim(user: str | None, feature: str, model: str | None) -> None:
    """Count this request for ``user`` (a pseudonym), ``feature`` and ``model``."""
    slot = CURRENT.get()
    if slot is not None and user:
        slot.user, slot.feature, slot.model = user, feature, model


def add_tokens(input_tokens: int | None, output_tokens: int | None) -> None:
    """Tokens a model call reported (called by the model chain; a no-op outside requests)."""
    slot = CURRENT.get()
    if slot is not None:
        slot.input_tokens += input_tokens or 0
        slot.output_tokens += output_tokens or 0


# Per key: requests, errors, input tokens, output tokens, latency in ms (summed).
_Key = tuple[str, str, str | None, int]


class UsageCounter:
    def __init__(self, *, max_keys: int = MAX_KEYS) -> None:
        self.max_keys = max_keys
        self.dropped = 0
        self.pushed = 0
        self._counts: dict[_Key, list[int]] = {}

    def add(self, slot: RequestUsage, status: int, seconds: float) -> None:
        if slot.user is None:
            return
        key = (slot.user, slot.feature, slot.model, int(time.time() // 60))
        self._merge(
            key,
            [
                1,
                1 if status >= 400 else 0,
                slot.input_tokens,
                slot.output_tokens,
                round(seconds * 1000),
            ],
        )

    def _merge(self, key: _Key, values: list[int]) -> None:
        counts = self._counts.get(key)
        if counts is None:
            if len(self._counts) >= self.max_keys:
                self.dropped += values[0]
                return
            self._counts[key] = values
            return
        for index, value in enumerate(values):
            counts[index] += value

    def pending(self) -> int:
        return len(self._counts)

    def take(self, limit: int = MAX_PUSH_ENTRIES) -> dict[_Key, list[int]]:
        """Up to ``limit`` entries, removed from the counter."""
        taken: dict[_Key, list[int]] = {}
        for key in list(self._counts)[:limit]:
            taken[key] = self._counts.pop(key)
        return taken

    def put_back(self, taken: dict[_Key, list[int]]) -> None:
        for key, values in taken.items():
            self._merge(key, values)

    @staticmethod
    def document(taken: dict[_Key, list[int]]) -> dict[str, Any]:
        entries = [
            {
                "user": user,
                "feature": feature,
                "model": model,
                "minute": minute,
                "requests": values[0],
                "errors": values[1],
                "input_tokens": values[2],
                "output_tokens": values[3],
                "latency_ms_total": values[4],
            }
            for (user, feature, model, minute), values in taken.items()
        ]
        return {"version": 1, "entries": entries}


class UsagePusher:
    """Sends a :class:`UsageCounter`'s counts to the instance (module docstring)."""

    def __init__(
        self,
        counter: UsageCounter,
        *,
        issuer: str,
        secret_file: Path,
        session: Callable[[], aiohttp.ClientSession],
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self.counter = counter
        self.url = issuer.rstrip("/") + PUSH_PATH
        self._secret_file = secret_file
        self._session = session
        self.interval_s = interval_s
        self._timeout_s = timeout_s
        self.last_error: str | None = None

    async def push_once(self) -> bool:
        """Push everything pending (in batches); False when a push failed (kept for later)."""
        while self.counter.pending():
            taken = self.counter.take()
            try:
                await self._post(self.counter.document(taken))
            except Exception as exc:
                self.counter.put_back(taken)
                self.last_error = str(exc)
                log.warning("usage_push_failed", url=display_url(self.url), reason=str(exc))
                return False
            self.counter.pushed += sum(values[0] for values in taken.values())
        self.last_error = None
        return True

    async def _post(self, document: dict[str, Any]) -> None:
        try:
            secret = await asyncio.to_thread(read_routes_secret, self._secret_file)
        except RoutesSecretError as exc:
            raise RuntimeError(str(exc)) from None
        async with self._session().post(
            self.url,
            data=orjson.dumps(document),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {secret}"},
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            allow_redirects=False,  # the secret goes to the instance and nowhere else
        ) as response:
            if response.status != 204:
                raise RuntimeError(f"the instance answered HTTP {response.status}")

    async def run(self) -> None:
        """Push every ``interval_s`` until cancelled, then once more (what is left)."""
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                await self.push_once()
        finally:
            await asyncio.shield(self.push_once())
