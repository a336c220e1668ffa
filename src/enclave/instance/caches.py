"""What the instance keeps in memory so that a request from a known token does no database
work: verified personal access tokens, and each feature's model (with its decrypted API key)
and the AI settings.

Bounds (README, Security model):

* **In the process that makes a change** (admin API, GraphQL, the admin commands' own
  process), the entries of the changed kind are dropped when the change commits
  (``db/changes.py``): the next request reads the database.
* **In other processes** (other workers, replicas, ``enclave`` admin commands run next to a
  running instance), every change bumps a counter in the database in the same transaction;
  each process reads the counters in the background every ``cache_poll_s`` (1 s) and drops
  the entries of a kind whose counter moved. A revoked or expired token, a blocked user or a
  changed model is so honoured within about ``cache_poll_s``.
* **Whatever happens** (the poll fails, a row is edited by hand in SQL), an entry is used for
  at most ``auth_cache_ttl_s`` (10 s, tokens) or ``model_cache_ttl_s`` (60 s, models) after it
  was read from the database; a token's own expiry is checked on every use.

:meth:`InstanceCaches.invalidate` is the one entry point for dropping entries (the change
hooks, the poller and any other notifier — a shared store's pub/sub, say — call it).
Failures are never cached, except "this feature is disabled / has no model" (403), which is
configuration like the models themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from enclave.common.logging import get_logger
from enclave.config import InstanceSettings
from enclave.instance.ai_settings import EffectiveAiSettings
from enclave.instance.db.base import utcnow
from enclave.instance.db.changes import AUTH, KINDS, MODELS, on_commit, read_generations
from enclave.instance.features import Feature, ResolvedModel
from enclave.instance.pats import LAST_USED_RESOLUTION, Principal, touch_many

log = get_logger(__name__)

K = TypeVar("K")
V = TypeVar("V")

DEFAULT_MAX_ENTRIES = 10_000


class TtlCache(Generic[K, V]):
    """A bounded map whose entries live ``ttl_s`` seconds; ``ttl_s`` 0 turns it off.

    ``epoch()`` before a database read and ``put(..., epoch=)`` after it: an entry read before
    an invalidation that happened during the read is not stored (it may be the old state).
    """

    def __init__(
        self,
        ttl_s: float,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max(1, max_entries)
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        self._epoch = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def epoch(self) -> int:
        return self._epoch

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored, value = entry
        if self._clock() - stored >= self.ttl_s:
            self._entries.pop(key, None)
            return None
        return value

    def put(self, key: K, value: V, *, epoch: int) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if epoch != self._epoch:
                return
            if len(self._entries) >= self.max_entries and key not in self._entries:
                # A flood of distinct keys: start again rather than track recency per hit.
                self._entries.clear()
            self._entries[key] = (self._clock(), value)

    def drop(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.clear()


@dataclass(frozen=True)
class FeatureRoute:
    """What a forwarding endpoint needs about a feature: its model, or why there is none."""

    model: ResolvedModel | None
    settings: EffectiveAiSettings
    unavailable: str | None = None  # FeatureUnavailableError's message (403)


class LastUsedBatch:
    """``last_used_at`` for authentications served from the cache, written in the background.

    A token is queued at most once per ``LAST_USED_RESOLUTION`` (a minute) per process; the
    background task writes the queue in one transaction. ``last_used_at`` so lags a use by at
    most a minute plus ``cache_poll_s``.
    """

    def __init__(
        self, *, max_tokens: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._resolution_s = LAST_USED_RESOLUTION.total_seconds()
        self._max_tokens = max_tokens
        self._clock = clock
        self._noted: dict[int, float] = {}
        self._pending: set[int] = set()

    def noted_from_database(self, token_id: int) -> None:
        """The database path touched (or found fresh) ``last_used_at`` just now."""
        self._remember(token_id, self._clock())

    def used(self, token_id: int) -> None:
        now = self._clock()
        noted = self._noted.get(token_id)
        if noted is None or now - noted >= self._resolution_s:
            self._pending.add(token_id)
            self._remember(token_id, now)

    def _remember(self, token_id: int, now: float) -> None:
        if len(self._noted) >= self._max_tokens and token_id not in self._noted:
            self._noted.clear()
        self._noted[token_id] = now

    def take(self) -> set[int]:
        pending, self._pending = self._pending, set()
        return pending


class InstanceCaches:
    """The instance's in-memory caches and the background task that keeps them honest."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: InstanceSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.poll_s = settings.cache_poll_s
        # Verified tokens by SHA-256 digest of the token (never the token itself).
        self.auth: TtlCache[str, Principal] = TtlCache(settings.auth_cache_ttl_s, clock=clock)
        self.routes: TtlCache[Feature, FeatureRoute] = TtlCache(
            settings.model_cache_ttl_s, clock=clock
        )
        # A 1-tuple: "no fallback" is an answer too, unlike a miss.
        self.fallbacks: TtlCache[Feature, tuple[ResolvedModel | None]] = TtlCache(
            settings.model_cache_ttl_s, clock=clock
        )
        self.last_used = LastUsedBatch(clock=clock)
        self._generations: dict[str, int] | None = None
        self._task: asyncio.Task[None] | None = None
        on_commit(sessions, self.invalidate_kinds)

    # --- invalidation: the one entry point ----------------------------------------------

    def invalidate(self, kind: str) -> None:
        """Drop every entry of ``kind`` (``auth`` or ``models``; anything else drops all)."""
        if kind == AUTH:
            self.auth.clear()
        elif kind == MODELS:
            self.routes.clear()
            self.fallbacks.clear()
        else:  # deny when unsure: an unknown kind forgets everything
            self.invalidate_kinds(KINDS)
            return
        log.debug("cache_invalidated", kind=kind)

    def invalidate_kinds(self, kinds: Iterable[str]) -> None:
        for kind in kinds:
            self.invalidate(kind)

    # --- the background task --------------------------------------------------------------

    def poll_once(self) -> None:
        """Read the change counters; drop the kinds that moved since the last read; write the
        queued ``last_used_at`` touches. Blocking (database): the background task runs it in
        a thread."""
        pending = self.last_used.take()
        if pending:
            try:
                touch_many(self.sessions, pending)
            except SQLAlchemyError as exc:
                log.warning("pat_last_used_not_updated", tokens=len(pending), error=str(exc))
        generations = read_generations(self.sessions)
        previous = self._generations
        self._generations = generations
        if previous is None:
            # First read (or the first after failed ones at start): nothing to compare with.
            self.invalidate_kinds(KINDS)
            return
        moved = [kind for kind in KINDS if generations[kind] != previous[kind]]
        if moved:
            self.invalidate_kinds(moved)

    async def start(self) -> None:
        """Read the counters once (before serving), then poll every ``cache_poll_s``."""
        try:
            await asyncio.to_thread(self.poll_once)
        except SQLAlchemyError as exc:
            log.warning("cache_poll_failed", error=type(exc).__name__)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="instance-cache-poll")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await asyncio.to_thread(self.poll_once)
            except SQLAlchemyError as exc:
                # Entries still expire by their TTL; the next poll tries again.
                log.warning("cache_poll_failed", error=type(exc).__name__)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Uses not written yet: one last try, so a restart loses none.
        with contextlib.suppress(SQLAlchemyError):
            pending = self.last_used.take()
            if pending:
                await asyncio.to_thread(touch_many, self.sessions, pending)


def principal_usable(principal: Principal) -> bool:
    """A cached principal whose token has expired meanwhile goes back to the database (which
    answers 401 expired)."""
    return not principal.expired(utcnow())
