"""Compact JWS parsing and signature checks, strict and small (no PyJWT on the request path).

:func:`parse_token` splits a token into its header, claims, signing input and signature, and
refuses anything that is not exactly three canonical base64url segments of JSON objects
without duplicate members or non-standard numbers (``NaN``, ``Infinity``). It parses once:
the claims the gateway acts on are the very bytes the signature covers, so two parsers can
never disagree about them. :func:`signature_valid` checks RS256 (PKCS#1 v1.5), ES256 (raw
``r||s``, 64 bytes) and EdDSA with ``cryptography`` directly.

Every failure is :class:`TokenError` with a reason safe to show; nothing here raises anything
else for any input (the property tests feed it random bytes).
"""

from __future__ import annotations

import binascii
import json
import math
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

MAX_TOKEN_BYTES: Final = 16 * 1024

_B64URL: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# base64url → standard alphabet for binascii's strict decoder; "+", "/" and "=" (not base64url)
# become "!", which the strict decoder refuses like every other stray byte.
_TO_STANDARD: Final = bytes.maketrans(b"-_+/=", b"+/!!!")
# The last character of a canonical segment leaves its unused low bits zero.
_CANONICAL_LAST: Final = {
    2: frozenset(c for i, c in enumerate(_B64URL) if i % 16 == 0),
    3: frozenset(c for i, c in enumerate(_B64URL) if i % 4 == 0),
}
_PADDING: Final = {0: b"", 2: b"==", 3: b"="}
_SHA256: Final = hashes.SHA256()
_PKCS1: Final = padding.PKCS1v15()
_ECDSA_SHA256: Final = ec.ECDSA(_SHA256)
# Header parameters that change how a token must be processed; we implement none of them.
_UNSUPPORTED_HEADER: Final = ("crit", "b64", "zip", "enc")


class TokenError(Exception):
    """The token is not a well-formed compact JWS; ``reason`` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


MALFORMED: Final = "malformed token"


@dataclass(frozen=True, slots=True)
class ParsedToken:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def algorithm(self) -> Any:
        return self.header.get("alg")

    @property
    def kid(self) -> Any:
        return self.header.get("kid")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise TokenError("duplicate members in the token's JSON")
    return result


def _no_constants(name: str) -> Any:
    raise TokenError(f"non-standard JSON number {name} in the token")


_DECODER: Final = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def _segment(segment: str) -> bytes:
    """Decode one canonical base64url segment (unpadded, no stray bits)."""
    remainder = len(segment) % 4
    if remainder == 1 or (remainder and segment[-1] not in _CANONICAL_LAST[remainder]):
        raise TokenError(MALFORMED)  # impossible length, or two spellings of one value
    try:
        standard = segment.encode("ascii").translate(_TO_STANDARD) + _PADDING[remainder]
        return binascii.a2b_base64(standard, strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        raise TokenError(MALFORMED) from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
        value = _DECODER.decode(text)
    except TokenError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TokenError(f"the token's {what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError(f"the token's {what} is not a JSON object")
    return value


def _check_header(header: dict[str, Any]) -> None:
    for name in _UNSUPPORTED_HEADER:
        if name in header:
            raise TokenError(f"unsupported token header parameter '{name}'")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
        raise TokenError("the token's type ('typ') is not JWT")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenError("the token's key id ('kid') is not a string")


# Headers that parsed and passed, by their segment: one issuer's tokens share a few (same alg,
# kid, typ), so most tokens skip decoding theirs. Callers must not modify the dicts.
_HEADERS: dict[str, dict[str, Any]] = {}
_HEADER_CACHE_SIZE: Final = 256
_CACHED_HEADER_MAX_CHARS: Final = 512


def parse_token(token: str) -> ParsedToken:
    """Split and decode ``token``; raises :class:`TokenError`."""
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError(f"token larger than {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise TokenError(MALFORMED)
    header = _HEADERS.get(parts[0])
    if header is None:
        header = _json_object(_segment(parts[0]), "header")
        _check_header(header)
        if len(parts[0]) <= _CACHED_HEADER_MAX_CHARS:
            if len(_HEADERS) >= _HEADER_CACHE_SIZE:
                _HEADERS.clear()
            _HEADERS[parts[0]] = header
    claims = _json_object(_segment(parts[1]), "payload")
    signature = _segment(parts[2])
    signing_input = token[: len(parts[0]) + len(parts[1]) + 1].encode("ascii")
    return ParsedToken(header, claims, signing_input, signature)


def signature_valid(algorithm: str, key: Any, signing_input: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``key``'s ``algorithm`` signature of ``signing_input``.

    ``key`` must be the public key type of ``algorithm`` (the caller pairs them); any mismatch
    or malformed signature is simply False.
    """
    try:
        if algorithm == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, _PKCS1, _SHA256)
            return True
        if algorithm == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
            if len(signature) != 64 or key.curve.name != "secp256r1":
                return False
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), signing_input, _ECDSA_SHA256)
            return True
        if algorithm == "EdDSA" and isinstance(
            key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
        ):
            key.verify(signature, signing_input)
            return True
    except (InvalidSignature, ValueError, TypeError):
        return False
    return False


def numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """A NumericDate claim as float (None when absent); TokenError when it is not a number."""
    value = claims.get(name)
    if value is None and name not in claims:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"the token's '{name}' claim is not a number")
    if isinstance(value, int):
        if abs(value) > 2**53:
            raise TokenError(f"the token's '{name}' claim is out of range")
        return float(value)
    if not math.isfinite(value) or abs(value) > 2**53:
        raise TokenError(f"the token's '{name}' claim is out of range")
    return value
