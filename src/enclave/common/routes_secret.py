"""The secret the instance and the gateway share for the feature→model routes.

One line of text in a file (``keys/gateway-routes.secret`` with ``enclave up``): the gateway
presents it, the instance compares it. Both read it the same way, with the same bounds, so a
file one side accepts the other accepts too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

# A secret is one line; anything bigger is not one of ours.
MAX_SECRET_BYTES: Final = 4096
MIN_SECRET_CHARS: Final = 16


class RoutesSecretError(Exception):
    """The secret file cannot be read or does not hold a usable secret (message says which)."""


def read_routes_secret(path: Path) -> str:
    """The secret in ``path`` (blocking file I/O: call it off the event loop)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise RoutesSecretError(
            f"cannot read the gateway routes secret file {path} ({exc.strerror})"
        ) from None
    secret = raw.decode("utf-8", "replace").strip()
    if len(raw) > MAX_SECRET_BYTES or len(secret) < MIN_SECRET_CHARS:
        raise RoutesSecretError(
            f"the gateway routes secret file {path} does not hold a usable secret"
        )
    return secret
