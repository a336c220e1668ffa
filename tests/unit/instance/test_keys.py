"""Signing keys: generation, file permissions, RFC 7638 kids, the JWKS."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave.instance.keys import KeyStore, KeyStoreError, jwk_thumbprint


def test_rfc7638_example_thumbprint() -> None:
    # The worked example of RFC 7638 §3.1.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6t"
        "Soc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YG"
        "jQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-b"
        "FTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_first_start_creates_a_private_rsa_2048_key(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    store, created = KeyStore.load_or_create(keys_dir)
    assert created
    key = store.active
    assert isinstance(key.private_key, rsa.RSAPrivateKey)
    assert key.private_key.key_size == 2048
    assert key.alg == "RS256"
    assert key.path == keys_dir / "signing" / f"{key.kid}.pem"
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
    assert stat.S_IMODE((keys_dir / "signing").stat().st_mode) == 0o700
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    assert (keys_dir / "signing" / "active").read_text().strip() == key.kid


def test_second_start_loads_the_same_key(tmp_path: Path) -> None:
    first, _ = KeyStore.load_or_create(tmp_path / "keys")
    second, created = KeyStore.load_or_create(tmp_path / "keys")
    assert not created
    assert second.active.kid == first.active.kid
    assert second.kids == [first.active.kid]


def test_jwks_has_gitlab_shape(tmp_path: Path) -> None:
    store, _ = KeyStore.load_or_create(tmp_path / "keys")
    jwks = store.jwks()
    assert list(jwks) == ["keys"]
    [jwk] = jwks["keys"]
    assert set(jwk) == {"kty", "kid", "e", "n", "use", "alg"}
    assert (jwk["kty"], jwk["use"], jwk["alg"], jwk["e"]) == ("RSA", "sig", "RS256", "AQAB")
    assert jwk["kid"] == jwk_thumbprint(jwk)
    numbers = store.active.private_key.public_key().public_numbers()
    n = int.from_bytes(base64.urlsafe_b64decode(jwk["n"] + "=" * (-len(jwk["n"]) % 4)), "big")
    assert n == numbers.n
    assert "d" not in jwk and "p" not in jwk  # never private members


def test_several_keys_are_all_published_active_first(tmp_path: Path) -> None:
    """The layout already supports rotation: add a key file, then move the pointer."""
    keys_dir = tmp_path / "keys"
    first, _ = KeyStore.load_or_create(keys_dir)
    from enclave.instance.files import write_private_file
    from enclave.instance.keys import generate_rsa_key

    new = generate_rsa_key()
    write_private_file(keys_dir / "signing" / f"{new.kid}.pem", new.private_pem())
    published, _ = KeyStore.load_or_create(keys_dir)
    assert published.active.kid == first.active.kid  # published before it signs
    assert [k["kid"] for k in published.jwks()["keys"]] == [first.active.kid, new.kid]
    write_private_file(keys_dir / "signing" / "active", new.kid.encode(), exclusive=False)
    rotated, _ = KeyStore.load_or_create(keys_dir)
    assert rotated.active.kid == new.kid
    assert set(rotated.kids) == {first.active.kid, new.kid}


def test_dangling_active_pointer_is_a_clear_error(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    KeyStore.load_or_create(keys_dir)
    (keys_dir / "signing" / "active").write_text("no-such-kid\n")
    with pytest.raises(KeyStoreError, match="no such key"):
        KeyStore.load_or_create(keys_dir)


def test_broken_key_file_is_a_clear_error(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    KeyStore.load_or_create(keys_dir)
    (keys_dir / "signing" / "broken.pem").write_text("not a key")
    with pytest.raises(KeyStoreError, match=r"broken\.pem"):
        KeyStore.load_or_create(keys_dir)
