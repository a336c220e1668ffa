"""The database layer: migrations on an empty SQLite file, SQLite settings, portable types."""

from __future__ import annotations

import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError, StatementError

from enclave.instance.db import (
    Base,
    FeatureSetting,
    InstanceSetting,
    User,
    current_revision,
    head_revision,
    make_engine,
    make_session_factory,
    upgrade,
)
from tests.unit.instance.conftest import Backend

HEAD = "0007"
TABLES = {
    "cache_generations",
    "instance_settings",
    "users",
    "personal_access_tokens",
    "ai_self_hosted_models",
    "ai_feature_settings",
    "audit_events",
    "ai_settings",
    "web_sessions",
    "editor_keys",
    "ai_usage",
    "deleted_users",
    "alembic_version",
}


@pytest.fixture()
def db_url(tmp_path: Path, db_backend: Backend) -> str:
    url = db_backend.new_database_url(tmp_path)
    upgrade(url)
    return url


def test_upgrade_creates_every_table_at_head(db_url: str) -> None:
    engine = make_engine(db_url)
    assert set(inspect(engine).get_table_names()) == TABLES
    assert current_revision(engine) == head_revision() == HEAD
    engine.dispose()


def test_upgrade_twice_is_a_no_op(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    assert current_revision(engine) == HEAD
    engine.dispose()


def test_models_and_migrations_agree(db_url: str) -> None:
    """A model change without a migration (or the reverse) fails here."""
    engine = make_engine(db_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


@pytest.mark.usefixtures("sqlite_only")
def test_sqlite_runs_with_wal_and_foreign_keys(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    engine.dispose()


@pytest.mark.usefixtures("sqlite_only")
def test_database_file_and_new_dir_are_private(db_url: str) -> None:
    path = Path(db_url.removeprefix("sqlite:///"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_foreign_keys_are_enforced(db_url: str) -> None:
    sessions = make_session_factory(make_engine(db_url))
    with pytest.raises(IntegrityError), sessions() as session, session.begin():
        session.add(
            FeatureSetting(
                feature="code_completions", provider="self_hosted", self_hosted_model_id=999
            )
        )


def test_self_hosted_feature_needs_a_model(db_url: str) -> None:
    sessions = make_session_factory(make_engine(db_url))
    with pytest.raises(IntegrityError), sessions() as session, session.begin():
        session.add(FeatureSetting(feature="code_completions", provider="self_hosted"))


def test_feature_provider_is_constrained(db_url: str) -> None:
    sessions = make_session_factory(make_engine(db_url))
    with pytest.raises(IntegrityError), sessions() as session, session.begin():
        session.add(FeatureSetting(feature="code_completions", provider="sometimes"))


def test_instance_settings_is_a_singleton(db_url: str) -> None:
    sessions = make_session_factory(make_engine(db_url))
    with sessions() as session, session.begin():
        session.add(InstanceSetting(id=1, instance_id=uuid.uuid4(), user_id_salt=b"s" * 32))
    with pytest.raises(IntegrityError), sessions() as session, session.begin():
        session.add(InstanceSetting(id=2, instance_id=uuid.uuid4(), user_id_salt=b"s" * 32))


def test_datetimes_come_back_aware_utc_and_uuids_as_uuid(db_url: str) -> None:
    sessions = make_session_factory(make_engine(db_url))
    instance_id = uuid.uuid4()
    moment = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    with sessions() as session, session.begin():
        session.add(
            InstanceSetting(instance_id=instance_id, user_id_salt=b"s" * 32, created_at=moment)
        )
    with sessions() as session:
        row = session.get(InstanceSetting, 1)
        assert row is not None
        assert row.instance_id == instance_id
        assert row.created_at == moment
        assert row.created_at.tzinfo is not None


def test_naive_datetimes_are_refused(db_url: str) -> None:
    sessions = make_session_factory(make_engine(db_url))
    naive = datetime(2025, 1, 1)  # no tzinfo, on purpose
    with (
        pytest.raises(StatementError, match="naive datetime"),
        sessions() as session,
        session.begin(),
    ):
        session.add(User(username="u", name="u", email="u@example.com", created_at=naive))


@pytest.mark.usefixtures("sqlite_only")
def test_in_memory_sqlite_works_for_tools() -> None:
    engine = make_engine("sqlite://")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()


@pytest.mark.usefixtures("sqlite_only")
def test_sqlite_ddl_is_transactional(db_url: str) -> None:
    """What makes a failed migration roll back entirely (the stdlib driver would autocommit)."""
    engine = make_engine(db_url)
    with pytest.raises(RuntimeError), engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE half_done (id INTEGER)")
        raise RuntimeError("migration failed midway")
    assert "half_done" not in inspect(engine).get_table_names()
    engine.dispose()
