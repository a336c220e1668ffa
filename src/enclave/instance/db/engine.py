"""Engine and session factory for the instance database.

SQLite (default) gets the settings a small production database needs: WAL (readers never block
the writer), foreign keys on (SQLite leaves them off), a busy timeout instead of instant
"database is locked" errors, and real ``BEGIN`` statements so transactions, including
migrations, are atomic (the stdlib driver otherwise starts them lazily and runs DDL outside
any transaction). The database file is created 0600: it holds token digests and encrypted keys.

Write transactions must say so (:func:`transaction` with ``write=True``): SQLite then starts
them with ``BEGIN IMMEDIATE``, which takes the write lock up front and waits for it up to the
busy timeout. A deferred transaction that reads and then writes cannot wait: when another
writer committed after its read, SQLite answers "database is locked" at once (the busy timeout
does not apply to that lock upgrade), which failed 16 % of concurrent token creations with two
clients and 66 % with eight. Past the busy timeout the API answers 503 "database is busy" with
``Retry-After`` (see ``api/errors.py``).

PostgreSQL (``postgresql+psycopg://…``) needs nothing special beyond ``pool_pre_ping``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from enclave.instance.files import PRIVATE_FILE_MODE, ensure_private_dir

# Default; the instance passes settings.instance.database_busy_timeout_s.
SQLITE_BUSY_TIMEOUT_MS = 5000
# Execution option read by the ``begin`` hook: "IMMEDIATE" takes the write lock up front
# (migrations, read-then-write bootstrap steps) so two writers serialise instead of failing.
SQLITE_BEGIN_OPTION = "sqlite_begin"


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or url.query.get("mode") == "memory"


def _prepare_sqlite_file(url: URL) -> None:
    if _sqlite_memory(url) or url.database is None or url.database.startswith("file:"):
        return
    path = Path(url.database)
    if not path.parent.exists():
        ensure_private_dir(path.parent)
    if not path.exists():
        # Create it ourselves so it is 0600 from the first byte (SQLite would use the umask);
        # SQLite gives its -wal and -shm files the same mode as the database file.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE)
        os.close(fd)


def _on_sqlite_connect(busy_timeout_ms: int) -> Any:
    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        _configure_sqlite(dbapi_connection, busy_timeout_ms)

    return on_connect


def _configure_sqlite(dbapi_connection: Any, busy_timeout_ms: int) -> None:
    # Hand transaction control to SQLAlchemy (see the ``begin`` hook below).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        # FULL: writes here are rare (admin changes, last_used_at once a minute), so losing
        # none of them on power loss costs nothing measurable.
        cursor.execute("PRAGMA synchronous = FULL")
    finally:
        cursor.close()


def _on_sqlite_begin(connection: Any) -> None:
    mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def make_engine(
    database_url: str, *, echo: bool = False, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS
) -> Engine:
    """An engine for ``database_url`` with the per-backend settings described above.

    ``busy_timeout_ms``: how long a SQLite statement waits for a lock before "database is
    locked" (PostgreSQL waits for row locks without a bound, as configured on its server).
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        _prepare_sqlite_file(url)
        kwargs: dict[str, Any] = {
            # Requests run in a thread pool; SQLAlchemy's pool keeps one user per connection.
            "connect_args": {"check_same_thread": False},
        }
        if _sqlite_memory(url):
            kwargs["poolclass"] = StaticPool  # one shared connection or each sees an empty DB
        engine = create_engine(url, echo=echo, **kwargs)
        event.listen(engine, "connect", _on_sqlite_connect(busy_timeout_ms))
        event.listen(engine, "begin", _on_sqlite_begin)
        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects returned from a finished transaction stay readable.
    sessions = sessionmaker(engine, expire_on_commit=False)
    # Every change to what the instance caches bumps its generation (db/changes.py).
    from enclave.instance.db.changes import track_changes

    track_changes(sessions)
    return sessions


@contextmanager
def transaction(sessions: sessionmaker[Session], *, write: bool = False) -> Iterator[Session]:
    """A session in one transaction, committed at the end (rolled back on an exception).

    ``write=True`` for every transaction that may write: on SQLite it begins ``IMMEDIATE``
    (see the module docstring); elsewhere the option is ignored.
    """
    with sessions() as session, session.begin():
        if write:
            # The first connection() call of the transaction decides how it begins.
            session.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        yield session
