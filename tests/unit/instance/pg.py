"""A throwaway PostgreSQL cluster for the instance tests.

The instance tests run on SQLite and on PostgreSQL (production). PostgreSQL is used when
``ENCLAVE_TEST_POSTGRES=1`` (then missing binaries fail the run: CI must not silently skip it) or
when the server binaries are installed (Debian package ``postgresql``:
``/usr/lib/postgresql/<version>/bin/initdb``); ``ENCLAVE_TEST_POSTGRES=0`` turns it off.
``ENCLAVE_TEST_POSTGRES_URL=postgresql+psycopg://user@host:port/db`` uses an existing server
instead (each test gets its own database created there).

The cluster lives in a temporary directory owned by the ``postgres`` user when the tests run
as root (``initdb`` refuses root), listens on a free 127.0.0.1 port with its unix socket in the
same directory, trusts local connections and runs with ``fsync=off`` (a test cluster need not
survive a power cut). It is stopped and deleted at the end of the session.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from enclave.common.net import free_port

ENV_SWITCH = "ENCLAVE_TEST_POSTGRES"
ENV_URL = "ENCLAVE_TEST_POSTGRES_URL"
# Read at import, before the test session strips ENCLAVE_* variables from the environment.
SWITCH = os.environ.get(ENV_SWITCH, "").strip().lower()
EXTERNAL_URL = os.environ.get(ENV_URL, "").strip() or None


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL server's bin directory (Debian layout), or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def postgres_wanted() -> tuple[bool, str]:
    """Whether to run the PostgreSQL variant, and why not when it is skipped."""
    if SWITCH in ("0", "false", "no", "off"):
        return False, f"{ENV_SWITCH}={SWITCH}"
    if EXTERNAL_URL:
        return True, ""
    if find_bin_dir() is not None:
        return True, ""
    if SWITCH in ("1", "true", "yes", "on"):
        return True, ""  # the fixture then fails loudly: CI asked for it
    return False, (
        "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb); install the "
        f"Debian package 'postgresql' or set {ENV_URL}"
    )


@dataclass
class PostgresServer:
    """A server the tests may create databases on."""

    admin_url: str
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _by_key: dict[str, str] = field(default_factory=dict)

    def create_database(self) -> str:
        name = f"enclave_test_{os.getpid()}_{next(self._counter)}"
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def database_for(self, key: str) -> str:
        """The same database for the same key (e.g. a data dir) within a session."""
        if key not in self._by_key:
            self._by_key[key] = self.create_database()
        return self._by_key[key]


class LocalCluster:
    """initdb + pg_ctl in a temporary directory."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="enclave-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.user = "postgres" if self._as_postgres else pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n{log}"
            )

    def start(self) -> PostgresServer:
        self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        return PostgresServer(f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/postgres")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    if EXTERNAL_URL:
        yield PostgresServer(EXTERNAL_URL)
        return
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError(
            f"{ENV_SWITCH}=1 but no PostgreSQL server binaries were found; install the Debian "
            "package 'postgresql' (apt-get install -y postgresql)"
        )
    cluster = LocalCluster(bin_dir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
