"""Request ids: 32 random hex characters, like ``uuid4().hex`` without building a UUID.

A request id ties a client's error message to the gateway's log line, so it only has to be
unique across requests, workers and restarts: 128 random bits from the operating system are,
and a forked worker cannot repeat its parent's. Ids are not secrets (a client may send its
own), but they come from the OS's generator anyway, so nobody can predict the next one or
learn how many requests a worker has served. A userspace generator seeded once per process
was measured (bench/README.md): it saves ~0.15 µs per id, not worth ids that can be predicted.
"""

from __future__ import annotations

import os


def new_request_id() -> str:
    """A fresh id of 32 lowercase hex characters."""
    return os.urandom(16).hex()


def new_short_id() -> str:
    """A fresh id of 24 lowercase hex characters (96 bits, as ``secrets.token_hex(12)``)."""
    return os.urandom(12).hex()


__all__ = ["new_request_id", "new_short_id"]
