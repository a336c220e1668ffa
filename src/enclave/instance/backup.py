"""``enclave backup`` / ``enclave restore``: the instance database and the keys a restore needs.

A backup is one tar file (0600) holding:

* ``manifest.json``: format version, when, which Enclave, which database engine, the schema
  revision, the id of the secret key, and the SHA-256 of every other member;
* ``database/instance.sqlite3`` (SQLite's online backup API: a consistent copy while instances
  keep writing) or ``database/instance.pgdump`` (``pg_dump -Fc``);
* ``files/…``: what lives beside the database in the data dir and the database is useless
  without: ``keys/`` (the secret key that decrypts model API keys, the signing keys and their
  schedule, the gateway routes secret and the gateway's own signing key when they are there),
  ``model/api-key`` and ``admin-token.txt``.

The backup therefore holds secrets: treat it like the keys directory. When the secret key comes
from ``ENCLAVE_SECRET_KEY`` it is not in the data dir and not in the backup (the manifest keeps
only its id); the restore then checks that the environment holds that same key, because a
restore that cannot decrypt the model API keys is not a restore.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from glob import glob
from pathlib import Path, PurePosixPath
from typing import Any

from alembic.script import ScriptDirectory
from alembic.util import CommandError as AlembicError
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from enclave import __version__
from enclave.config import EnclaveSettings
from enclave.instance.db.engine import make_engine
from enclave.instance.db.migrate import alembic_config, current_revision, upgrade
from enclave.instance.db.models import SelfHostedModel, User
from enclave.instance.features import API_TOKEN_PURPOSE
from enclave.instance.files import ensure_private_dir, write_private_file
from enclave.instance.keys import KeyStore, KeyStoreError
from enclave.instance.secrets import (
    SecretDecryptError,
    SecretKeyError,
    key_id_of,
    load_existing_secret_box,
    parse_secret_key,
)

FORMAT = "enclave-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SQLITE_MEMBER = "database/instance.sqlite3"
PG_MEMBER = "database/instance.pgdump"
FILES_PREFIX = "files/"
# Paths under the data dir that go into a backup; directories are taken whole, minus lock and
# temporary files (they belong to the processes that made them).
DATA_FILES = ("keys", "model/api-key", "admin-token.txt")
# pg_dump/pg_restore may take long on a big database, but never forever.
PG_TOOL_TIMEOUT_S = 3600

Progress = Callable[[str], None]


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    engine: str
    database_bytes: int
    files: int


@dataclass(frozen=True)
class RestoreResult:
    engine: str
    files: int
    users: int
    model_keys_checked: int
    signing_kid: str


# --- shared helpers -------------------------------------------------------------------------


def _engine_name(database_url: str) -> str:
    backend = make_url(database_url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise BackupError(f"backups support SQLite and PostgreSQL, not {backend}")
    return backend


def _sqlite_path(database_url: str) -> Path:
    database = make_url(database_url).database
    if not database or database == ":memory:":
        raise BackupError("the SQLite database is in memory; there is nothing to back up")
    return Path(database)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _secret_key_id(settings: EnclaveSettings) -> str | None:
    """The id (a fingerprint, not the key) of the secret key in effect, if there is one."""
    try:
        if settings.secret_key is not None:
            key = parse_secret_key(settings.secret_key.get_secret_value())
        elif settings.secret_key_file.exists():
            key = parse_secret_key(settings.secret_key_file.read_text())
        else:
            return None
    except SecretKeyError as exc:
        raise BackupError(str(exc)) from None
    return key_id_of(key).hex()


def pg_tool(name: str) -> Path:
    """``pg_dump`` / ``pg_restore``: on PATH, else the newest Debian server's bin directory."""
    found = shutil.which(name)
    if found:
        return Path(found)
    candidates = sorted(
        glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if not candidates:
        raise BackupError(
            f"{name} not found: install PostgreSQL's client programs (Debian: "
            "postgresql-client) or put them on PATH"
        )
    return Path(candidates[-1])


def _libpq(database_url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL without the password, and the environment that carries it.

    The password never goes on a command line, where ``ps`` would show it.
    """
    url = make_url(database_url)
    env = dict(os.environ)  # PGSSLMODE, PGSSLROOTCERT, ... keep working
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _run_pg(command: list[str], env: dict[str, str], what: str) -> None:
    try:
        result = subprocess.run(  # noqa: S603 - fixed tool, arguments built here
            command, env=env, capture_output=True, text=True, timeout=PG_TOOL_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise BackupError(f"{what} did not finish within {PG_TOOL_TIMEOUT_S} s") from None
    if result.returncode != 0:
        # libpq messages name the server and database, never the password (it is in env).
        detail = result.stderr.strip().splitlines()[-3:]
        raise BackupError(f"{what} failed (exit {result.returncode}): {' '.join(detail)}")


def _data_files(data_dir: Path) -> Iterator[tuple[Path, str]]:
    """(file, path relative to the data dir) of everything a restore needs beside the database."""
    for entry in DATA_FILES:
        path = data_dir / entry
        if path.is_file():
            yield path, entry
        elif path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and not file.name.startswith(".") and file.suffix != ".lock":
                    yield file, file.relative_to(data_dir).as_posix()


# --- backup ---------------------------------------------------------------------------------


def _copy_sqlite(source: Path, target: Path) -> None:
    """SQLite's online backup: a consistent snapshot while other connections keep writing."""
    if not source.exists():
        raise BackupError(f"no SQLite database at {source}: is the data dir right?")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst, pages=1024)
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite backup of {source} failed: {exc}") from None
    finally:
        dst.close()
        src.close()


def _dump_postgres(database_url: str, target: Path) -> None:
    url, env = _libpq(database_url)
    command = [str(pg_tool("pg_dump")), "--format=custom", "--no-owner", f"--file={target}", url]
    _run_pg(command, env, "pg_dump")


def backup(settings: EnclaveSettings, output: Path, *, progress: Progress) -> BackupResult:
    """Write a backup of the configured instance to ``output`` (which must not exist)."""
    database_url = settings.database_url
    engine = _engine_name(database_url)
    if output.exists():
        raise BackupError(
            f"{output} exists; choose a new file name (backups are never overwritten)"
        )
    if not output.parent.is_dir():
        raise BackupError(f"directory {output.parent} does not exist")
    revision = _schema_revision(database_url)
    with tempfile.TemporaryDirectory(prefix="enclave-backup-") as scratch:
        database_file = Path(scratch) / "database"
        if engine == "sqlite":
            progress(f"Copying the SQLite database {_sqlite_path(database_url)} (online backup)")
            _copy_sqlite(_sqlite_path(database_url), database_file)
            member = SQLITE_MEMBER
        else:
            progress("Dumping the PostgreSQL database (pg_dump --format=custom)")
            _dump_postgres(database_url, database_file)
            member = PG_MEMBER
        size = database_file.stat().st_size
        progress(f"Database: {size:,} bytes")
        files = list(_data_files(settings.data_dir))
        checksums = {member: _sha256(database_file)}
        for path, relative in files:
            checksums[FILES_PREFIX + relative] = _sha256(path)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": int(time.time()),
            "enclave_version": __version__,
            "engine": engine,
            "schema_revision": revision,
            "secret_key_id": _secret_key_id(settings),
            "secret_key_in_backup": settings.secret_key is None
            and settings.secret_key_file.exists(),
            "sha256": checksums,
        }
        progress(f"Keys and files: {len(files)} ({', '.join(sorted({r for _, r in files}))})")
        _write_archive(output, manifest, [(database_file, member)], files)
    progress(f"Wrote {output} ({output.stat().st_size:,} bytes, mode 0600)")
    return BackupResult(output, engine, size, len(files))


