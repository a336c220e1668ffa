"""Private files on disk: keys, the admin token, the secret key.

Everything secret the instance keeps outside the database is a 0600 file in a 0700 directory.
Files are published atomically (write a temporary file, then link it into place) so a crash
never leaves a half-written key, and ``exclusive`` publishing never overwrites an existing one:
two processes starting at once cannot both "create" the same key and keep different copies.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from enclave.common.logging import get_logger

log = get_logger(__name__)

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as 0700 if missing; tighten it if it is ours and too open."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            path.chmod(PRIVATE_DIR_MODE)
        except PermissionError:
            # Not ours (e.g. a mounted volume): say so instead of failing the start.
            log.warning("private_dir_too_open", path=str(path), mode=oct(mode))
    return path


def write_private_file(path: Path, data: bytes, *, exclusive: bool = True) -> None:
    """Write ``data`` to ``path`` as a 0600 file, atomically.

    With ``exclusive`` the call fails with :class:`FileExistsError` when ``path`` exists (the
    caller then reads what the other writer published); without it the file is replaced.
    """
    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp, path)  # atomic and fails if ``path`` exists, unlike rename
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


def read_private_file(path: Path) -> bytes:
    """Read a secret file, warning when its permissions let others read it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("private_file_too_open", path=str(path), mode=oct(mode))
    return path.read_bytes()


def _fsync_dir(path: Path) -> None:
    # Makes the new directory entry durable; a power cut must not lose a freshly made key.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
