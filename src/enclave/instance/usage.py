"""AI usage: requests, errors, tokens and latency per user, feature and model.

Recording is in memory and costs one dictionary update per request: :class:`UsageRecorder`
adds each request to a counter keyed by (minute, user, feature, model, source), and a
background task (:func:`run_flusher`) writes the counters in one batch every
``instance.usage_flush_s`` — never a database write on the request path. The buffer is bounded
(``instance.usage_max_keys`` distinct keys); what does not fit is dropped and counted
(``enclave_instance_usage_dropped_requests_total``).

Every path is recorded once:

* the instance's own AI endpoints (code suggestions, chat, ``/api/v4/ai/<feature>``, GraphQL
  ``aiAction``) by the request middleware, from the ``feature``/``model``/token fields the
  endpoint put in its log line (GraphQL records when its background answer ends);
* the paths that reach the gateway directly with a user's token (direct access, the
  OpenAI-compatible API) by the gateway, which pushes its counters to
  ``POST /api/v4/internal/ai/usage`` (:mod:`enclave.instance.api.usage`). The gateway counts
  only tokens minted for users, never the instance's own tokens, so nothing is counted twice.
  It knows users by their pseudonym (``X-Gitlab-Global-User-Id``), mapped back here at flush.

:func:`usage_report` reads the table grouped by user, feature, model and/or day.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import QueryableAttribute, Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from enclave.common.logging import get_logger
from enclave.instance.db.models import AiUsage, User
from enclave.instance.gateway_client import pseudonymous_user_id

log = get_logger(__name__)

GROUPS: Final = ("user", "feature", "model", "day")
SOURCE_INSTANCE: Final = "instance"
SOURCE_GATEWAY: Final = "gateway"


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One line of a usage report; a field is None when the report is not grouped by it."""

    user_id: int | None
    username: str | None
    feature: str | None
    model: str | None
    day: date | None
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    latency_ms_avg: float


@dataclass(slots=True)
class Counts:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms_total: int = 0

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.latency_ms_total += other.latency_ms_total


@dataclass(frozen=True, slots=True)
class UsageKey:
    minute: int  # minutes since the epoch
    user_id: int | None
    pseudonym: str | None  # the gateway's name for the user, until the flush maps it
    feature: str
    model: str | None
    source: str


class UsageObserver(Protocol):
    """Who else hears of recorded usage: the Prometheus metrics (``instance/metrics.py``)."""

    def observe_usage(self, feature: str, model: str | None, counts: Counts) -> None: ...

    def usage_dropped(self, requests: int) -> None: ...


