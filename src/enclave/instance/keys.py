"""Signing keys and the public JWKS.

Layout under ``settings.keys_dir``::

    signing/<kid>.pem   one PKCS#8 PEM per key (0600, directory 0700)
    signing/active      the kid that signs new tokens

One file per key plus an "active" pointer is what rotation needs (DESIGN.md §3): a new key is
added (and so published in the JWKS) before the pointer moves to it, and the old file is deleted
only after its last token has expired. This slice creates one RSA-2048 key at first start; the
rotation commands come later and need no change of layout.

The kid is the RFC 7638 JWK thumbprint, so it is derived from the key itself: a renamed file
cannot make the published kid and the signing key disagree.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave.common.logging import get_logger
from enclave.instance.files import ensure_private_dir, read_private_file, write_private_file

log = get_logger(__name__)

RSA_KEY_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537
ALG_RS256 = "RS256"
SIGNING_SUBDIR = "signing"
ACTIVE_FILE = "active"


class KeyStoreError(RuntimeError):
    """The key directory is unusable; the message says what to fix."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64url(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of a public JWK."""
    required = {
        "RSA": ("e", "kty", "n"),
        "EC": ("crv", "kty", "x", "y"),
        "OKP": ("crv", "kty", "x"),
    }
    members = {name: jwk[name] for name in required[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url(hashlib.sha256(canonical).digest())


@dataclass(frozen=True)
class SigningKey:
    """One private key with its public JWK; ``alg`` leaves room for ES256/EdDSA keys later."""

    kid: str
    alg: str
    private_key: rsa.RSAPrivateKey = field(repr=False)
    path: Path | None = None

    @classmethod
    def from_rsa(cls, private_key: rsa.RSAPrivateKey, path: Path | None = None) -> SigningKey:
        return cls(jwk_thumbprint(_rsa_public_members(private_key)), ALG_RS256, private_key, path)

    def public_jwk(self) -> dict[str, str]:
        return {
            "kty": "RSA",
            "kid": self.kid,
            **{k: v for k, v in _rsa_public_members(self.private_key).items() if k != "kty"},
            "use": "sig",
            "alg": self.alg,
        }

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _rsa_public_members(private_key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = private_key.public_key().public_numbers()
    return {"kty": "RSA", "e": _int_b64url(numbers.e), "n": _int_b64url(numbers.n)}


def generate_rsa_key() -> SigningKey:
    return SigningKey.from_rsa(
        rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_KEY_BITS)
    )


class KeyStore:
    """The instance's signing keys: every key is published, one key signs."""

    def __init__(self, keys: list[SigningKey], active_kid: str) -> None:
        self._keys = {key.kid: key for key in keys}
        if active_kid not in self._keys:
            raise KeyStoreError(f"active signing key {active_kid} is not among the loaded keys")
        self._active_kid = active_kid

    @property
    def active(self) -> SigningKey:
        return self._keys[self._active_kid]

    @property
    def kids(self) -> list[str]:
        return sorted(self._keys)

    def get(self, kid: str) -> SigningKey | None:
        return self._keys.get(kid)

    def algorithms(self) -> list[str]:
        return sorted({key.alg for key in self._keys.values()})

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        # Active key first: clients that take keys[0] (and humans) see the signing key.
        ordered = [
            self.active,
            *(k for kid, k in sorted(self._keys.items()) if kid != self._active_kid),
        ]
        return {"keys": [key.public_jwk() for key in ordered]}

    @classmethod
    def load_or_create(cls, keys_dir: Path) -> tuple[KeyStore, bool]:
        """Load the keys under ``keys_dir``; create the first key when there is none.

        Returns the store and whether a key was created.
        """
        ensure_private_dir(keys_dir)
        directory = ensure_private_dir(keys_dir / SIGNING_SUBDIR)
        keys = _load_keys(directory)
        created = False
        if not keys:
            key = generate_rsa_key()
            # A kid collision means the very same key is already there.
            with contextlib.suppress(FileExistsError):
                write_private_file(directory / f"{key.kid}.pem", key.private_pem())
            try:
                write_private_file(directory / ACTIVE_FILE, f"{key.kid}\n".encode())
                created = True
                log.info("signing_key_created", kid=key.kid, alg=key.alg)
            except FileExistsError:
                pass  # another process created the first key at the same moment; use its
            keys = _load_keys(directory)
        return cls(list(keys.values()), _active_kid(directory, keys)), created

    @classmethod
    def load(cls, keys_dir: Path) -> KeyStore:
        """The existing keys; :class:`KeyStoreError` when there are none (nothing is created)."""
        directory = keys_dir / SIGNING_SUBDIR
        keys = _load_keys(directory) if directory.is_dir() else {}
        if not keys:
            raise KeyStoreError(f"no signing key in {directory}")
        return cls(list(keys.values()), _active_kid(directory, keys))


def _load_keys(directory: Path) -> dict[str, SigningKey]:
    keys: dict[str, SigningKey] = {}
    for path in sorted(directory.glob("*.pem")):
        try:
            loaded = serialization.load_pem_private_key(read_private_file(path), password=None)
        except (ValueError, TypeError) as exc:
            raise KeyStoreError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise KeyStoreError(f"{path}: only RSA signing keys are supported so far")
        key = SigningKey.from_rsa(loaded, path)
        keys[key.kid] = key
    return keys


def _active_kid(directory: Path, keys: dict[str, SigningKey]) -> str:
    pointer = directory / ACTIVE_FILE
    if pointer.exists():
        kid = pointer.read_text().strip()
        if kid not in keys:
            raise KeyStoreError(
                f"{pointer} names key {kid!r} but {directory} has no such key; restore "
                f"{kid}.pem from a backup or write the kid of an existing key into {pointer}"
            )
        return kid
    if len(keys) == 1:
        return next(iter(keys))
    raise KeyStoreError(
        f"{directory} holds {len(keys)} keys but no {ACTIVE_FILE} file saying which one signs; "
        f"write the kid of the signing key into {pointer}"
    )
