"""Secrets at rest: AES-256-GCM for model API keys.

Each value gets a fresh random 96-bit nonce (GCM's standard size; random nonces are safe far
beyond the number of API keys an instance will ever store). The stored blob is::

    version (1 byte) | key id (4 bytes) | nonce (12 bytes) | ciphertext + tag (16 bytes)

The key id is a fingerprint of the key, not the key: it lets the instance say "this value was
encrypted with another secret key" instead of a bare authentication failure, and leaves room
for key rotation (decrypt with the old key by id, re-encrypt with the new one). ``purpose`` is
bound in as associated data so a ciphertext copied into another column does not decrypt there.

The key comes from ``ENCLAVE_SECRET_KEY`` (base64, 32 bytes) or, by default, from a generated
0600 file in the keys directory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave.common.logging import get_logger
from enclave.config import EnclaveSettings
from enclave.instance.files import read_private_file, write_private_file

log = get_logger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
_VERSION = 1
_KEY_ID_BYTES = 4
_HEADER_BYTES = 1 + _KEY_ID_BYTES + NONCE_BYTES

RELOAD_INTERVAL_S = 2.0

GENERATE_HINT = 'python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"'


class SecretKeyError(ValueError):
    """The configured secret key is unusable; the message says how to fix it."""


class SecretDecryptError(ValueError):
    """A stored secret cannot be decrypted (wrong key or damaged value)."""


class SecretBox:
    """Encrypts with one AES-256-GCM key; decrypts with any key of its keyring.

    The keyring holds the current key plus the keys of a rotation (the previous key, or the
    next one while a rotation is under way), chosen by the key id stored in each value. With a
    ``reloader`` the box re-reads its keys when it meets a value encrypted with a key it does
    not know, at most every :data:`RELOAD_INTERVAL_S`: after ``enclave secret-key rotate`` on
    a shared data dir, running replicas pick up the new key by themselves.
    """

    def __init__(
        self,
        key: bytes,
        *,
        previous: Iterable[bytes] = (),
        reloader: Callable[[], SecretBox] | None = None,
    ) -> None:
        self._set_keys(key, previous)
        self._reloader = reloader
        self._last_reload = 0.0
        self._lock = threading.Lock()

    def _set_keys(self, key: bytes, previous: Iterable[bytes]) -> None:
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"the secret key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = key_id_of(key)
        keyring = {key_id_of(old): AESGCM(old) for old in previous if len(old) == KEY_BYTES}
        keyring[self.key_id] = self._aead
        self._keyring = keyring

    @property
    def key_ids(self) -> list[str]:
        return sorted(k.hex() for k in self._keyring)

    def __repr__(self) -> str:  # never show key material, even by accident
        return f"SecretBox(key_id={self.key_id.hex()})"

    def encrypt(self, plaintext: str, purpose: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), purpose.encode())
        return bytes([_VERSION]) + self.key_id + nonce + sealed

    def _reload(self) -> None:
        if self._reloader is None:
            return
        with self._lock:
            now = time.monotonic()
            if now - self._last_reload < RELOAD_INTERVAL_S:
                return
            self._last_reload = now
            try:
                fresh = self._reloader()
            except (OSError, SecretKeyError) as exc:
                log.warning("secret_key_reload_failed", error=str(exc))
                return
            self._aead, self.key_id, self._keyring = fresh._aead, fresh.key_id, fresh._keyring
            log.info("secret_key_reloaded", key_id=self.key_id.hex())

    def decrypt(self, blob: bytes, purpose: str) -> str:
        if len(blob) < _HEADER_BYTES + 16 or blob[0] != _VERSION:
            raise SecretDecryptError("stored secret has an unknown format")
        key_id = blob[1 : 1 + _KEY_ID_BYTES]
        aead = self._keyring.get(key_id)
        if aead is None:
            self._reload()
            aead = self._keyring.get(key_id)
        if aead is None:
            raise SecretDecryptError(
                "stored secret was encrypted with a different secret key: restore the original "
                "ENCLAVE_SECRET_KEY (or keys/secret.key), or re-enter the API key"
            )
        nonce = blob[1 + _KEY_ID_BYTES : _HEADER_BYTES]
        try:
            return aead.decrypt(nonce, blob[_HEADER_BYTES:], purpose.encode()).decode()
        except InvalidTag as exc:
            raise SecretDecryptError("stored secret is damaged (authentication failed)") from exc


def key_id_of(key: bytes) -> bytes:
    """A fingerprint of ``key`` (not the key): which key encrypted a stored value."""
    return hashlib.sha256(b"enclave-secret-key-id:" + key).digest()[:_KEY_ID_BYTES]


def blob_key_id(blob: bytes) -> str | None:
    if len(blob) < _HEADER_BYTES or blob[0] != _VERSION:
        return None
    return blob[1 : 1 + _KEY_ID_BYTES].hex()


def parse_secret_key(value: str) -> bytes:
    """Decode a base64 (standard or URL-safe) 32-byte key."""
    text = value.strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SecretKeyError(
            f"ENCLAVE_SECRET_KEY is not valid base64; generate one with: {GENERATE_HINT}"
        ) from exc
    if len(key) != KEY_BYTES:
        raise SecretKeyError(
            f"ENCLAVE_SECRET_KEY must decode to {KEY_BYTES} bytes (got {len(key)}); "
            f"generate one with: {GENERATE_HINT}"
        )
    return key


def load_or_create_secret_key(settings: EnclaveSettings) -> bytes:
    """The configured key, else the key file, else a new key file (0600, dir 0700)."""
    if settings.secret_key is not None:
        return parse_secret_key(settings.secret_key.get_secret_value())
    path = settings.secret_key_file
    if not path.exists():
        key = os.urandom(KEY_BYTES)
        try:
            write_private_file(path, base64.b64encode(key) + b"\n", exclusive=True)
            log.info("secret_key_created", path=str(path))
            return key
        except FileExistsError:
            pass  # another process won the race; use its key
    try:
        return parse_secret_key(read_private_file(path).decode())
    except SecretKeyError as exc:
        raise SecretKeyError(f"{path}: {exc}") from exc


def previous_key_file(settings: EnclaveSettings) -> Path:
    """Keys that decrypt but no longer encrypt (one base64 key per line), kept by rotation."""
    return settings.secret_key_file.with_name("secret.key.previous")


def next_key_file(settings: EnclaveSettings) -> Path:
    """The new key while a rotation is under way (it becomes secret.key at the end)."""
    return settings.secret_key_file.with_name("secret.key.next")


def read_key_lines(path: Path) -> list[bytes]:
    if not path.exists():
        return []
    keys: list[bytes] = []
    for number, line in enumerate(read_private_file(path).decode().splitlines(), start=1):
        if line.strip():
            try:
                keys.append(parse_secret_key(line))
            except SecretKeyError as exc:
                raise SecretKeyError(f"{path} line {number}: {exc}") from exc
    return keys


def _load_box(settings: EnclaveSettings, *, create: bool) -> SecretBox:
    primary = (
        load_or_create_secret_key(settings)
        if create
        else (
            parse_secret_key(settings.secret_key.get_secret_value())
            if settings.secret_key is not None
            else parse_secret_key(read_private_file(settings.secret_key_file).decode())
        )
    )
    extra = read_key_lines(previous_key_file(settings)) + read_key_lines(next_key_file(settings))
    return SecretBox(primary, previous=extra, reloader=lambda: _load_box(settings, create=False))


def load_secret_box(settings: EnclaveSettings) -> SecretBox:
    return _load_box(settings, create=True)


def load_existing_secret_box(settings: EnclaveSettings) -> SecretBox:
    """The configured keys without creating a key file (for checks that must change nothing)."""
    return _load_box(settings, create=False)
