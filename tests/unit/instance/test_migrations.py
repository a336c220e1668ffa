"""Migrations: an empty database, a database made by the previous release (0001), and the
downgrade of the newest migration; on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from enclave.instance.db import (
    AiSetting,
    AuditEvent,
    Base,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    make_session_factory,
    upgrade,
)
from enclave.instance.pats import AI_SCOPES, authenticate, token_digest
from tests.unit.instance.conftest import Backend

PREVIOUS_RELEASE = "0001"
TOKEN = "enclpat-" + "p" * 43
NOW = datetime(2025, 11, 1, 12, 0, tzinfo=UTC)


def _fill_previous_release(url: str) -> None:
    """What 0.1 (schema 0001) wrote, with plain SQL: independent of today's models."""
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO instance_settings (id, instance_id, user_id_salt, created_at) "
                "VALUES (1, :iid, :salt, :now)"
            ),
            {"iid": uuid.uuid4().hex if engine.dialect.name == "sqlite" else uuid.uuid4(),
             "salt": b"s" * 32, "now": NOW},
        )  # fmt: skip
        connection.execute(
            text(
                "INSERT INTO users (id, username, name, email, is_admin, blocked, created_at) "
                "VALUES (1, 'root', 'Administrator', 'admin@example.com', true, false, :now)"
            ),
            {"now": NOW},
        )
        connection.execute(
            text(
                "INSERT INTO personal_access_tokens (id, user_id, name, token_digest, "
                "token_prefix, scopes, revoked, created_at) VALUES (1, 1, 'old', :digest, "
                "'enclpat-pppp', :scopes, false, :now)"
            ),
            {"digest": token_digest(TOKEN), "scopes": '["api", "ai_features"]', "now": NOW},
        )
        connection.execute(
            text(
                "INSERT INTO ai_self_hosted_models (id, name, family, provider, endpoint, "
                "identifier, created_at, updated_at) VALUES (1, 'old-model', 'general', 'api', "
                "'http://127.0.0.1:1/v1', 'custom_openai/smollm2', :now, :now)"
            ),
            {"now": NOW},
        )
        connection.execute(
            text(
                "INSERT INTO ai_feature_settings (id, feature, provider, self_hosted_model_id, "
                "created_at, updated_at) VALUES (1, 'code_completions', 'self_hosted', 1, :now, "
                ":now)"
            ),
            {"now": NOW},
        )
        connection.execute(
            text(
                "INSERT INTO audit_events (id, author_id, action, target, details, created_at) "
                "VALUES (1, 1, 'user_created', 'user/1', '{\"username\": \"root\"}', :now)"
            ),
            {"now": NOW},
        )
    engine.dispose()


def test_empty_database_upgrades_to_head(tmp_path: Path, db_backend: Backend) -> None:
    url = db_backend.new_database_url(tmp_path)
    upgrade(url)
    engine = make_engine(url)
    assert current_revision(engine) == head_revision()
    assert "ai_settings" in inspect(engine).get_table_names()
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_previous_release_database_upgrades_and_keeps_its_data(
    tmp_path: Path, db_backend: Backend
) -> None:
    url = db_backend.new_database_url(tmp_path)
    upgrade(url, PREVIOUS_RELEASE)
    _fill_previous_release(url)
    upgrade(url)
    engine = make_engine(url)
    assert current_revision(engine) == head_revision()
    sessions = make_session_factory(engine)
    with sessions() as session:
        principal = authenticate(session, TOKEN, accepted_scopes=AI_SCOPES)
        assert principal.username == "root" and principal.is_admin
        event = session.get(AuditEvent, 1)
        assert event is not None
        assert (event.action, event.details, event.author_name) == (
            "user_created",
            {"username": "root"},
            None,
        )
        assert session.get(AiSetting, 1) is None  # "as configured" until an admin sets it
    with sessions() as session, session.begin():
        session.add(AiSetting(id=1, ai_gateway_timeout_seconds=120))
    engine.dispose()


