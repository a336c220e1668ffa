"""Alembic environment for the instance database.

Normally run through :func:`enclave.instance.db.migrate.upgrade`, which passes an open
connection in ``config.attributes["connection"]``. Developers can also use the Alembic CLI with
the ``alembic.ini`` next to this file (``alembic -c src/enclave/instance/migrations/alembic.ini
revision --autogenerate -m "..."``); the database URL then comes from Enclave's settings.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from enclave.instance.db.engine import make_engine
from enclave.instance.db.models import Base

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from enclave.config import load_settings  # only for CLI use; keeps imports light

    return load_settings().database_url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rewrites the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        # Our SQLite engine issues real BEGINs (db/engine.py), so its DDL is transactional
        # too: a failed migration leaves no half-made schema behind.
        transactional_ddl=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit SQL instead of running it (``alembic upgrade head --sql``), for DBA review."""
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    engine = make_engine(_database_url())
    try:
        with engine.connect() as own_connection:
            _configure(own_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
