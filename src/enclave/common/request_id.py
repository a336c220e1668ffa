"""Request ids: 32 random hex characters, like ``uuid4().hex`` without building a UUID.

A request id ties a client's error message to the gateway's log line, so it only has to be
unique across requests, workers and restarts: 128 random bits from the operating system are,
and a forked worker cannot repeat its parent's. Ids are not secrets (a client may send its
own), but they come from the OS's generator anyway, so nobody can predict the next one or
learn how many requests a worker has served. A userspace generator seeded once per process
was measured (bench/README.md) and refused for that reason: its ids can be predicted.

The OS's bytes are fetched 4 KiB at a time rather than 16 bytes per id: under load the
``getrandom`` call per id (two per completion: the request's and the answer's) cost more
than the rest of making the id. The ids are the same unpredictable bytes, only read ahead;
a forked child drops what its parent had read ahead, so the two never share any.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

_READ_AHEAD_BYTES = 4096


class _IdPool:
    """Hex ids of one length cut from OS random bytes read ahead.

    ``next()`` on a list iterator is a single step under the GIL, so threads drawing ids at
    once never get the same one; two threads refilling at once just read one block more.
    """

    def __init__(self, hex_length: int) -> None:
        self._hex_length = hex_length
        self.ids: Iterator[str] = iter(())  # what is left of the last block

    def refill(self) -> str:
        """Read the next block; its first id."""
        text = os.urandom(_READ_AHEAD_BYTES).hex()
        step = self._hex_length
        ids = iter([text[start : start + step] for start in range(0, len(text) - step + 1, step)])
        self.ids = ids
        return next(ids)

    def drop(self) -> None:
        self.ids = iter(())


_REQUEST_IDS = _IdPool(32)
_SHORT_IDS = _IdPool(24)


def _drop_read_ahead() -> None:
    _REQUEST_IDS.drop()
    _SHORT_IDS.drop()


# A forked worker must not hand out the ids its parent had read ahead.
os.register_at_fork(after_in_child=_drop_read_ahead)


def new_request_id() -> str:
    """A fresh id of 32 lowercase hex characters (128 bits from the OS)."""
    try:
        return next(_REQUEST_IDS.ids)
    except StopIteration:
        return _REQUEST_IDS.refill()


def new_short_id() -> str:
    """A fresh id of 24 lowercase hex characters (96 bits, as ``secrets.token_hex(12)``)."""
    try:
        return next(_SHORT_IDS.ids)
    except StopIteration:
        return _SHORT_IDS.refill()


__all__ = ["new_request_id", "new_short_id"]
