"""The gateway's own signing key and the user tokens it signs (direct access).

``POST /v1/code/user_access_token`` turns an instance token into a short-lived token for one
user, signed RS256 by this key: ``iss`` = ``aud`` = ``gitlab-ai-gateway``, ``sub`` = the user's
global id, ``gitlab_realm`` and ``gitlab_instance_id`` copied from the instance token, scopes
``["complete_code"]`` only (GitLab's token authority, ``self_signed_jwt.py``). The IDE then calls
the completion endpoint directly with it.

The key is a PKCS#8 PEM file: ``gateway.self_signing_key_file``, or by default
``<data_dir>/keys/gateway-signing.pem``, generated on first start (0600, directory 0700). Worker
processes that start together agree on one key: the file appears atomically (hard link of a
complete temporary file), and whoever loses the race reads the winner's key.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave.common import wire
from enclave.common.logging import get_logger
from enclave.config import SELF_SIGNED_ISSUER, EnclaveSettings

log = get_logger(__name__)

DEFAULT_KEY_NAME: Final = "gateway-signing.pem"
RSA_KEY_BITS: Final = 2048
USER_JWT_ALG: Final = "RS256"


class SigningKeyError(RuntimeError):
    """The configured signing key cannot be used; the message says what to fix."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64url(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def public_jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    """The public JWK of ``key`` with its RFC 7638 thumbprint as ``kid``."""
    numbers = key.public_key().public_numbers()
    members = {"e": _int_b64url(numbers.e), "kty": "RSA", "n": _int_b64url(numbers.n)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    kid = _b64url(hashlib.sha256(canonical).digest())
    return {**members, "kid": kid, "alg": USER_JWT_ALG, "use": "sig"}


def default_key_path(settings: EnclaveSettings) -> Path:
    return settings.gateway.self_signing_key_file or settings.keys_dir / DEFAULT_KEY_NAME


def _load(path: Path) -> rsa.RSAPrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(
            f"cannot read the gateway signing key {path} ({exc.strerror}); check "
            "ENCLAVE_GATEWAY__SELF_SIGNING_KEY_FILE"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SigningKeyError(
            f"{path} is not an unencrypted PEM private key; write an RSA key of at least "
            f"{RSA_KEY_BITS} bits there (openssl genpkey -algorithm RSA -pkeyopt "
            f"rsa_keygen_bits:{RSA_KEY_BITS}) or remove it to have one generated"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < RSA_KEY_BITS:
        raise SigningKeyError(
            f"{path} must hold an RSA private key of at least {RSA_KEY_BITS} bits (user tokens "
            "are signed RS256)"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("gateway_signing_key_too_open", path=str(path), mode=oct(mode))
    return key


def _create(path: Path) -> rsa.RSAPrivateKey:
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):  # a mounted directory that is not ours
        if stat.S_IMODE(directory.stat().st_mode) & 0o077:
            directory.chmod(0o700)
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    temporary = directory / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # atomic, and fails if another process was first
        except FileExistsError:
            return _load(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    log.info("gateway_signing_key_created", path=str(path))
    return key


def load_or_create_signing_key(settings: EnclaveSettings) -> tuple[rsa.RSAPrivateKey, Path]:
    """The gateway's signing key; generated at the default path when there is none.

    A configured ``self_signing_key_file`` must exist (replicas share it, so a silently
    generated one would not match the others). Raises :class:`SigningKeyError`.
    """
    path = default_key_path(settings)
    if path.exists():
        return _load(path), path
    if settings.gateway.self_signing_key_file is not None:
        raise SigningKeyError(
            f"the gateway signing key {path} (ENCLAVE_GATEWAY__SELF_SIGNING_KEY_FILE) does not "
            "exist; create it or unset the setting to use a generated one"
        )
    try:
        return _create(path), path
    except OSError as exc:
        raise SigningKeyError(
            f"cannot create the gateway signing key {path} ({exc.strerror}); make the data "
            "directory writable or set ENCLAVE_GATEWAY__SELF_SIGNING_KEY_FILE"
        ) from None


@dataclass(frozen=True, slots=True)
class UserToken:
    token: str
    expires_at: int


class UserTokenIssuer:
    """Signs user tokens with the gateway's key (the key object is parsed once)."""

    def __init__(
        self,
        key: rsa.RSAPrivateKey,
        lifetime_s: int,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._lifetime_s = lifetime_s
        self._now = wall_clock
        self.jwk = public_jwk(key)
        self.kid = self.jwk["kid"]

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}

    def mint(self, *, user_id: str, realm: str, instance_id: str) -> UserToken:
        now = int(self._now())
        expires_at = now + self._lifetime_s
        claims = {
            "iss": SELF_SIGNED_ISSUER,
            "aud": SELF_SIGNED_ISSUER,
            "sub": user_id,
            "gitlab_realm": realm,
            "gitlab_instance_id": instance_id,
            "scopes": [wire.UP_COMPLETE_CODE],
            "iat": now,
            "nbf": now - wire.NOT_BEFORE_SKEW_S,
            "exp": expires_at,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(
            claims,
            self._key,
            algorithm=USER_JWT_ALG,
            headers={"kid": self.kid, "typ": "JWT"},
        )
        return UserToken(token, expires_at)