def _schema_revision(database_url: str) -> str | None:
    engine = make_engine(database_url)
    try:
        return current_revision(engine)
    except SQLAlchemyError as exc:
        raise BackupError(f"cannot read the instance database: {type(exc).__name__}") from None
    finally:
        engine.dispose()


def _write_archive(
    output: Path,
    manifest: dict[str, Any],
    database: list[tuple[Path, str]],
    files: list[tuple[Path, str]],
) -> None:
    # Written under a temporary name, then renamed: a crash never leaves half a backup under
    # the real name, and the file is 0600 from its first byte.
    tmp = output.with_name(f".{output.name}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle, tarfile.open(fileobj=handle, mode="w:gz") as tar:
            data = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(data))
            for path, name in database:
                tar.add(path, arcname=name, recursive=False)
            for path, relative in files:
                tar.add(path, arcname=FILES_PREFIX + relative, recursive=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- restore --------------------------------------------------------------------------------


def _safe_member_name(name: str) -> bool:
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts and name == path.as_posix()


def _extract(archive: Path, scratch: Path) -> dict[str, Any]:
    """Unpack the manifest's members into ``scratch``, checking names, types and checksums."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            return _extract_members(tar, archive, scratch)
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise BackupError(f"{archive} is not a readable Enclave backup ({exc})") from None


def _extract_members(tar: tarfile.TarFile, archive: Path, scratch: Path) -> dict[str, Any]:
    try:
        manifest_file = tar.extractfile(MANIFEST)
        manifest = json.load(manifest_file) if manifest_file else None
    except (KeyError, ValueError, tarfile.TarError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{archive} is not an Enclave backup (no valid {MANIFEST})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(
            f"{archive} has backup format {manifest.get('format_version')!r}; this Enclave "
            f"reads format {FORMAT_VERSION}"
        )
    checksums = manifest.get("sha256")
    if not isinstance(checksums, dict) or not checksums:
        raise BackupError(f"{archive}: the manifest lists no files")
    for name, expected in checksums.items():
        if not isinstance(name, str) or not _safe_member_name(name):
            raise BackupError(f"{archive}: refusing the member name {name!r}")
        try:
            member = tar.getmember(name)
        except KeyError:
            raise BackupError(f"{archive} is incomplete: {name} is missing") from None
        source = tar.extractfile(member) if member.isfile() else None
        if source is None:
            raise BackupError(f"{archive}: {name} is not a regular file")
        target = scratch / name
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with source, target.open("wb") as handle:
            shutil.copyfileobj(source, handle)
        target.chmod(0o600)
        if _sha256(target) != expected:
            raise BackupError(f"{archive} is damaged: the checksum of {name} does not match")
    return manifest


def _existing_users(database_url: str) -> int:
    """How many users the target database holds (0 when it has no schema yet)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(User)) or 0)
    except SQLAlchemyError:
        return 0
    finally:
        engine.dispose()


