"""A request's headers as one plain dict, built once, for the request steps' look-ups.

Starlette's ``Headers.get`` lowercases and encodes the name, then scans the raw header list
decoding values, on every look-up (a missing name raises ``KeyError`` inside ``Mapping.get``);
authentication alone made seven per request. The ASGI server hands names over lowercased
(ASGI's rule; uvicorn does), so a dict of them answers the same look-ups for lowercase names.
"""

from __future__ import annotations

from collections.abc import Sequence


def first_values(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """Name → value of its *first* occurrence, as ``Headers.get`` answers; decoded as latin-1
    (as Starlette decodes). Look names up in lowercase."""
    # Built from the end so that the first occurrence of a repeated name is written last.
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(raw)}


__all__ = ["first_values"]