class UsageRecorder:
    """The in-memory buffer (module docstring). Thread-safe: the event loop records, the
    flush swaps the buffer from a worker thread."""

    def __init__(self, *, max_keys: int, observer: UsageObserver | None = None) -> None:
        self.max_keys = max_keys
        self.dropped = 0  # requests that did not fit in the buffer
        self._observer = observer
        self._buffer: dict[UsageKey, Counts] = {}
        self._lock = threading.Lock()
        self._users_by_pseudonym: dict[str, int] = {}

    def record(
        self,
        *,
        feature: str,
        model: str | None,
        counts: Counts,
        user_id: int | None = None,
        pseudonym: str | None = None,
        source: str = SOURCE_INSTANCE,
        at: float | None = None,
    ) -> None:
        moment = time.time() if at is None else at
        key = UsageKey(int(moment // 60), user_id, pseudonym, feature, model, source)
        with self._lock:
            current = self._buffer.get(key)
            if current is None:
                if len(self._buffer) >= self.max_keys:
                    self._drop(counts.requests)
                    return
                current = self._buffer[key] = Counts()
            current.add(counts)
        if self._observer is not None:
            self._observer.observe_usage(feature, model, counts)

    def _drop(self, requests: int) -> None:
        self.dropped += requests
        if self._observer is not None:
            self._observer.usage_dropped(requests)

    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def _take(self) -> dict[UsageKey, Counts]:
        with self._lock:
            taken, self._buffer = self._buffer, {}
        return taken

    def _put_back(self, taken: dict[UsageKey, Counts]) -> None:
        """After a failed write: keep what fits for the next flush, count the rest."""
        with self._lock:
            for key, counts in taken.items():
                current = self._buffer.get(key)
                if current is None:
                    if len(self._buffer) >= self.max_keys:
                        self._drop(counts.requests)
                        continue
                    current = self._buffer[key] = Counts()
                current.add(counts)

    def _user_ids(self, session: Session, salt: bytes, pseudonyms: set[str]) -> dict[str, int]:
        missing = pseudonyms - self._users_by_pseudonym.keys()
        if missing:  # a user seen for the first time: recompute the map once per flush
            ids = session.scalars(select(User.id)).all()
            self._users_by_pseudonym = {pseudonymous_user_id(salt, uid): uid for uid in ids}
        return self._users_by_pseudonym

    def flush(self, sessions: sessionmaker[Session], salt: bytes) -> int:
        """Write the buffer in one transaction; returns the rows written. Blocking (call it
        from a thread). On failure the counts go back into the buffer (what fits)."""
        taken = self._take()
        if not taken:
            return 0
        try:
            with sessions() as session, session.begin():
                pseudonyms = {k.pseudonym for k in taken if k.pseudonym is not None}
                users = self._user_ids(session, salt, pseudonyms) if pseudonyms else {}
                for key, counts in taken.items():
                    start = datetime.fromtimestamp(key.minute * 60, UTC)
                    user_id = key.user_id
                    if user_id is None and key.pseudonym is not None:
                        user_id = users.get(key.pseudonym)  # None: a user since deleted
                    session.add(
                        AiUsage(
                            period_start=start,
                            day=start.date(),
                            user_id=user_id,
                            feature=key.feature,
                            model=key.model,
                            source=key.source,
                            requests=counts.requests,
                            errors=counts.errors,
                            input_tokens=counts.input_tokens,
                            output_tokens=counts.output_tokens,
                            latency_ms_total=counts.latency_ms_total,
                        )
                    )
        except Exception as exc:
            self._put_back(taken)
            log.error("usage_flush_failed", error=str(exc), pending=len(taken))
            return 0
        return len(taken)


async def run_flusher(
    recorder: UsageRecorder, sessions: sessionmaker[Session], salt: bytes, interval_s: float
) -> None:
    """Flush every ``interval_s`` until cancelled; a last flush on the way out."""
    try:
        while True:
            await asyncio.sleep(interval_s)
            await run_in_threadpool(recorder.flush, sessions, salt)
    finally:
        # Shielded from the cancellation that stops the loop, so the last minute is kept.
        await asyncio.shield(asyncio.to_thread(recorder.flush, sessions, salt))


# --- recording from a request's log fields ---------------------------------------------------


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def counts_of(fields: dict[str, Any], *, status: int, seconds: float) -> Counts:
    """One request's counts from the fields its endpoint annotated (tokens when known)."""
    return Counts(
        requests=1,
        errors=1 if status >= 400 or status == 0 else 0,
        input_tokens=_int(fields.get("input_tokens")),
        output_tokens=_int(fields.get("output_tokens")),
        latency_ms_total=round(seconds * 1000),
    )


def record_request(
    recorder: UsageRecorder, state: dict[str, Any], *, status: int, seconds: float
) -> None:
    """Record a request of the instance's AI endpoints, if it was one (it named a feature and
    a model) and its user is known; called when the response ended."""
    fields = state.get("log_fields") or {}
    feature, model, user_id = fields.get("feature"), fields.get("model"), state.get("user_id")
    if not isinstance(feature, str) or not isinstance(model, str) or not isinstance(user_id, int):
        return
    counts = counts_of(fields, status=status, seconds=seconds)
    recorder.record(feature=feature, model=model, counts=counts, user_id=user_id)


# --- reports --------------------------------------------------------------------------------


def usage_report(
    session: Session,
    *,
    since: datetime,
    until: datetime | None = None,
    group_by: Sequence[str] = ("feature", "model"),
    user_id: int | None = None,
) -> list[UsageRow]:
    """Usage from ``since`` (inclusive) to ``until`` (exclusive; now when None), one row per
    group, ordered by the groups; minute precision (the recording granularity)."""
    unknown = [g for g in group_by if g not in GROUPS]
    if unknown:
        raise ValueError(f"cannot group usage by {', '.join(unknown)}; use {', '.join(GROUPS)}")
    groups = list(dict.fromkeys(group_by))
    columns: dict[str, QueryableAttribute[Any]] = {
        "user": AiUsage.user_id,
        "feature": AiUsage.feature,
        "model": AiUsage.model,
        "day": AiUsage.day,
    }
    keys = [columns[g].label(g) for g in groups]
    if "user" in groups:
        keys.append(User.username.label("username"))
    sums = [
        func.sum(AiUsage.requests).label("requests"),
        func.sum(AiUsage.errors).label("errors"),
        func.sum(AiUsage.input_tokens).label("input_tokens"),
        func.sum(AiUsage.output_tokens).label("output_tokens"),
        func.sum(AiUsage.latency_ms_total).label("latency_ms_total"),
    ]
    query = select(*keys, *sums).where(AiUsage.period_start >= since)
    if "user" in groups:
        query = query.outerjoin(User, User.id == AiUsage.user_id)
    if until is not None:
        query = query.where(AiUsage.period_start < until)
    if user_id is not None:
        query = query.where(AiUsage.user_id == user_id)
    group_columns: list[QueryableAttribute[Any]] = [columns[g] for g in groups]
    if "user" in groups:
        group_columns.append(User.username)
    if group_columns:
        query = query.group_by(*group_columns).order_by(*[columns[g] for g in groups])
    rows: list[UsageRow] = []
    for row in session.execute(query).mappings():
        requests = int(row["requests"] or 0)
        if requests == 0:
            continue  # no rows matched: the aggregate of nothing
        day = row.get("day")
        rows.append(
            UsageRow(
                user_id=row.get("user"),
                username=row.get("username"),
                feature=row.get("feature"),
                model=row.get("model"),
                day=date.fromisoformat(day) if isinstance(day, str) else day,
                requests=requests,
                errors=int(row["errors"] or 0),
                input_tokens=int(row["input_tokens"] or 0),
                output_tokens=int(row["output_tokens"] or 0),
                latency_ms_avg=round(int(row["latency_ms_total"] or 0) / requests, 1),
            )
        )
    return rows


def row_view(row: UsageRow) -> dict[str, Any]:
    """A report row as JSON (the API and the CLI)."""
    return {
        "user_id": row.user_id,
        "username": row.username,
        "feature": row.feature,
        "model": row.model,
        "day": row.day.isoformat() if row.day else None,
        "requests": row.requests,
        "errors": row.errors,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "latency_ms_avg": row.latency_ms_avg,
    }