def _check_secret_key(manifest: dict[str, Any], settings: EnclaveSettings) -> None:
    """A restore must be able to decrypt the model API keys: say so before touching anything."""
    backup_id = manifest.get("secret_key_id")
    if backup_id is None:
        return
    if settings.secret_key is not None:
        if _secret_key_id(settings) != backup_id:
            where = (
                "its key is in the backup: unset ENCLAVE_SECRET_KEY to use it"
                if manifest.get("secret_key_in_backup")
                else "set ENCLAVE_SECRET_KEY to the key that was in use when the backup was made"
            )
            raise BackupError(
                "ENCLAVE_SECRET_KEY is not the secret key of the backup, so the restored "
                f"model API keys could not be decrypted; {where}"
            )
    elif not manifest.get("secret_key_in_backup"):
        raise BackupError(
            "the backup was made with ENCLAVE_SECRET_KEY, which is never written into a backup: "
            "set ENCLAVE_SECRET_KEY to that key (kept separately) and run the restore again"
        )


def _check_schema(manifest: dict[str, Any]) -> None:
    """Refuse a backup whose schema this Enclave does not know (made by a newer version)."""
    revision = manifest.get("schema_revision")
    if revision is None:
        return
    try:
        known = ScriptDirectory.from_config(alembic_config()).get_revision(str(revision))
    except AlembicError:
        known = None
    if known is None:
        raise BackupError(
            f"the backup's database schema ({revision}) is newer than this Enclave knows "
            f"(Enclave {__version__}); restore it with the Enclave version that made it "
            f"({manifest.get('enclave_version')}) or newer"
        )


def _restore_sqlite(source: Path, database_url: str) -> None:
    target = _sqlite_path(database_url)
    ensure_private_dir(target.parent)
    if not target.exists():  # 0600 from its first byte, like every file the instance keeps
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    src = sqlite3.connect(source)
    # The backup API writes into the live file under SQLite's locks: a reader never sees half
    # of it, and the -wal file of the old content is reset with it.
    dst = sqlite3.connect(target, timeout=30)
    try:
        src.backup(dst)
    except sqlite3.Error as exc:
        raise BackupError(f"writing the SQLite database {target} failed: {exc}") from None
    finally:
        dst.close()
        src.close()
    target.chmod(0o600)


def _restore_postgres(source: Path, database_url: str) -> None:
    url, env = _libpq(database_url)
    command = [
        str(pg_tool("pg_restore")),
        "--clean",
        "--if-exists",
        "--no-owner",
        "--single-transaction",
        "--exit-on-error",
        f"--dbname={url}",
        str(source),
    ]
    _run_pg(command, env, "pg_restore")


