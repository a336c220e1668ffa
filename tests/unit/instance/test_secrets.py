"""AES-256-GCM secrets at rest and where the key comes from."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from enclave.config import EnclaveSettings
from enclave.instance.secrets import (
    SecretBox,
    SecretDecryptError,
    SecretKeyError,
    load_or_create_secret_key,
    parse_secret_key,
)

PURPOSE = "ai_self_hosted_models.api_token"


def test_round_trip_with_a_fresh_nonce_each_time() -> None:
    box = SecretBox(os.urandom(32))
    first = box.encrypt("sk-very-secret", PURPOSE)
    second = box.encrypt("sk-very-secret", PURPOSE)
    assert first != second  # random 96-bit nonce per value
    assert first[1 + 4 : 1 + 4 + 12] != second[1 + 4 : 1 + 4 + 12]
    assert box.decrypt(first, PURPOSE) == box.decrypt(second, PURPOSE) == "sk-very-secret"
    assert b"sk-very-secret" not in first
    # version + key id + nonce + ciphertext + 16-byte tag
    assert len(first) == 1 + 4 + 12 + len("sk-very-secret") + 16


def test_tampering_is_detected() -> None:
    box = SecretBox(os.urandom(32))
    blob = bytearray(box.encrypt("value", PURPOSE))
    blob[-1] ^= 1
    with pytest.raises(SecretDecryptError, match="damaged"):
        box.decrypt(bytes(blob), PURPOSE)


def test_a_ciphertext_is_bound_to_its_purpose() -> None:
    box = SecretBox(os.urandom(32))
    with pytest.raises(SecretDecryptError):
        box.decrypt(box.encrypt("value", PURPOSE), "some.other_column")


def test_another_key_is_reported_as_such() -> None:
    blob = SecretBox(os.urandom(32)).encrypt("value", PURPOSE)
    with pytest.raises(SecretDecryptError, match="different secret key"):
        SecretBox(os.urandom(32)).decrypt(blob, PURPOSE)


def test_garbage_is_refused() -> None:
    with pytest.raises(SecretDecryptError, match="unknown format"):
        SecretBox(os.urandom(32)).decrypt(b"\x07short", PURPOSE)


def test_repr_shows_no_key_material() -> None:
    key = os.urandom(32)
    assert key.hex() not in repr(SecretBox(key))


@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_configured_key_is_used(encode: object, settings: EnclaveSettings) -> None:
    key = os.urandom(32)
    text = encode(key).decode()  # type: ignore[operator]
    configured = EnclaveSettings(data_dir=settings.data_dir, secret_key=text)
    assert load_or_create_secret_key(configured) == key
    assert not settings.secret_key_file.exists()  # nothing written when the key is given


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode()])
def test_bad_configured_key_says_how_to_make_one(value: str) -> None:
    with pytest.raises(SecretKeyError, match="generate one with"):
        parse_secret_key(value)


def test_generated_key_file_is_private_and_reused(settings: EnclaveSettings) -> None:
    key = load_or_create_secret_key(settings)
    path = settings.secret_key_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert base64.b64decode(path.read_text()) == key
    assert load_or_create_secret_key(settings) == key
