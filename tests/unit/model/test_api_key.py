"""The model API key file: generated once, private, refused when it is not."""

from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path

import pytest

from enclave.common.logging import redact_text
from enclave.model.api_key import (
    API_KEY_PREFIX,
    ApiKeyFileError,
    ensure_api_key,
    generate_api_key,
    read_api_key,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generated_key_shape() -> None:
    key = generate_api_key()
    assert key.startswith(API_KEY_PREFIX)
    token = key.removeprefix(API_KEY_PREFIX)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", token)  # >= 32 bytes of entropy, URL-safe
    assert generate_api_key() != key


def test_generated_key_is_redacted_by_the_log_filter() -> None:
    key = generate_api_key()
    assert key not in redact_text(f"calling model with {key}")


def test_first_call_creates_private_file_in_private_dir(tmp_path: Path) -> None:
    path = tmp_path / "data" / "model" / "api-key"
    key = ensure_api_key(path)
    assert key.startswith(API_KEY_PREFIX)
    assert path.read_text() == key + "\n"
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["api-key"]  # no temporary left behind


def test_later_calls_read_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    key = ensure_api_key(path)
    assert ensure_api_key(path) == key
    assert read_api_key(path) == key


def test_operator_supplied_key_is_used(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    path.write_text("  my-own-key_123\n")
    path.chmod(0o600)
    assert ensure_api_key(path) == "my-own-key_123"


def test_umask_cannot_loosen_or_break_the_file(tmp_path: Path) -> None:
    old = os.umask(0o277)  # would drop the owner's write bit
    try:
        key = ensure_api_key(tmp_path / "m" / "api-key")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "m" / "api-key") == 0o600
    assert _mode(tmp_path / "m") == 0o700
    assert ensure_api_key(tmp_path / "m" / "api-key") == key


def test_existing_parent_dir_is_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    ensure_api_key(tmp_path / "api-key")
    assert _mode(tmp_path) == 0o755


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o666])
def test_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "api-key"
    key = ensure_api_key(path)
    path.chmod(mode)
    with pytest.raises(ApiKeyFileError, match="chmod 600") as info:
        ensure_api_key(path)
    assert key not in str(info.value)
    assert path.read_text().strip() == key  # refused, not replaced


def test_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("enclkey-planted\n")
    target.chmod(0o600)
    link = tmp_path / "api-key"
    link.symlink_to(target)
    with pytest.raises(ApiKeyFileError, match="symbolic link"):
        ensure_api_key(link)


def test_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    path.mkdir(mode=0o700)
    with pytest.raises(ApiKeyFileError, match="not a regular file"):
        ensure_api_key(path)


@pytest.mark.parametrize("content", [b"", b"\n  \n", b"two words\n", b"\xff\xfe\n"])
def test_file_without_a_key_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "api-key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ApiKeyFileError, match="delete it"):
        ensure_api_key(path)


def test_concurrent_first_calls_agree(tmp_path: Path) -> None:
    path = tmp_path / "model" / "api-key"
    keys: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        keys.append(ensure_api_key(path))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8
    assert len(set(keys)) == 1
    assert read_api_key(path) == keys[0]
    assert [p.name for p in path.parent.iterdir()] == ["api-key"]