def test_migrations_downgrade_to_the_previous_release_and_upgrade_again(
    tmp_path: Path, db_backend: Backend
) -> None:
    url = db_backend.new_database_url(tmp_path)
    upgrade(url, PREVIOUS_RELEASE)
    _fill_previous_release(url)
    upgrade(url)
    downgrade(url, PREVIOUS_RELEASE)
    engine = make_engine(url)
    assert current_revision(engine) == PREVIOUS_RELEASE
    inspector = inspect(engine)
    assert "ai_settings" not in inspector.get_table_names()
    columns = {c["name"] for c in inspector.get_columns("audit_events")}
    assert "author_name" not in columns and "ip_address" not in columns
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one() == 1
        assert connection.execute(text("SELECT count(*) FROM users")).scalar_one() == 1
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_fallback_model_migration_downgrades_and_upgrades_again(
    tmp_path: Path, db_backend: Backend
) -> None:
    """0003 adds ai_feature_settings.fallback_model_id (NULL for existing settings); its
    downgrade drops it and keeps the settings."""
    url = db_backend.new_database_url(tmp_path)
    upgrade(url, PREVIOUS_RELEASE)
    _fill_previous_release(url)
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as connection:
        assert (
            connection.execute(
                text("SELECT fallback_model_id FROM ai_feature_settings WHERE id = 1")
            ).scalar_one()
            is None
        )
        connection.execute(
            text(
                "INSERT INTO ai_self_hosted_models (id, name, family, provider, endpoint, "
                "identifier, created_at, updated_at) VALUES (2, 'spare', 'general', 'api', "
                "'http://127.0.0.1:2/v1', 'custom_openai/spare', :now, :now)"
            ),
            {"now": NOW},
        )
        connection.execute(text("UPDATE ai_feature_settings SET fallback_model_id = 2"))
    engine.dispose()
    downgrade(url, "0002")  # by name: later migrations sit on top of 0003
    engine = make_engine(url)
    assert current_revision(engine) == "0002"
    columns = {c["name"] for c in inspect(engine).get_columns("ai_feature_settings")}
    assert "fallback_model_id" not in columns
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT feature, self_hosted_model_id FROM ai_feature_settings")
        ).one()
        assert tuple(row) == ("code_completions", 1)
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    assert current_revision(engine) == head_revision()
    columns = {c["name"] for c in inspect(engine).get_columns("ai_feature_settings")}
    assert "fallback_model_id" in columns
    engine.dispose()


def test_cache_generations_migration_seeds_and_downgrades(
    db_backend: Backend, tmp_path: Path
) -> None:
    """0006 adds cache_generations with one row per cached kind at 0; its downgrade drops it."""
    url = db_backend.new_database_url(tmp_path)
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT kind, generation FROM cache_generations")).all()
    assert sorted(tuple(row) for row in rows) == [("auth", 0), ("models", 0)]
    engine.dispose()
    downgrade(url, "0003")
    engine = make_engine(url)
    assert "cache_generations" not in inspect(engine).get_table_names()
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    assert "cache_generations" in inspect(engine).get_table_names()
    engine.dispose()


def test_web_ui_migration_downgrades_and_upgrades_again(
    tmp_path: Path, db_backend: Backend
) -> None:
    """0004 adds users.password_hash, web_sessions and editor_keys; its downgrade drops them
    and keeps the users."""
    url = db_backend.new_database_url(tmp_path)
    upgrade(url, PREVIOUS_RELEASE)
    _fill_previous_release(url)
    upgrade(url)
    engine = make_engine(url)
    inspector = inspect(engine)
    assert {"web_sessions", "editor_keys"} <= set(inspector.get_table_names())
    assert "password_hash" in {c["name"] for c in inspector.get_columns("users")}
    engine.dispose()
    downgrade(url, "0003")
    engine = make_engine(url)
    inspector = inspect(engine)
    assert not {"web_sessions", "editor_keys"} & set(inspector.get_table_names())
    assert "password_hash" not in {c["name"] for c in inspector.get_columns("users")}
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM users")).scalar_one() == 1
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_usage_migration_downgrades_and_upgrades_again(tmp_path: Path, db_backend: Backend) -> None:
    """0005 adds the ai_usage table; its downgrade drops it and keeps everything else."""
    url = db_backend.new_database_url(tmp_path)
    upgrade(url)
    engine = make_engine(url)
    assert "ai_usage" in inspect(engine).get_table_names()
    engine.dispose()
    downgrade(url, "0003")
    engine = make_engine(url)
    assert current_revision(engine) == "0003"
    assert "ai_usage" not in inspect(engine).get_table_names()
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    assert "ai_usage" in inspect(engine).get_table_names()
    engine.dispose()


def test_vendored_gateway_url_migration_downgrades_and_upgrades_again(
    tmp_path: Path, db_backend: Backend
) -> None:
    """0007 adds ai_settings.vendored_ai_gateway_url (NULL: as configured); its downgrade
    drops it and keeps the other AI settings."""
    url = db_backend.new_database_url(tmp_path)
    upgrade(url, "0003")
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO ai_settings (id, ai_gateway_url, enabled_instance_verbose_ai_logs, "
                "updated_at) VALUES (1, 'http://gw.internal:5052', false, :now)"
            ),
            {"now": NOW},
        )
    engine.dispose()
    upgrade(url, "0007")
    engine = make_engine(url)
    with engine.begin() as connection:
        row = connection.execute(
            text("SELECT ai_gateway_url, vendored_ai_gateway_url FROM ai_settings")
        ).one()
        assert tuple(row) == ("http://gw.internal:5052", None)
        connection.execute(
            text("UPDATE ai_settings SET vendored_ai_gateway_url = 'https://shared.example'")
        )
    engine.dispose()
    downgrade(url, "0003")
    engine = make_engine(url)
    columns = {c["name"] for c in inspect(engine).get_columns("ai_settings")}
    assert "vendored_ai_gateway_url" not in columns
    with engine.connect() as connection:
        assert connection.execute(text("SELECT ai_gateway_url FROM ai_settings")).scalar_one() == (
            "http://gw.internal:5052"
        )
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    assert current_revision(engine) == head_revision()
    engine.dispose()
