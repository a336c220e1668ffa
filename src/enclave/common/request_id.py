"""Request ids: 32 random hex characters, like ``uuid4().hex`` without a syscall per id.

A request id ties a client's error message to the gateway's log line, so it only has to be
unique across requests, workers and restarts: 128 random bits are. ``os.urandom`` (what
``uuid4()`` draws from) is a ``getrandom(2)`` system call per id; here each process draws from
its own generator, seeded with the operating system's random bytes at import and again in a
forked child (so two workers forked from one parent never share a sequence). Ids are not
secrets (a client may send its own), but they must not reveal how many requests a worker has
served, which a counter would.
"""

from __future__ import annotations

import os
import random

# Seeded from os.urandom (random.Random() with no seed takes its whole state from the OS).
# Not for secrets (S311): these ids are labels, and a client may choose its own.
_generator = random.Random()  # noqa: S311
_bits = _generator.getrandbits
os.register_at_fork(after_in_child=_generator.seed)


def new_request_id() -> str:
    """A fresh id of 32 lowercase hex characters."""
    return f"{_bits(128):032x}"


def new_short_id() -> str:
    """A fresh id of 24 lowercase hex characters (96 bits, as ``secrets.token_hex(12)``)."""
    return f"{_bits(96):024x}"


__all__ = ["new_request_id", "new_short_id"]
