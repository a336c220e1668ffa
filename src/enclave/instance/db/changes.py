"""Which cached kinds a transaction changes, told to every instance process.

The instance keeps verified tokens, feature settings and models in memory
(``instance/caches.py``). Whatever writes the rows behind them — the admin API, the GraphQL
API, ``enclave`` admin commands in another process — goes through an ORM session made by
:func:`enclave.instance.db.engine.make_session_factory`, which carries these hooks:

* before each flush, the kinds whose rows the flush adds, changes or deletes get their
  ``cache_generations`` row bumped, in the same transaction (so the bump commits or rolls
  back with the change). Other processes see the new generation when they next poll.
* after the commit, the callbacks registered with :func:`on_commit` on the same session
  factory are told the kinds at once: the process that made a change never serves the old
  state afterwards.

Bulk ``UPDATE`` statements bypass the ORM and are not tracked: the only one on a tracked table
is the ``last_used_at`` touch, which changes nothing a cache holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any, Final

from sqlalchemy import Connection, event, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from enclave.instance.db.models import (
    AiSetting,
    CacheGeneration,
    FeatureSetting,
    PersonalAccessToken,
    SelfHostedModel,
    User,
)

AUTH: Final = "auth"  # personal access tokens and users
MODELS: Final = "models"  # feature settings, self-hosted models, AI settings
KINDS: Final = (AUTH, MODELS)

_KIND_OF: Final[dict[type, str]] = {
    PersonalAccessToken: AUTH,
    User: AUTH,
    FeatureSetting: MODELS,
    SelfHostedModel: MODELS,
    AiSetting: MODELS,
}

# Session.info keys: kinds bumped in the current transaction, and the commit callbacks (a list
# shared by every session of one factory: sessionmaker copies its info dict shallowly).
_CHANGED: Final = "enclave.changed_kinds"
_CALLBACKS: Final = "enclave.change_callbacks"

ChangeCallback = Callable[[frozenset[str]], None]


def changed_kinds(session: Session) -> set[str]:
    """The kinds the pending flush of ``session`` adds, changes or deletes rows of."""
    kinds: set[str] = set()
    for obj in chain(session.new, session.deleted):
        kind = _KIND_OF.get(type(obj))
        if kind is not None:
            kinds.add(kind)
    for obj in session.dirty:
        kind = _KIND_OF.get(type(obj))
        # dirty lists every object an attribute was set on, changed or not.
        if kind is not None and session.is_modified(obj, include_collections=False):
            kinds.add(kind)
    return kinds


def bump(connection: Connection, kinds: Iterable[str]) -> None:
    """Add one to the generation of each of ``kinds`` (in a fixed order: no lock cycles)."""
    for kind in sorted(set(kinds)):
        result = connection.execute(
            update(CacheGeneration)
            .where(CacheGeneration.kind == kind)
            .values(generation=CacheGeneration.generation + 1)
        )
        if not result.rowcount:
            connection.execute(insert(CacheGeneration).values(kind=kind, generation=1))


def read_generations(sessions: sessionmaker[Session]) -> dict[str, int]:
    """Every kind's generation (0 for a kind without a row yet). Blocking (database)."""
    with sessions() as session, session.begin():
        rows = session.execute(select(CacheGeneration.kind, CacheGeneration.generation)).all()
    found = {kind: generation for kind, generation in rows}
    return {kind: int(found.get(kind, 0)) for kind in KINDS}


def _before_flush(session: Session, flush_context: Any, instances: Any) -> None:
    bumped: set[str] = session.info.setdefault(_CHANGED, set())
    kinds = changed_kinds(session) - bumped
    if kinds:
        bump(session.connection(), kinds)
        bumped.update(kinds)


def _after_commit(session: Session) -> None:
    kinds = frozenset(session.info.pop(_CHANGED, ()))
    if not kinds:
        return
    for callback in session.info.get(_CALLBACKS, ()):
        callback(kinds)


def _after_rollback(session: Session, previous_transaction: Any) -> None:
    session.info.pop(_CHANGED, None)


def track_changes(sessions: sessionmaker[Session]) -> None:
    """Install the hooks on a session factory (``make_session_factory`` does)."""
    sessions.kw.setdefault("info", {}).setdefault(_CALLBACKS, [])
    event.listen(sessions, "before_flush", _before_flush)
    event.listen(sessions, "after_commit", _after_commit)
    event.listen(sessions, "after_soft_rollback", _after_rollback)


def on_commit(sessions: sessionmaker[Session], callback: ChangeCallback) -> None:
    """Call ``callback(kinds)`` after every commit of a session of ``sessions`` that changed
    rows of ``kinds`` (in the committing thread: keep it short and thread-safe)."""
    callbacks: list[ChangeCallback] = sessions.kw.setdefault("info", {}).setdefault(_CALLBACKS, [])
    callbacks.append(callback)
