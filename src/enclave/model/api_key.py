"""The embedded model's API key: generated once into a private file, read on every start.

llama.cpp checks the key itself (``Authorization: Bearer <key>``; a wrong or missing key gets
``401``), so only holders of the file (the model process and the instance, which hands the key
to the gateway with the model record) can call the model, even from other local users.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

API_KEY_PREFIX = "enclkey-"
"""Every generated key starts with it; the shared log filter redacts anything that looks so."""

_KEY_BYTES = 32  # 256 bits of entropy
_FILE_MODE = 0o600
_DIR_MODE = 0o700


class ApiKeyFileError(RuntimeError):
    """The key file exists but cannot be used; the message says how to fix it."""


def generate_api_key() -> str:
    """A fresh random key: ``enclkey-`` + 43 URL-safe characters (32 random bytes)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)


def ensure_api_key(path: Path) -> str:
    """Return the key stored at ``path``, generating it (0600 file, 0700 parent) when missing.

    Safe against concurrent first starts: the file is published with ``link()``, which never
    replaces an existing file, so two processes always end up with the same key. A file that
    group or others may read, or that is not a regular file, is refused rather than trusted.
    """
    path = Path(path)
    try:
        return read_api_key(path)
    except FileNotFoundError:
        pass
    key = generate_api_key()
    try:
        _publish(path, (key + "\n").encode())
    except FileExistsError:
        return read_api_key(path)  # another process won the race; use its key
    return key


def read_api_key(path: Path) -> str:
    """Read an existing key file (``FileNotFoundError`` when missing), checking it is private."""
    # O_NOFOLLOW: a symlink planted in the data dir must not redirect us to another file.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ApiKeyFileError(
                f"model API key file {path} is a symbolic link; replace it with the key file "
                "itself (mode 0600)"
            ) from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ApiKeyFileError(f"model API key file {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ApiKeyFileError(
                f"model API key file {path} is readable or writable by other users "
                f"(mode {mode:04o}); run `chmod 600 {path}` (and consider the key leaked: delete "
                "the file to generate a new one, then restart the model and the instance)"
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(4096)
    finally:
        os.close(fd)
    try:
        key = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        key = ""
    # llama.cpp compares the Authorization header verbatim: the key must survive being a header.
    if not key or not key.isprintable() or any(ch.isspace() for ch in key):
        raise ApiKeyFileError(
            f"model API key file {path} does not hold a key (one line of printable ASCII without "
            "spaces); delete it to generate a new one"
        )
    return key


def _publish(path: Path, data: bytes) -> None:
    created = not path.parent.exists()
    path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    if created:
        path.parent.chmod(_DIR_MODE)  # mkdir's mode is filtered by the umask; be exact
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)  # the umask may have dropped bits we need; never adds any
        with os.fdopen(fd, "wb", closefd=False) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.close(fd)
        fd = -1
        # link() is atomic and fails when ``path`` exists: readers never see half a key and a
        # concurrent first start cannot overwrite the key another process already handed out.
        os.link(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
