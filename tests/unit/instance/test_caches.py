"""The instance's in-memory caches (caches.py) and the change counters behind them
(db/changes.py): what a cached request skips, and how soon a change is honoured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from enclave.config import InstanceSettings
from enclave.instance.api import deps, forwarding
from enclave.instance.caches import InstanceCaches, TtlCache
from enclave.instance.db import FeatureSetting, User, make_engine, make_session_factory
from enclave.instance.db.changes import AUTH, MODELS, read_generations
from enclave.instance.db.models import PersonalAccessToken
from tests.unit.instance.conftest import (
    FakeGateway,
    LiveInstance,
    make_settings,
)
from tests.unit.instance.test_forwarding import (  # noqa: F401 - restore_features is a fixture
    COMPLETION_BODY,
    post,
    restore_features,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the cache itself -------------------------------------------------------------------------


def test_entries_live_for_their_ttl_only() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(10.0, clock=clock)
    cache.put("a", 1, epoch=cache.epoch())
    clock.now += 9.9
    assert cache.get("a") == 1
    clock.now += 0.1
    assert cache.get("a") is None
    assert len(cache) == 0


def test_a_read_that_raced_an_invalidation_is_not_stored() -> None:
    cache: TtlCache[str, int] = TtlCache(10.0)
    epoch = cache.epoch()  # a request starts reading the database ...
    cache.clear()  # ... an administrator's change commits meanwhile ...
    cache.put("a", 1, epoch=epoch)  # ... and the (maybe old) row must not be cached
    assert cache.get("a") is None
    cache.put("a", 2, epoch=cache.epoch())
    assert cache.get("a") == 2


def test_ttl_zero_turns_the_cache_off_and_size_is_bounded() -> None:
    off: TtlCache[str, int] = TtlCache(0.0)
    off.put("a", 1, epoch=off.epoch())
    assert off.get("a") is None
    small: TtlCache[int, int] = TtlCache(10.0, max_entries=3)
    for key in range(10):
        small.put(key, key, epoch=small.epoch())
        assert len(small) <= 3
    assert small.get(9) == 9


# -- change counters --------------------------------------------------------------------------


@pytest.fixture()
def database(tmp_path: Path, db_backend: Any) -> Iterator[tuple[Engine, str]]:
    from enclave.instance.bootstrap import initialise

    settings = make_settings(tmp_path / "data")
    initialise(settings)
    engine = make_engine(settings.database_url)
    yield engine, settings.database_url
    engine.dispose()


def _admin(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalars(select(User.id).where(User.is_admin.is_(True))).first() or 0


def test_changes_bump_their_kind_in_the_same_transaction(database: tuple[Engine, str]) -> None:
    engine, _ = database
    sessions = make_session_factory(engine)
    before = read_generations(sessions)
    with sessions() as session, session.begin():
        user = session.get(User, _admin(sessions))
        assert user is not None
        user.name = "Renamed Admin"
    after = read_generations(sessions)
    assert after[AUTH] == before[AUTH] + 1 and after[MODELS] == before[MODELS]
    # Setting an attribute to the value it has is no change.
    with sessions() as session, session.begin():
        user = session.get(User, _admin(sessions))
        assert user is not None
        user.name = "Renamed Admin"
    assert read_generations(sessions) == after
    # A rolled back change bumps nothing.
    with pytest.raises(RuntimeError), sessions() as session, session.begin():
        session.add(FeatureSetting(feature="duo_chat", provider="disabled"))
        session.flush()
        raise RuntimeError("abort")
    assert read_generations(sessions) == after
    with sessions() as session, session.begin():
        session.add(FeatureSetting(feature="duo_chat", provider="disabled"))
    assert read_generations(sessions)[MODELS] == after[MODELS] + 1


def test_a_change_in_another_process_is_seen_by_the_poll_and_one_here_at_once(
    database: tuple[Engine, str],
) -> None:
    engine, url = database
    here = make_session_factory(engine)
    caches = InstanceCaches(here, InstanceSettings())
    caches.poll_once()  # the baseline, as at start
    # "Another process": its own engine and session factory on the same database.
    other_engine = make_engine(url)
    try:
        elsewhere = make_session_factory(other_engine)
        caches.auth.put("digest", object(), epoch=caches.auth.epoch())  # type: ignore[arg-type]
        caches.routes.put("feature", object(), epoch=caches.routes.epoch())  # type: ignore[arg-type]
        with elsewhere() as session, session.begin():
            token = session.scalars(select(PersonalAccessToken)).first()
            assert token is not None
            token.revoked = True
        # Not seen here until the poll (it runs in the background every cache_poll_s).
        assert caches.auth.get("digest") is not None
        caches.poll_once()
        assert caches.auth.get("digest") is None
        assert caches.routes.get("feature") is not None  # another kind: kept
        # A change made through this process's sessions is dropped when it commits.
        with here() as session, session.begin():
            session.add(FeatureSetting(feature="duo_chat", provider="disabled"))
        assert caches.routes.get("feature") is None
    finally:
        other_engine.dispose()


# -- a cached request -------------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.statements = 0
        self.thread_hops = 0


@pytest.fixture()
def counted(instance: LiveInstance, monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    counter = Counter()

    def on_execute(*args: Any) -> None:
        counter.statements += 1

    original = deps.run_in_threadpool

    async def hop(func: Any, *args: Any, **kwargs: Any) -> Any:
        counter.thread_hops += 1
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(deps, "run_in_threadpool", hop)
    monkeypatch.setattr(forwarding, "run_in_threadpool", hop)
    event.listen(instance.ctx.engine, "before_cursor_execute", on_execute)
    yield counter
    event.remove(instance.ctx.engine, "before_cursor_execute", on_execute)


def test_a_cached_completion_touches_neither_the_database_nor_the_thread_pool(
    instance: LiveInstance, fresh_gateway: FakeGateway, counted: Counter
) -> None:
    instance.ctx.caches.invalidate_kinds((AUTH, MODELS))
    assert post(instance, COMPLETION_BODY).status_code == 200  # fills the caches
    assert counted.statements > 0 and counted.thread_hops == 2  # the PAT, the model
    counted.statements = counted.thread_hops = 0
    for _ in range(3):
        response = post(instance, COMPLETION_BODY)
        assert response.status_code == 200, response.text
    assert counted.statements == 0
    assert counted.thread_hops == 0
    assert len(fresh_gateway.requests) == 4


def test_a_revoked_token_is_refused_at_once_by_the_process_that_revoked_it(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    token = instance.new_token(("api",))
    assert post(instance, COMPLETION_BODY, token=token).status_code == 200
    assert post(instance, COMPLETION_BODY, token=token).status_code == 200  # cached now
    response = httpx.delete(
        instance.url + "/api/v4/personal_access_tokens/self",
        headers={"PRIVATE-TOKEN": token},
        timeout=20,
    )
    assert response.status_code == 204
    assert post(instance, COMPLETION_BODY, token=token).status_code == 401


@pytest.mark.usefixtures("restore_features")
def test_disabling_a_feature_takes_effect_on_the_next_request(
    instance: LiveInstance, fresh_gateway: FakeGateway
) -> None:
    assert post(instance, COMPLETION_BODY).status_code == 200  # the model is cached
    instance.set_feature("code_completions", "disabled")
    response = post(instance, COMPLETION_BODY)
    assert response.status_code == 403
    assert "disabled" in response.json()["message"]


def test_cached_uses_reach_last_used_at_in_the_background(database: tuple[Engine, str]) -> None:
    engine, _ = database
    sessions = make_session_factory(engine)
    clock = Clock()
    caches = InstanceCaches(sessions, InstanceSettings(), clock=clock)
    with sessions() as session:
        token = session.scalars(select(PersonalAccessToken)).first()
        assert token is not None and token.last_used_at is None
        token_id = token.id
    caches.last_used.used(token_id)
    caches.last_used.used(token_id)  # queued once
    caches.poll_once()  # the background task's turn: one write transaction
    with sessions() as session:
        touched = session.get(PersonalAccessToken, token_id)
        assert touched is not None and touched.last_used_at is not None
    # Within the minute the token is not queued again; after it, it is.
    clock.now += 30
    caches.last_used.used(token_id)
    assert caches.last_used.take() == set()
    clock.now += 31
    caches.last_used.used(token_id)
    assert caches.last_used.take() == {token_id}