def _restore_files(scratch: Path, manifest: dict[str, Any], data_dir: Path) -> int:
    names = [n for n in manifest["sha256"] if n.startswith(FILES_PREFIX)]
    signing = data_dir / "keys" / "signing"
    backed_up_signing = {n for n in names if n.startswith(f"{FILES_PREFIX}keys/signing/")}
    if backed_up_signing and signing.is_dir():
        # Signing keys made after the backup would otherwise stay published beside the
        # restored ones; the restored state is the backup's, exactly.
        for path in signing.glob("*.pem"):
            if f"{FILES_PREFIX}keys/signing/{path.name}" not in backed_up_signing:
                path.unlink()
    for name in names:
        relative = name[len(FILES_PREFIX) :]
        write_private_file(data_dir / relative, (scratch / name).read_bytes(), exclusive=False)
    return len(names)


def _verify(settings: EnclaveSettings) -> tuple[int, int, str]:
    """(users, model API keys decrypted, active signing kid) of the restored instance."""
    try:
        box = load_existing_secret_box(settings)
        kid = KeyStore.load(settings.keys_dir).active.kid
    except (OSError, SecretKeyError, KeyStoreError) as exc:
        raise BackupError(f"the restored keys do not load: {exc}") from None
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            users = int(connection.scalar(select(func.count()).select_from(User)) or 0)
            rows = connection.execute(
                select(SelfHostedModel.name, SelfHostedModel.api_token_encrypted)
            ).all()
    finally:
        engine.dispose()
    checked = 0
    for name, blob in rows:
        if blob is None:
            continue
        try:
            box.decrypt(blob, API_TOKEN_PURPOSE)
        except SecretDecryptError:
            raise BackupError(
                f"restored, but the API key of model {name!r} cannot be decrypted with the "
                "secret key in effect: restore the secret key that was in use at backup time"
            ) from None
        checked += 1
    return users, checked, kid


def instance_answering(settings: EnclaveSettings, timeout_s: float = 1.0) -> str | None:
    """The URL of an instance that answers on the configured address, if one does."""
    import urllib.error
    import urllib.request

    host = settings.instance.host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    url = f"http://{host}:{settings.instance.port}/-/liveness"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return url if answer.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def restore(
    settings: EnclaveSettings, archive: Path, *, force: bool, progress: Progress
) -> RestoreResult:
    """Replace the configured instance's database and keys with those in ``archive``."""
    if not archive.is_file():
        raise BackupError(f"{archive} does not exist or is not a file")
    database_url = settings.database_url
    engine = _engine_name(database_url)
    ensure_private_dir(settings.data_dir)
    with tempfile.TemporaryDirectory(prefix="enclave-restore-") as scratch_dir:
        scratch = Path(scratch_dir)
        progress(f"Reading {archive} and checking its checksums")
        manifest = _extract(archive, scratch)
        if manifest.get("engine") != engine:
            raise BackupError(
                f"the backup is of a {manifest.get('engine')} database and the configured "
                f"database is {engine}; point ENCLAVE_DATABASE_URL at a {manifest.get('engine')} "
                "database (moving between engines is not supported)"
            )
        _check_schema(manifest)
        _check_secret_key(manifest, settings)
        if not force:
            running = instance_answering(settings)
            if running:
                raise BackupError(
                    f"an instance answers at {running}: stop every instance that uses this "
                    "database, or pass --force to replace its data under it"
                )
            users = _existing_users(database_url)
            if users:
                raise BackupError(
                    f"the configured database already holds an instance ({users} user(s)); "
                    "restoring replaces all of it: pass --force if that is what you want"
                )
        member = SQLITE_MEMBER if engine == "sqlite" else PG_MEMBER
        if member not in manifest["sha256"]:
            raise BackupError(f"{archive} has no {member}")
        if engine == "sqlite":
            progress(f"Restoring the SQLite database into {_sqlite_path(database_url)}")
            _restore_sqlite(scratch / member, database_url)
        else:
            progress("Restoring the PostgreSQL database (pg_restore --clean)")
            _restore_postgres(scratch / member, database_url)
        files = _restore_files(scratch, manifest, settings.data_dir)
        progress(f"Restored {files} key and data file(s) into {settings.data_dir}")
    progress("Bringing the schema up to date")
    upgrade(database_url)
    users, checked, kid = _verify(settings)
    progress(
        f"Checked: {users} user(s), {checked} model API key(s) decrypt, signing key {kid} loads"
    )
    return RestoreResult(engine, files, users, checked, kid)
