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

GENERATE_HINT = 'python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"'


class SecretKeyError(ValueError):
    """The configured secret key is unusable; the message says how to fix it."""


class SecretDecryptError(ValueError):
    """A stored secret cannot be decrypted (wrong key or damaged value)."""


class SecretBox:
    """Encrypts and decrypts small secrets (API keys) with one AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"the secret key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"enclave-secret-key-id:" + key).digest()[:_KEY_ID_BYTES]

    def __repr__(self) -> str:  # never show key material, even by accident
        return f"SecretBox(key_id={self.key_id.hex()})"

    def encrypt(self, plaintext: str, purpose: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), purpose.encode())
        return bytes([_VERSION]) + self.key_id + nonce + sealed

    def decrypt(self, blob: bytes, purpose: str) -> str:
        if len(blob) < _HEADER_BYTES + 16 or blob[0] != _VERSION:
            raise SecretDecryptError("stored secret has an unknown format")
        key_id = blob[1 : 1 + _KEY_ID_BYTES]
        if key_id != self.key_id:
            raise SecretDecryptError(
                "stored secret was encrypted with a different secret key: restore the original "
                "ENCLAVE_SECRET_KEY (or keys/secret.key), or re-enter the API key"
            )
        nonce = blob[1 + _KEY_ID_BYTES : _HEADER_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[_HEADER_BYTES:], purpose.encode()).decode()
        except InvalidTag as exc:
            raise SecretDecryptError("stored secret is damaged (authentication failed)") from exc


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


def load_secret_box(settings: EnclaveSettings) -> SecretBox:
    return SecretBox(load_or_create_secret_key(settings))
